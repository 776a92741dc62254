"""`POST /sites/{id}/adapt` with unlabelled tracks in the upload: the real trainer uses them
and the version records how many; malformed tracks are a 422 before anything is queued."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.config import Settings
from tests.service.conftest import ADMIN, LOCATE
from tests.service.jobs.test_adapt_jobs import wait_job
from tests.service.test_adaptation import refused
from tests.training.toychannel import toy_fingerprints, toy_site, toy_site_tracks, toy_tracks
from training.checkpoint import save_backbone
from training.data.fingerprints import EnvironmentMeta, write_environment
from training.data.site import write_site
from training.data.unlabelled import write_unlabelled
from training.nets import Backbone
from training.repository import ModelRepository

pytestmark = pytest.mark.timeout(300)
H5 = {**ADMIN, "Content-Type": "application/x-hdf5"}
META = EnvironmentMeta(description="toy", source={"toy": 1})


def tracked_file(path: Path) -> Path:
    """One labelled environment and one unlabelled recording (3 tracks x 20 samples)."""
    write_environment(path, "lab", toy_fingerprints(60, (0.0, 0.0), seed=0), META)
    tracks, _ = toy_tracks(3, 20, (0.0, 0.0), seed=1)
    write_unlabelled(path, "walks", tracks, META)
    return path


@pytest.fixture
def real(repo: ModelRepository, make_settings: Callable[..., Settings]) -> Iterator[TestClient]:
    """The real trainer on a tiny budget, from a random default backbone."""
    save_backbone(repo, "rand", Backbone(seed=0), loss="nll")
    repo.set_default_backbone("rand")
    settings = make_settings(
        adapt_entrypoint="training.transfer:adapt_site",
        adapt_min_steps=4,
        adapt_max_steps=6,
        adapt_patience=2,
        adapt_threads=1,
    )
    with TestClient(create_app(settings), raise_server_exceptions=True) as c:
        yield c


def _adapted(client: TestClient, site: str, body: bytes) -> dict[str, Any]:
    """Upload, wait for the job to succeed; the new version's `training` as the API shows it."""
    # no augmented copies: small and fast (tests/training/test_augment.py covers them)
    r = client.post(f"/sites/{site}/adapt?mode=finetune&augment_copies=0", content=body, headers=H5)
    assert r.status_code == 202, r.text
    job = wait_job(client, r.json()["job_id"], timeout=240)
    assert job["state"] == "succeeded", job
    versions = client.get(f"/sites/{site}", headers=LOCATE).json()["versions"]
    training: dict[str, Any] = versions[0]["training"]
    return training


def test_tracks_in_the_upload_reach_the_manifest(real: TestClient, tmp_path: Path) -> None:
    training = _adapted(real, "walked", tracked_file(tmp_path / "up.h5").read_bytes())
    assert training["unlabelled_samples"] == 60 and training["unlabelled_tracks"] == 3
    assert training["track_pairs"] == 57 and training["track_weight"] == 1.0


def test_fingerprints_without_tracks_are_paired_by_their_channels(
    real: TestClient, tmp_path: Path
) -> None:
    """An unlabelled group of csi alone (what any BS collects): every sample its own track,
    the pairs found among them (mutual nearest neighbours), as the manifest shows."""
    path = tmp_path / "up.h5"
    write_environment(path, "lab", toy_fingerprints(60, (0.0, 0.0), seed=0), META)
    with h5py.File(path, "a") as f:
        g = f.create_group("seen")
        g.attrs.update(META.to_attrs())
        g.attrs["unlabelled"] = True
        g.create_dataset("csi", data=toy_fingerprints(80, (0.0, 0.0), seed=2).csi)
    training = _adapted(real, "seen", path.read_bytes())
    assert training["unlabelled_samples"] == 80 and training["unlabelled_tracks"] == 80
    assert training["found_pairs"] == training["track_pairs"] > 10


def test_fingerprints_without_tracks_in_a_json_body(real: TestClient) -> None:
    alone = {"csi": toy_fingerprints(80, (0.0, 0.0), seed=2).csi.tolist()}
    r = real.post("/sites/seen/adapt", json=_json_body(alone), headers=ADMIN)
    assert r.status_code == 202, r.text
    assert wait_job(real, r.json()["job_id"], timeout=240)["state"] == "succeeded"
    training = real.get("/sites/seen", headers=LOCATE).json()["versions"][0]["training"]
    assert training["unlabelled_samples"] == 80
    assert training["found_pairs"] == training["track_pairs"] > 10


def _break(path: Path, change: Callable[[h5py.Group], None]) -> Path:
    with h5py.File(path, "a") as f:
        change(f["walks"])
    return path


def _no_time(g: h5py.Group) -> None:
    del g["time"]


def _backwards(g: h5py.Group) -> None:
    t = g["time"][()]
    g["time"][...] = t[::-1].copy()


def _narrow_csi(g: h5py.Group) -> None:
    csi = g["csi"][()]
    del g["csi"]
    g.create_dataset("csi", data=np.ascontiguousarray(csi[:, :, :50]))


@pytest.mark.parametrize(
    ("change", "field", "says"),
    [
        (_no_time, "time", "missing dataset"),
        (_backwards, "time", "strictly increasing time within each track"),
        (_narrow_csi, "csi", "expected [M, 8, 103, 2]"),
    ],
)
def test_malformed_tracks_are_a_422_naming_the_field(
    client: TestClient,
    tmp_path: Path,
    change: Callable[[h5py.Group], None],
    field: str,
    says: str,
) -> None:
    body = _break(tracked_file(tmp_path / "bad.h5"), change).read_bytes()
    err = refused(client.post("/sites/walked/adapt", content=body, headers=H5))
    assert err["detail"]["group"] == "walks" and err["detail"]["field"] == field
    assert says in err["message"]
    assert client.get("/jobs", headers=ADMIN).json()["jobs"] == []


def _walked_site(path: Path) -> Path:
    """A 3-BS site and walks seen by two of its BSs (groups named by BS id)."""
    write_site(path, "hall", toy_site(60, drop=0.0))
    seen = toy_site_tracks(2, 10, seed=1)
    for bs in ("bs0", "bs2"):
        write_unlabelled(path, f"walks/{bs}", seen[bs], META)
    return path


def test_tracks_beside_a_multi_bs_upload_train_the_bss_that_saw_them(
    real: TestClient, repo: ModelRepository, tmp_path: Path
) -> None:
    training = _adapted(real, "hall", _walked_site(tmp_path / "multi.h5").read_bytes())
    assert training["unlabelled_samples"] == 40 and training["unlabelled_tracks"] == 2
    assert training["track_pairs"] == 36  # 2 BSs x 2 tracks x 9 consecutive pairs
    choice = training["unlabelled_choice"]  # operators see whether the walks were kept
    assert choice["kept"] is True and choice["uploaded_samples"] == 40
    config = repo.manifest("site", "hall", repo.resolve("site", "hall"))["config"]
    assert config["bs"]["bs1"]["track_pairs"] == 0  # bs1 saw none of the walks
    # the joint head: the 20 instants both BSs saw (one recording, shared track ids)
    assert config["joint"]["unlabelled_samples"] == 20


def test_fingerprints_without_tracks_beside_a_multi_bs_upload_are_accepted(
    real: TestClient, tmp_path: Path
) -> None:
    """Untracked groups named by BS id train like walks (which BSs and the joint head get
    what: tests/training/test_multibs.py); the guard's choice covers all 80 samples."""
    path = tmp_path / "multi.h5"
    write_site(path, "hall", toy_site(60, drop=0.0))
    for k, bs in enumerate(("bs0", "bs2")):
        with h5py.File(path, "a") as f:
            g = f.create_group(f"seen/{bs}")
            g.attrs.update(META.to_attrs())
            g.attrs["unlabelled"] = True
            g.create_dataset("csi", data=toy_fingerprints(40, (0.0, 0.0), seed=7 + k).csi)
    choice = _adapted(real, "hall", path.read_bytes())["unlabelled_choice"]
    assert choice["uploaded_samples"] == 80 and isinstance(choice["kept"], bool)


def test_tracks_for_a_bs_the_site_lacks_are_a_422(client: TestClient, tmp_path: Path) -> None:
    path = _walked_site(tmp_path / "multi.h5")
    tracks, _ = toy_tracks(2, 10, (0.0, 0.0), seed=1)
    write_unlabelled(path, "walks/bs9", tracks, META)
    err = refused(client.post("/sites/hall/adapt", content=path.read_bytes(), headers=H5))
    assert err["detail"]["group"] == "walks/bs9" and "base stations" in err["message"]
    assert client.get("/jobs", headers=ADMIN).json()["jobs"] == []


def test_a_malformed_walks_group_beside_a_multi_bs_upload_is_a_422_naming_it(
    client: TestClient, tmp_path: Path
) -> None:
    path = _walked_site(tmp_path / "multi.h5")
    with h5py.File(path, "a") as f:
        _backwards(f["walks/bs2"])
    err = refused(client.post("/sites/hall/adapt", content=path.read_bytes(), headers=H5))
    assert err["detail"] == {
        "group": "walks/bs2",
        "field": "time",
        "problem": err["detail"]["problem"],
    }
    assert "strictly increasing time within each track" in err["message"]
    assert "do not join" not in err["message"]  # not mistaken for a bad site
    assert client.get("/jobs", headers=ADMIN).json()["jobs"] == []


def _json_body(tracks: dict[str, Any] | None) -> dict[str, Any]:
    data = toy_fingerprints(60, (0.0, 0.0), seed=0)
    body: dict[str, Any] = {
        "csi": data.csi.tolist(),
        "pos": data.pos.tolist(),
        "options": {"mode": "finetune"},
    }
    if tracks is not None:
        body["unlabelled"] = tracks
    return body


def _json_tracks() -> dict[str, Any]:
    tracks, _ = toy_tracks(3, 20, (0.0, 0.0), seed=1)
    return {
        "csi": tracks.csi.tolist(),
        "time": tracks.time.tolist(),
        "track": tracks.track.tolist(),
    }


def test_tracks_in_a_json_body_reach_the_manifest(real: TestClient) -> None:
    r = real.post("/sites/walked/adapt", json=_json_body(_json_tracks()), headers=ADMIN)
    assert r.status_code == 202, r.text
    job = wait_job(real, r.json()["job_id"], timeout=240)
    assert job["state"] == "succeeded", job
    training = real.get("/sites/walked", headers=LOCATE).json()["versions"][0]["training"]
    assert training["unlabelled_samples"] == 60 and training["unlabelled_tracks"] == 3
    assert training["track_pairs"] == 57


def _drop_time(t: dict[str, Any]) -> None:
    del t["time"]


def _reverse_time(t: dict[str, Any]) -> None:
    t["time"] = t["time"][::-1]


def _fractional_ids(t: dict[str, Any]) -> None:
    t["track"] = [i + 0.5 for i in t["track"]]


def _narrow_json_csi(t: dict[str, Any]) -> None:
    t["csi"] = [[row[:50] for row in sample] for sample in t["csi"]]


@pytest.mark.parametrize(
    ("change", "says"),
    [
        (_drop_time, "'unlabelled' must be an object with 'csi'"),
        (_reverse_time, "strictly increasing time within each track"),
        (_fractional_ids, "integer track ids"),
        (_narrow_json_csi, "expected [M, 8, 103, 2]"),
    ],
)
def test_malformed_json_tracks_are_a_422_and_queue_nothing(
    client: TestClient, change: Callable[[dict[str, Any]], None], says: str
) -> None:
    tracks = _json_tracks()
    change(tracks)
    err = refused(client.post("/sites/walked/adapt", json=_json_body(tracks), headers=ADMIN))
    assert says in err["message"], err
    assert client.get("/jobs", headers=ADMIN).json()["jobs"] == []


@pytest.mark.parametrize(
    ("csi", "says"),
    [
        (5, "field 'csi': shape [1], expected [M, 8, 103, 2]"),
        (np.zeros((3, 8, 50, 2)).tolist(), "shape [3, 8, 50, 2], expected [M, 8, 103, 2]"),
        ("x", "unlabelled csi, time and track must be numeric arrays"),
    ],
)
def test_malformed_json_fingerprints_without_tracks_are_a_422(
    client: TestClient, csi: Any, says: str
) -> None:
    err = refused(client.post("/sites/seen/adapt", json=_json_body({"csi": csi}), headers=ADMIN))
    assert says in err["message"], err
    assert client.get("/jobs", headers=ADMIN).json()["jobs"] == []


def test_json_tracks_over_the_sample_cap_are_a_413(
    make_settings: Callable[..., Settings],
) -> None:
    tracks, _ = toy_tracks(3, 40, (0.0, 0.0), seed=1)  # 120 samples; 60 labelled
    body = _json_body(
        {"csi": tracks.csi.tolist(), "time": tracks.time.tolist(), "track": tracks.track.tolist()}
    )
    with TestClient(create_app(make_settings(max_adapt_samples=100))) as c:
        err = refused(c.post("/sites/walked/adapt", json=body, headers=ADMIN), 413)
        assert "unlabelled tracks hold 120 samples" in err["message"], err
        assert err["detail"]["max_samples"] == 100
        assert c.get("/jobs", headers=ADMIN).json()["jobs"] == []


def test_walks_over_the_cap_beside_a_multi_bs_upload_are_a_413_before_any_copy(
    make_settings: Callable[..., Settings], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The walks' size is checked from their shapes before the labelled site is copied."""
    import service.adaptation

    path = _walked_site(tmp_path / "multi.h5")
    more, _ = toy_tracks(4, 20, (0.0, 0.0), seed=3)  # 80 + the 40 above: 120 samples
    write_unlabelled(path, "walks2/bs1", more, META)

    def copied(*args: Any) -> None:
        raise AssertionError("the labelled site was copied before the walks were size-checked")

    monkeypatch.setattr(service.adaptation, "_prepare_site", copied)
    with TestClient(create_app(make_settings(max_adapt_samples=100))) as c:
        err = refused(c.post("/sites/hall/adapt", content=path.read_bytes(), headers=H5), 413)
        assert "unlabelled tracks hold 120 samples" in err["message"], err
        assert c.get("/jobs", headers=ADMIN).json()["jobs"] == []
