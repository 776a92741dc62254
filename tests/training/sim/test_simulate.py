"""Ray-traced data: reproducible, physically plausible, valid for the reader, plottable."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from training.data.fingerprints import (
    Fingerprints,
    list_environments,
    read_environment,
    read_environment_meta,
)
from training.sim.builtin import lab_nlos
from training.sim.generate import generate
from training.sim.plot import plot_file
from training.sim.scene import Cuboid

from .conftest import POSITIONS, SEED

pytestmark = pytest.mark.sim


def _power_db(data: Fingerprints) -> npt.NDArray[np.float64]:
    csi = data.csi.astype(np.float64)
    return np.asarray(10 * np.log10(np.mean(csi[..., 0] ** 2 + csi[..., 1] ** 2, axis=(1, 2))))


def _segment_hits_box(a: npt.NDArray[np.float64], b: npt.NDArray[np.float64], box: Cuboid) -> bool:
    """Slab test: does the segment a->b pass through the box? (independent of the solver)"""
    d = b - a
    t0, t1 = 0.0, 1.0
    for k in range(3):
        if abs(d[k]) < 1e-12:
            if not box.min[k] <= a[k] <= box.max[k]:
                return False
            continue
        lo, hi = sorted(((box.min[k] - a[k]) / d[k], (box.max[k] - a[k]) / d[k]))
        t0, t1 = max(t0, lo), min(t1, hi)
    return t0 <= t1


def test_file_is_valid_and_complete(sim_file: Path) -> None:
    envs = list_environments(sim_file)
    assert sorted(envs) == sorted(
        [
            "industrial/bs0",
            "industrial/bs1",
            "industrial/bs2",
            "industrial/bs3",
            "lab-los",
            "lab-nlos",
        ]
    )
    for env in envs:
        data = read_environment(sim_file, env)  # validates shapes, dtypes, finiteness
        assert data.los is not None and data.snr_db is not None
        meta = read_environment_meta(sim_file, env)
        assert meta.source["generator"] == "csipos.training.sim"
        assert meta.source["seed"] == SEED
        assert {"sionna-rt", "mitsuba", "drjit", "csipos"} <= set(meta.source["versions"])
        assert meta.source["solver"]["max_depth"] >= 1
    # no position is lost in the built-in scenes (UEs never stand inside obstacles)
    assert len(read_environment(sim_file, "lab-nlos")) == POSITIONS["lab-nlos"]


def test_same_seed_same_arrays(sim_file: Path, tmp_path: Path) -> None:
    again = tmp_path / "again.h5"
    generate(
        lab_nlos(), again, preset="tiny", seed=SEED, positions=POSITIONS["lab-nlos"], quiet=True
    )
    a, b = read_environment(sim_file, "lab-nlos"), read_environment(again, "lab-nlos")
    assert a.los is not None and b.los is not None and a.snr_db is not None and b.snr_db is not None
    np.testing.assert_array_equal(a.pos, b.pos)  # our own random parts are exact
    np.testing.assert_array_equal(a.los, b.los)
    np.testing.assert_allclose(a.snr_db, b.snr_db, rtol=1e-5)
    scale = float(np.abs(a.csi).max())
    np.testing.assert_allclose(a.csi, b.csi, rtol=1e-5, atol=1e-5 * scale)
    other = tmp_path / "other.h5"
    generate(lab_nlos(), other, preset="tiny", seed=SEED + 1, positions=10, quiet=True)
    assert not np.allclose(read_environment(other, "lab-nlos").pos, a.pos[:10])


def test_base_stations_see_different_channels(sim_file: Path) -> None:
    envs = [read_environment(sim_file, f"industrial/bs{i}") for i in range(4)]
    n = min(len(e) for e in envs)
    for i in range(1, 4):
        a, b = envs[0], envs[i]
        common = [k for k in range(n) if np.array_equal(a.pos[k], b.pos[k])]
        assert len(common) > n // 2
        pa, pb = _power_db(a)[common], _power_db(b)[common]
        # same UEs, another array: powers differ by several dB on average ...
        assert np.mean(np.abs(pa - pb)) > 3.0

        # ... and so does the spatial signature (normalised antenna covariance).
        def cov(d: Fingerprints, common: list[int] = common) -> npt.NDArray[np.complex128]:
            h = d.csi[common, ..., 0] + 1j * d.csi[common, ..., 1]
            h = h / np.linalg.norm(h, axis=(1, 2), keepdims=True)
            out: npt.NDArray[np.complex128] = np.einsum("mas,mbs->ab", h, h.conj())
            return out / len(common)

        ca, cb = cov(a), cov(b)
        assert np.linalg.norm(ca - cb) / np.linalg.norm(ca) > 0.2


def test_nlos_only_behind_the_blocker(sim_file: Path) -> None:
    los = read_environment(sim_file, "lab-los")
    assert los.los is not None and los.los.all()
    spec = lab_nlos()
    data = read_environment(sim_file, "lab-nlos")
    assert data.los is not None
    bs = np.asarray(spec.base_stations[0].position)
    ue = np.column_stack([data.pos, np.full(len(data), spec.ue_area.height)])
    shadowed = np.array([_segment_hits_box(bs, p, spec.obstacles[0]) for p in ue])
    assert (~data.los).sum() >= 10 and data.los.sum() >= 10
    # every NLOS sample is geometrically shadowed by the partition; the clear side is LOS
    assert np.all(shadowed[~data.los])
    assert np.mean(data.los[~shadowed]) > 0.97


def test_power_falls_with_distance_on_los(sim_file: Path) -> None:
    for env in ("lab-los", "industrial/bs0"):
        data = read_environment(sim_file, env)
        assert data.los is not None
        meta = read_environment_meta(sim_file, env)
        height = meta.source["scene"]["ue_area"]["height"]
        ue = np.column_stack([data.pos, np.full(len(data), height)])
        d = np.linalg.norm(ue - np.asarray(meta.bs_position), axis=1)[data.los]
        p = _power_db(data)[data.los]
        slope = np.polyfit(np.log10(d), p, 1)[0]
        assert slope < -8.0, f"{env}: LOS power slope {slope:.1f} dB/decade"


def test_plot_writes_pngs(sim_file: Path, tmp_path: Path) -> None:
    written = plot_file(sim_file, tmp_path / "plots")
    assert len(written) == 6
    for png in written:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert png.stat().st_size > 20_000


def test_a_scene_with_several_bs_is_a_multi_bs_site_file(sim_file: Path) -> None:
    from training.data.schema import SchemaError
    from training.data.site import read_site

    site = read_site(sim_file, "industrial")  # 4 BSs, shared UE positions
    assert site.bs_ids == ["bs0", "bs1", "bs2", "bs3"]
    assert len(site) <= POSITIONS["industrial"] and site.mask().any(axis=1).all()
    for bs in site.bs_ids:
        ids = site.station(bs).sample_id
        assert ids is not None and np.all(np.diff(ids) > 0)
        assert np.array_equal(site.station(bs).pos, site.pos[site.stations[bs].rows])
    # two one-BS scenes at the root are not one site: their samples do not agree
    with pytest.raises(SchemaError, match="differs from the other base stations"):
        read_site(sim_file, "")
