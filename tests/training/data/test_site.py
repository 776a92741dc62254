"""Multi-BS site files: the `sample_id` field, joining base stations, round trips."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from tests.training.toychannel import toy_site, write_toy_file
from training.data.fingerprints import (
    EnvironmentMeta,
    list_environments,
    read_environment,
    write_environment,
)
from training.data.schema import SchemaError
from training.data.site import SiteFingerprints, read_site, site_groups, write_site


def test_multi_bs_round_trip_keeps_the_join(tmp_path: Path) -> None:
    site = toy_site(50, seed=3, drop=0.2)
    path = tmp_path / "site.h5"
    assert write_site(path, "hall", site) == ["hall/bs0", "hall/bs1", "hall/bs2"]
    back = read_site(path)  # the only group with environments
    assert back.bs_ids == ["bs0", "bs1", "bs2"] and len(back) == len(site)
    assert np.array_equal(back.pos, site.pos) and np.array_equal(back.mask(), site.mask())
    assert not back.mask().all() and back.mask().any(axis=1).all()
    for bs in site.bs_ids:
        assert np.array_equal(back.station(bs).csi, site.station(bs).csi)
        assert back.stations[bs].meta.bs_position == site.stations[bs].meta.bs_position
    # every BS group is still an ordinary single-BS environment
    one = read_environment(path, "hall/bs1")
    assert one.sample_id is not None and len(one) == len(site.station("bs1"))


def test_single_bs_files_still_read(tmp_path: Path) -> None:
    path = write_toy_file(tmp_path / "toy.h5", n=20)
    assert read_environment(path, "lab-los").sample_id is None
    assert site_groups(path) == {
        "": ["lab-los"],
        "industrial": ["industrial/bs0", "industrial/bs1", "industrial/bs2"],
    }
    lab = read_site(path, "")
    assert lab.bs_ids == ["lab-los"] and len(lab) == 20
    with pytest.raises(SchemaError, match="2 groups hold environments"):
        read_site(path)
    with pytest.raises(SchemaError, match="holds no environments"):
        read_site(path, "nope")


def test_join_by_position_without_sample_id(tmp_path: Path) -> None:
    site = toy_site(30, seed=1, drop=0.3)
    path = tmp_path / "nopos.h5"
    for bs, st in site.stations.items():
        d = st.data.subset(slice(None))
        d.sample_id = None
        write_environment(path, f"s/{bs}", d, st.meta)
    back = read_site(path, "s")  # samples come back in position order
    heard = site.mask().any(axis=1)

    def rows(s: SiteFingerprints, keep: np.ndarray) -> set[tuple[float, float, bytes]]:
        return {
            (float(p[0]), float(p[1]), m.tobytes())
            for p, m in zip(s.pos[keep], s.mask()[keep], strict=True)
        }

    assert rows(back, np.ones(len(back), bool)) == rows(site, heard)


def test_bad_sites_are_refused(tmp_path: Path) -> None:
    site = toy_site(20, seed=2, drop=0.0)
    moved = {bs: st.data.subset(slice(None)) for bs, st in site.stations.items()}
    moved["bs1"].pos = moved["bs1"].pos + 1.0  # same sample ids, other positions
    with pytest.raises(SchemaError, match=r"group '<memory>/bs1', field 'pos'.*differs"):
        SiteFingerprints.join(moved)
    twice = {bs: st.data.subset(slice(None)) for bs, st in site.stations.items()}
    assert twice["bs0"].sample_id is not None
    twice["bs0"].sample_id[1] = twice["bs0"].sample_id[0]
    twice["bs0"].pos[1] = twice["bs0"].pos[0]
    with pytest.raises(SchemaError, match="sample_id appears twice"):
        SiteFingerprints.join(twice)
    bad = {"bs.0": site.station("bs0")}
    with pytest.raises(SchemaError, match=r"base-station id 'bs\.0'"):
        SiteFingerprints.join(bad)
    path = tmp_path / "wrongtype.h5"
    d = site.station("bs0").subset(slice(None))
    d.sample_id = None
    write_environment(path, "x", d, EnvironmentMeta())
    with h5py.File(path, "a") as f:
        f["x"].create_dataset("sample_id", data=np.zeros(len(d), dtype=np.float32))
    with pytest.raises(SchemaError, match="field 'sample_id': dtype float32, expected int64"):
        read_environment(path, "x")
    assert list_environments(path) == ["x"]


def test_subset_keeps_rows_consistent() -> None:
    site = toy_site(40, seed=4, drop=0.25)
    idx = np.array([30, 2, 17, 5])
    part = site.subset(idx)
    assert np.array_equal(part.pos, site.pos[idx])
    for bs in site.bs_ids:
        st = part.stations[bs]
        assert np.allclose(st.data.pos, part.pos[st.rows])
    part.validate()


def test_only_keeps_the_samples_and_silences_the_other_bss() -> None:
    site = toy_site(30, seed=3, drop=0.2)
    only = site.only(["bs1"])
    assert only.bs_ids == site.bs_ids and len(only) == len(site)
    np.testing.assert_array_equal(only.mask()[:, 1], site.mask()[:, 1])
    assert not only.mask()[:, [0, 2]].any()
    np.testing.assert_array_equal(only.station("bs1").csi, site.station("bs1").csi)
    only.validate()
