"""Unlabelled tracks in fingerprint files: layout, what readers see, and clear errors."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from tests.training.toychannel import toy_fingerprints, toy_tracks
from training.data.fingerprints import (
    EnvironmentMeta,
    list_environments,
    read_environment,
    write_environment,
)
from training.data.schema import SchemaError
from training.data.unlabelled import (
    UnlabelledTracks,
    list_unlabelled,
    load_site_unlabelled,
    load_unlabelled,
    read_unlabelled,
    recording_of,
    write_unlabelled,
)

META = EnvironmentMeta(description="toy", source={"toy": 1})


@pytest.fixture
def site_file(tmp_path: Path) -> Path:
    """A labelled environment `lab` and two unlabelled recordings beside it."""
    path = tmp_path / "site.h5"
    write_environment(path, "lab", toy_fingerprints(40, (0.0, 0.0), seed=0), META)
    for k in range(2):
        tracks, _ = toy_tracks(2, 10, (0.0, 0.0), seed=k)
        write_unlabelled(path, f"walks/day{k}", tracks, META)
    return path


def test_unlabelled_groups_are_not_environments(site_file: Path) -> None:
    assert list_environments(site_file) == ["lab"]
    assert list_unlabelled(site_file) == ["walks/day0", "walks/day1"]
    with pytest.raises(SchemaError, match="unlabelled tracks"):
        read_environment(site_file, "walks/day0")


def test_roundtrip_and_joined_recordings_keep_their_tracks_apart(site_file: Path) -> None:
    day0 = read_unlabelled(site_file, "walks/day0")
    assert len(day0) == 20 and day0.tracks == 2
    both = load_unlabelled(site_file)
    assert len(both) == 40 and both.tracks == 4  # both recordings use track ids 0 and 1
    assert load_unlabelled(site_file, "walks/day1").csi.shape == (20, 8, 103, 2)


def test_a_labelled_environment_with_tracks_reads_as_unlabelled(tmp_path: Path) -> None:
    tracks, pos = toy_tracks(2, 10, (0.0, 0.0), seed=0)
    fp = toy_fingerprints(20, (0.0, 0.0), seed=0)
    fp.csi, fp.pos, fp.time, fp.track = tracks.csi, pos, tracks.time, tracks.track
    path = tmp_path / "labelled.h5"
    write_environment(path, "traj", fp, META)
    got = load_unlabelled(path, "traj")
    np.testing.assert_array_equal(got.time, tracks.time)
    with pytest.raises(SchemaError, match="no unlabelled tracks"):
        load_unlabelled(path)


def test_csi_without_time_and_track_reads_as_fingerprints_without_tracks(
    tmp_path: Path,
) -> None:
    """A labelled environment without time and track, or an unlabelled group of csi alone:
    each sample a track of its own, so nothing pairs them as consecutive."""
    path = tmp_path / "plain.h5"
    plain = toy_fingerprints(5, (0.0, 0.0), seed=1)
    write_environment(path, "plain", plain, META)
    got = read_unlabelled(path, "plain")
    np.testing.assert_array_equal(got.csi, plain.csi)
    assert got.tracks == 5 and got.singletons().all()
    np.testing.assert_array_equal(got.time, np.zeros(5))
    _group(path, csi=CSI)  # unlabelled=True, csi only
    assert load_unlabelled(path).tracks == 3 and list_unlabelled(path) == ["bad"]
    tracks, _ = toy_tracks(2, 10, (0.0, 0.0), seed=0)
    assert not tracks.singletons().any()


def _group(path: Path, **arrays: np.ndarray) -> None:
    with h5py.File(path, "a") as f:
        f.attrs["schema_version"] = 1
        g = f.create_group("bad")
        g.attrs.update(META.to_attrs())
        g.attrs["unlabelled"] = True
        for name, values in arrays.items():
            g.create_dataset(name, data=values)


CSI = np.zeros((3, 8, 103, 2), np.float32)
TIME = np.array([0.0, 0.1, 0.2])
TRACK = np.zeros(3, np.int32)


def test_a_multi_bs_sites_tracks_are_the_groups_named_by_its_base_stations(
    tmp_path: Path,
) -> None:
    path = tmp_path / "walks.h5"
    for day in range(2):  # two recordings of bs0, one of bs1
        for bs in ("bs0", "bs1")[: 2 - day]:
            tracks, _ = toy_tracks(2, 10 + day, (0.0, 0.0), seed=day)
            write_unlabelled(path, f"day{day}/{bs}", tracks, META)
    got = load_site_unlabelled(path, ["bs0", "bs1", "bs2"])
    assert sorted(got) == ["bs0", "bs1"]  # a BS without tracks is left out
    assert len(got["bs0"]) == 42 and got["bs0"].tracks == 4 and len(got["bs1"]) == 20
    # one recording's tracks keep one id at every BS that saw them (the joint head pairs
    # the BSs' views by track and time); another recording's never join them
    np.testing.assert_array_equal(got["bs1"].track, got["bs0"].track[:20])
    assert set(got["bs0"].track[20:].tolist()).isdisjoint(got["bs1"].track.tolist())
    assert len(load_site_unlabelled(path, ["bs0", "bs1"], "day1")["bs0"]) == 22
    # a recorded walk (labelled, with time and track) reads per BS, positions dropped
    tracks, pos = toy_tracks(2, 10, (0.0, 0.0), seed=3)
    fp = toy_fingerprints(20, (0.0, 0.0), seed=0)
    fp.csi, fp.pos, fp.time, fp.track = tracks.csi, pos, tracks.time, tracks.track
    write_environment(path, "walk/bs2", fp, META)
    assert list(load_site_unlabelled(path, ["bs0", "bs1", "bs2"], "walk")) == ["bs2"]
    with pytest.raises(SchemaError, match="'bs1', which is not one of the site's base stations"):
        load_site_unlabelled(path, ["bs0", "bs2"])
    with pytest.raises(SchemaError, match="no such group"):
        load_site_unlabelled(path, ["bs0"], "nowhere")
    empty = tmp_path / "empty.h5"
    write_environment(empty, "lab", toy_fingerprints(5, (0.0, 0.0), seed=1), META)
    with pytest.raises(SchemaError, match="no unlabelled tracks; expected groups named by"):
        load_site_unlabelled(empty, ["bs0"])


def test_untracked_groups_of_one_recording_share_no_track_ids(tmp_path: Path) -> None:
    """Row k of two BSs' csi-only groups is not one UE at one instant: their ids never
    meet (so no UE-level score or joint head pairs them), while walks still share theirs."""
    path = tmp_path / "seen.h5"
    for k, bs in enumerate(("bs0", "bs1")):
        with h5py.File(path, "a") as f:
            f.attrs["schema_version"] = 1
            g = f.create_group(f"seen/{bs}")
            g.attrs.update(META.to_attrs())
            g.attrs["unlabelled"] = True
            g.create_dataset("csi", data=toy_fingerprints(6, (0.0, 0.0), seed=k).csi)
        tracks, _ = toy_tracks(2, 5, (0.0, 0.0), seed=0)
        write_unlabelled(path, f"walks/{bs}", tracks, META)
    assert recording_of(path, "seen/bs0") == "seen/bs0"
    assert recording_of(path, "walks/bs0") == "walks"
    got = load_site_unlabelled(path, ["bs0", "bs1"])
    alone = {bs: set(got[bs].track[got[bs].singletons()].tolist()) for bs in got}
    assert len(alone["bs0"]) == len(alone["bs1"]) == 6 and alone["bs0"].isdisjoint(alone["bs1"])
    walked = {bs: set(got[bs].track[~got[bs].singletons()].tolist()) for bs in got}
    assert walked["bs0"] == walked["bs1"] and len(walked["bs0"]) == 2


@pytest.mark.parametrize(
    ("arrays", "field", "message"),
    [
        ({"csi": CSI, "track": TRACK}, "time", "missing dataset"),
        ({"csi": CSI, "time": TIME}, "track", r"missing dataset.*or 'csi' alone"),
        ({"csi": CSI[:, :4], "time": TIME, "track": TRACK}, "csi", r"expected \[M, 8, 103, 2\]"),
        ({"csi": CSI, "time": TIME[::-1].copy(), "track": TRACK}, "time", "strictly increasing"),
        ({"csi": CSI, "time": TIME, "track": TRACK[:2]}, "track", "lengths must match"),
    ],
)
def test_malformed_unlabelled_groups_say_what_was_expected(
    tmp_path: Path, arrays: dict[str, np.ndarray], field: str, message: str
) -> None:
    path = tmp_path / "bad.h5"
    _group(path, **arrays)
    with pytest.raises(SchemaError, match=message) as err:
        load_unlabelled(path)
    assert err.value.field == field and err.value.group == "bad"


def test_in_memory_validation_names_the_track() -> None:
    tracks = UnlabelledTracks(CSI, np.array([0.0, 0.5, 0.5]), np.array([4, 4, 4], np.int32))
    with pytest.raises(SchemaError, match=r"track 4: time 0\.5 at sample 2"):
        tracks.validate()
