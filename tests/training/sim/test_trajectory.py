"""Trajectories through a scene's UE area: inside, plausible speeds, 10 Hz, turns and stops."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from training.cli import app
from training.data.fingerprints import read_environment
from training.sim.builtin import industrial, lab_los
from training.sim.procedural import procedural_scene
from training.sim.scene import SceneSpec
from training.sim.trajectory import (
    MOTIONS,
    TrajectoryConfig,
    sample_trajectories,
)

SCENES = [industrial(), lab_los()] + [procedural_scene(k, "corpus") for k in range(7)]


@pytest.mark.parametrize("spec", SCENES, ids=[s.name for s in SCENES])
def test_trajectories_stay_inside_with_plausible_motion(spec: SceneSpec) -> None:
    config = TrajectoryConfig(count=3, duration_s=60.0)
    tr = sample_trajectories(spec, config, np.random.default_rng(5))
    assert len(tr) == 3 * 600 and tr.pos.shape == (1800, 3)
    assert all(spec.ue_allowed(*p) for p in tr.pos)
    for k in range(3):
        mine = tr.track == k
        t, p = tr.time[mine], tr.pos[mine]
        assert np.allclose(np.diff(t), 0.1) and t[0] == 0.0
        assert np.ptp(p[:, 2]) == 0.0  # one antenna height per track
        profile = MOTIONS[tr.motion[k]]
        speed = np.linalg.norm(np.diff(p[:, :2], axis=0), axis=1) / 0.1
        assert speed.max() <= profile.speed[1] + 1e-9
        moving = speed[speed > 0.05]
        assert profile.speed[0] * 0.8 <= np.median(moving) <= profile.speed[1]
        accel = np.abs(np.diff(speed)) / 0.1
        # bounded acceleration (speeds from displacements exceed it a little at corners
        # and in the last step of a stop)
        assert np.quantile(accel, 0.9) <= profile.accel + 1e-6
        assert np.quantile(accel, 0.99) <= 1.5 * profile.accel
        # it stops at times, and it turns
        assert (speed < 1e-9).mean() > 0.02
        step = np.diff(p[:, :2], axis=0)[speed > 0.05]
        heading = np.unwrap(np.arctan2(step[:, 1], step[:, 0]))
        assert np.ptp(heading) > np.radians(60)


def test_trajectories_are_seeded_and_motion_can_be_chosen() -> None:
    spec = procedural_scene(5, "corpus")
    config = TrajectoryConfig(count=2, duration_s=5.0, motion="forklift")
    a = sample_trajectories(spec, config, np.random.default_rng(1))
    b = sample_trajectories(spec, config, np.random.default_rng(1))
    c = sample_trajectories(spec, config, np.random.default_rng(2))
    assert np.array_equal(a.pos, b.pos) and not np.array_equal(a.pos, c.pos)
    assert a.motion == ["forklift", "forklift"] and a.track.dtype == np.int32


@pytest.mark.parametrize(
    "kwargs",
    [
        {"count": 0, "duration_s": 1.0},
        {"count": 1, "duration_s": 0.0},
        {"count": 1, "duration_s": 1.0, "rate_hz": -1.0},
        {"count": 1, "duration_s": 1.0, "motion": "skateboard"},
    ],
)
def test_bad_trajectory_configs_are_refused(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        TrajectoryConfig(**kwargs)  # type: ignore[arg-type]


def test_cli_refuses_trajectories_it_cannot_make(tmp_path: Path) -> None:
    runner = CliRunner()
    out = str(tmp_path / "x.h5")
    base = ["data", "simulate", "--out", out, "--trajectories", "2"]
    result = runner.invoke(app, [*base, "--scene", "procedural", "--count", "1"])
    assert result.exit_code == 2 and "csipos data scenes" in result.output
    result = runner.invoke(app, [*base, "--scene", "lab-los", "--positions", "5"])
    assert result.exit_code == 2 and "give one" in result.output
    result = runner.invoke(app, [*base, "--scene", "lab-los", "--motion", "swim"])
    assert result.exit_code == 2 and "motion" in result.output


@pytest.mark.sim
def test_simulate_writes_time_and_track(tmp_path: Path) -> None:
    pytest.importorskip("sionna.rt")
    out = tmp_path / "tracks.h5"
    args = ["data", "simulate", "--scene", "lab-los", "--out", str(out), "-q"]
    result = CliRunner().invoke(app, [*args, "--trajectories", "2", "--duration", "1.5"])
    assert result.exit_code == 0, result.output
    data = read_environment(out, "lab-los")
    assert data.time is not None and data.track is not None
    assert len(data) <= 30 and len(data) >= 25  # a few may get no path
    assert set(data.track.tolist()) == {0, 1}
    for k in (0, 1):
        t = data.time[data.track == k]
        assert np.all(np.diff(t) > 0) and np.allclose(np.round(t * 10), t * 10)
    info = CliRunner().invoke(app, ["data", "info", str(out)])
    assert info.exit_code == 0 and "2 trajectories over 1.4 s" in info.output, info.output
    spec = lab_los()
    assert all(spec.ue_allowed(float(x), float(y), spec.ue_area.height) for x, y in data.pos)
