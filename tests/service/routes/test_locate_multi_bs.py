"""POST /locate on a multi-BS site: CSI per BS (any subset), fused answer, bad input."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from tests.service.conftest import LOCATE, csi_batch
from tests.service.models import expected, publish_linear_multi_bs
from training import fusion
from training.repository import ModelRepository
from training.tracking import track

STATIONS = {"bs0": (11, (1.0, 2.0)), "bs1": (12, (3.0, 1.0)), "bs2": (13, (2.0, 5.0))}


@pytest.fixture
def multi(repo: ModelRepository) -> ModelRepository:
    """`repo` plus `hall` (3 BSs, nll), `hall-mse` (2 BSs, mse, inflation 2) and `duo`
    (`hall-mse` with factors for some sets of BSs heard)."""
    publish_linear_multi_bs(repo, "hall", "nll", STATIONS)
    two = {k: STATIONS[k] for k in ("bs0", "bs1")}
    publish_linear_multi_bs(repo, "hall-mse", "mse", two, inflation=2.0)
    by_set = {"bs0": 1.0, "bs0+bs1": 3.0}
    publish_linear_multi_bs(repo, "duo", "mse", two, inflation=2.0, inflation_by_set=by_set)
    return repo


def _post(client: TestClient, body: dict[str, Any]) -> Any:
    return client.post("/locate", json=body, headers=LOCATE)


def test_subset_of_base_stations_is_fused(multi: ModelRepository, client: TestClient) -> None:
    csi = {"bs0": csi_batch(3, seed=1), "bs2": csi_batch(3, seed=2)}
    r = _post(client, {"site": "hall", "csi": {k: v.tolist() for k, v in csi.items()}})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["base_stations"] == ["bs0", "bs2"] and body["sigma_available"] is True
    assert body["fusion"]["method"] == "product_of_gaussians"
    est = {bs: expected(csi[bs], *STATIONS[bs]) for bs in csi}
    means = np.stack([est[bs][0] for bs in csi])
    covs = np.stack([fusion.diag_cov(est[bs][1]) for bs in csi])
    mean, cov = fusion.fuse(means, covs)
    for i, p in enumerate(body["positions"]):
        assert np.allclose([p["x"], p["y"]], mean[i], atol=1e-4)
        assert np.allclose(p["cov"], cov[i], rtol=1e-4)
        assert p["ellipse"]["confidence"] == 0.95
        assert p["ellipse"]["semi_major"] == pytest.approx(
            fusion.ellipse(cov[i], 0.95)["semi_major"], rel=1e-4
        )
        assert set(p["bs"]) == {"bs0", "bs2"}
        assert np.allclose([p["bs"]["bs2"]["x"], p["bs"]["bs2"]["y"]], est["bs2"][0][i], atol=1e-4)
        # the fused sigma is below each BS's
        assert p["sigma_x"] < min(p["bs"][b]["sigma_x"] for b in p["bs"])


def test_one_fingerprint_per_bs_and_confidence(multi: ModelRepository, client: TestClient) -> None:
    one = csi_batch(1, seed=5)[0].tolist()
    r = _post(
        client,
        {"site": "hall", "csi": {"bs1": one}, "ellipse_confidence": 0.5},
    )
    assert r.status_code == 200, r.text
    p = r.json()["positions"][0]
    pos, sigma = expected(np.asarray([one], dtype=np.float32), *STATIONS["bs1"])
    assert np.allclose([p["x"], p["y"]], pos[0], atol=1e-4)  # one BS: its own estimate
    assert np.allclose([p["sigma_x"], p["sigma_y"]], sigma[0], atol=1e-4)
    assert p["ellipse"]["confidence"] == 0.5


def test_the_fused_covariance_takes_the_factor_of_the_bss_heard(
    multi: ModelRepository, client: TestClient
) -> None:
    """`metrics.fusion.inflation_by_set`: one BS heard gets its own factor, both theirs;
    a set without one gets the version's `inflation`."""
    csi = {"bs0": csi_batch(2, seed=1).tolist(), "bs1": csi_batch(2, seed=2).tolist()}
    # each BS alone: sigma (1, 2), var (1, 4); both: var (0.5, 2)
    for heard, factor, var in (
        (["bs0"], 1.0, (1.0, 4.0)),
        (["bs1"], 2.0, (1.0, 4.0)),
        (["bs0", "bs1"], 3.0, (0.5, 2.0)),
    ):
        body = _post(client, {"site": "duo", "csi": {bs: csi[bs] for bs in heard}}).json()
        assert body["fusion"]["inflation"] == factor, heard
        cov = np.diag(var) * factor
        assert all(np.allclose(p["cov"], cov, atol=1e-6) for p in body["positions"]), heard


def test_mse_site_fuses_with_validation_rmse(multi: ModelRepository, client: TestClient) -> None:
    csi = {"bs0": csi_batch(2, seed=1).tolist(), "bs1": csi_batch(2, seed=2).tolist()}
    body = _post(client, {"site": "hall-mse", "csi": csi}).json()
    assert body["fusion"]["sigma_source"] == "validation_rmse" and "RMSE" in body["note"]
    p = body["positions"][0]
    # two BSs with sigma (1, 2): fused var (0.5, 2), inflated x2 -> (1, 4)
    assert np.allclose(p["cov"], [[1.0, 0.0], [0.0, 4.0]], atol=1e-6)
    assert p["bs"]["bs0"]["sigma_x"] is None


@pytest.mark.parametrize(
    ("site", "csi", "status", "needle"),
    [
        ("hall", {}, 422, "non-empty object"),
        ("hall", {"bs9": "ONE"}, 422, "unknown base station(s) ['bs9']"),
        ("hall", {"bs0": "ONE", "bs1": "TWO"}, 422, "same number of fingerprints"),
        ("hall", {"bs0": [[1.0, 2.0]]}, 422, "base station 'bs0': csi has the wrong shape"),
        ("hall", {"bs0": "NAN"}, 422, "base station 'bs0': csi contains NaN"),
        ("hall", "ONE", 422, "send csi per base station"),
        ("lab-nll", {"bs0": "ONE"}, 422, "has one base station"),
        ("nope", {"bs0": "ONE"}, 404, "nope"),
    ],
)
def test_bad_input_is_a_clear_4xx(
    multi: ModelRepository, client: TestClient, site: str, csi: Any, status: int, needle: str
) -> None:
    one = csi_batch(1)[0].tolist()
    nan = csi_batch(1)[0]
    nan[0, 0, 0] = np.nan
    fill = {"ONE": one, "TWO": csi_batch(2).tolist(), "NAN": nan.tolist()}
    if isinstance(csi, dict):
        csi = {k: fill.get(v, v) if isinstance(v, str) else v for k, v in csi.items()}
    else:
        csi = fill[csi]
    r = client.post(
        "/locate",
        content=json.dumps({"site": site, "csi": csi}, allow_nan=True),
        headers={**LOCATE, "Content-Type": "application/json"},
    )
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert needle in error["message"] and error["code"]


def test_site_detail_lists_base_stations(multi: ModelRepository, client: TestClient) -> None:
    from tests.service.conftest import ADMIN

    body = client.get("/sites/hall", headers=ADMIN).json()
    assert body["base_stations"] == ["bs0", "bs1", "bs2"]
    assert set(body["versions"][0]["metrics"]["bs"]) == {"bs0", "bs1", "bs2"}
    assert client.get("/sites/lab-nll", headers=ADMIN).json()["base_stations"] is None


def test_tracking_takes_the_fused_covariance(multi: ModelRepository, client: TestClient) -> None:
    csi = {"bs0": csi_batch(1, seed=1), "bs1": csi_batch(1, seed=2)}
    body = {"site": "hall", "csi": {k: v[0].tolist() for k, v in csi.items()}}
    r = _post(client, {**body, "ue": "tag-1", "timestamp": 10.0})
    assert r.status_code == 200, r.text
    answer = r.json()
    track, fused = answer["track"], answer["positions"][0]
    assert track["reset"] == "new" and track["measurement_noise"] == "predicted"
    assert np.allclose([track["x"], track["y"]], [fused["x"], fused["y"]], atol=1e-4)
    assert np.allclose(track["cov"], fused["cov"], rtol=1e-4)  # the fused 2x2 as noise
    two = {"site": "hall", "csi": {"bs0": csi_batch(2).tolist()}, "ue": "tag-1"}
    r = _post(client, two)
    assert r.status_code == 422 and "one fingerprint per base station" in r.text


def test_a_multi_bs_site_is_tracked_with_its_label_spacing(
    repo: ModelRepository, client: TestClient
) -> None:
    publish_linear_multi_bs(repo, "hall-spaced", "nll", STATIONS, label_spacing_m=0.1)
    client.app.state.store.refresh()  # type: ignore[attr-defined]
    answers = []
    for i in range(3):
        csi = {bs: csi_batch(1, seed=10 * i + k)[0].tolist() for k, bs in enumerate(STATIONS)}
        body = {"site": "hall-spaced", "csi": csi, "ue": "tag-2", "timestamp": 10.0 + 0.5 * i}
        r = _post(client, body)
        assert r.status_code == 200, r.text
        answers.append(r.json())
    fused = [a["positions"][0] for a in answers]
    z = np.array([[f["x"], f["y"]] for f in fused])
    covs = np.array([f["cov"] for f in fused])
    config = client.app.state.tracker.config  # type: ignore[attr-defined]
    want = track(10.0 + 0.5 * np.arange(3), z, covs, config.for_site(0.1))
    assert np.allclose(answers[-1]["track"]["cov"], want.cov[-1], rtol=1e-4)
    default = track(10.0 + 0.5 * np.arange(3), z, covs, config)
    assert not np.allclose(default.cov[-1], want.cov[-1], rtol=1e-3)


def test_a_robust_site_fuses_as_its_manifest_says(
    repo: ModelRepository, client: TestClient
) -> None:
    # bs2's linear model is far from the others: the robust fusion down-weights it
    publish_linear_multi_bs(repo, "hall-robust", "nll", STATIONS, method=fusion.ROBUST)
    client.app.state.store.refresh()  # type: ignore[attr-defined]
    csi = {bs: csi_batch(4, seed=k) for k, bs in enumerate(STATIONS)}
    r = _post(client, {"site": "hall-robust", "csi": {k: v.tolist() for k, v in csi.items()}})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["fusion"]["method"] == "robust_student_t"
    est = {bs: expected(csi[bs], *STATIONS[bs]) for bs in csi}
    means = np.stack([est[bs][0] for bs in csi])
    covs = np.stack([fusion.diag_cov(est[bs][1]) for bs in csi])
    mean, cov = fusion.fuse_robust(means, covs)
    plain, _ = fusion.fuse(means, covs)
    assert not np.allclose(mean, plain, atol=1e-3)  # the test would not tell them apart
    for i, p in enumerate(body["positions"]):
        assert np.allclose([p["x"], p["y"]], mean[i], atol=1e-4)
        assert np.allclose(p["cov"], cov[i], rtol=1e-4)


def test_a_joint_head_joins_the_fusion_only_when_every_bs_is_heard(
    repo: ModelRepository, client: TestClient
) -> None:
    joint = (21, (2.0, 2.0))
    publish_linear_multi_bs(repo, "hall-joint", "nll", STATIONS, joint=joint)
    client.app.state.store.refresh()  # type: ignore[attr-defined]
    csi = {bs: csi_batch(3, seed=k) for k, bs in enumerate(STATIONS)}
    r = _post(client, {"site": "hall-joint", "csi": {k: v.tolist() for k, v in csi.items()}})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["fusion"]["joint_head"] is True
    est = [expected(csi[bs], *STATIONS[bs]) for bs in STATIONS]
    est.append(expected(np.concatenate([csi[bs] for bs in STATIONS], axis=1), *joint))
    means = np.stack([e[0] for e in est])
    covs = np.stack([fusion.diag_cov(e[1]) for e in est])
    mean, cov = fusion.fuse(means, covs)
    without, _ = fusion.fuse(means[:3], covs[:3])
    assert not np.allclose(mean, without, atol=1e-3)  # the test would not tell them apart
    for i, p in enumerate(body["positions"]):
        assert np.allclose([p["x"], p["y"]], mean[i], atol=1e-4)
        assert np.allclose(p["cov"], cov[i], rtol=1e-4)
        assert set(p["bs"]) == set(STATIONS)  # the per-BS block lists base stations only
    # bs1 missing: this joint head (no ``subsets`` in its manifest) needs every BS's
    # view, the BSs heard fuse alone
    some = {bs: csi[bs] for bs in ("bs0", "bs2")}
    r = _post(client, {"site": "hall-joint", "csi": {k: v.tolist() for k, v in some.items()}})
    assert r.status_code == 200, r.text
    assert r.json()["fusion"]["joint_head"] is False
    two = fusion.fuse(means[[0, 2]], covs[[0, 2]])[0]
    for i, p in enumerate(r.json()["positions"]):
        assert np.allclose([p["x"], p["y"]], two[i], atol=1e-4)


def test_a_subset_joint_head_joins_for_two_bss_heard_the_absent_one_zero_filled(
    repo: ModelRepository, client: TestClient
) -> None:
    """``metrics.fusion.joint.subsets``: the service sends an absent BS as zeros (the
    graph derives presence from them), from two BSs heard on; one BS fuses alone."""
    joint = (21, (2.0, 2.0))
    publish_linear_multi_bs(repo, "hall-subsets", "nll", STATIONS, joint=joint, joint_subsets=True)
    client.app.state.store.refresh()  # type: ignore[attr-defined]
    csi = {bs: csi_batch(3, seed=k) for k, bs in enumerate(STATIONS)}
    some = {bs: csi[bs] for bs in ("bs0", "bs2")}
    r = _post(client, {"site": "hall-subsets", "csi": {k: v.tolist() for k, v in some.items()}})
    assert r.status_code == 200, r.text
    assert r.json()["fusion"]["joint_head"] is True
    filled = [csi["bs0"], np.zeros_like(csi["bs1"]), csi["bs2"]]
    est = [expected(some[bs], *STATIONS[bs]) for bs in some]
    est.append(expected(np.concatenate(filled, axis=1), *joint))
    means = np.stack([e[0] for e in est])
    covs = np.stack([fusion.diag_cov(e[1]) for e in est])
    mean, cov = fusion.fuse(means, covs)
    assert not np.allclose(mean, fusion.fuse(means[:2], covs[:2])[0], atol=1e-3)
    for i, p in enumerate(r.json()["positions"]):
        assert np.allclose([p["x"], p["y"]], mean[i], atol=1e-4)
        assert np.allclose(p["cov"], cov[i], rtol=1e-4)
    one = {"site": "hall-subsets", "csi": {"bs1": csi["bs1"].tolist()}}
    r = _post(client, one)
    assert r.status_code == 200, r.text
    assert r.json()["fusion"]["joint_head"] is False
    solo = expected(csi["bs1"], *STATIONS["bs1"])[0]
    for i, p in enumerate(r.json()["positions"]):
        assert np.allclose([p["x"], p["y"]], solo[i], atol=1e-4)
