"""A tiny procedural corpus: valid, described, plottable; a killed run resumes to the same file."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from tests.training.raycluster import RayCluster
from training.cli import app
from training.cluster import ExecutorConfig
from training.data.fingerprints import list_environments, read_environment, read_environment_meta
from training.sim.corpus import parts_dir, simulate_procedural
from training.sim.procedural import procedural_scene
from training.sim.scene import SceneSpec

pytestmark = pytest.mark.sim

COUNT, POSITIONS = 3, 30


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("sionna.rt")
    path = tmp_path_factory.mktemp("proc") / "tiny.h5"
    report = simulate_procedural(path, count=COUNT, seed=0, preset="tiny", positions=POSITIONS)
    assert report.traced == list(range(COUNT)) and not report.skipped
    return path


def _envs() -> list[str]:
    return [env for k in range(COUNT) for env in procedural_scene(k, "tiny").environment_names()]


def test_one_environment_per_scene_and_bs_with_its_description(corpus: Path) -> None:
    envs = list_environments(corpus)
    assert envs == sorted(_envs())
    assert all(env.startswith("proc/s000") and "/bs" in env for env in envs)
    assert not parts_dir(corpus).exists()  # merged and cleaned up
    for env in envs:
        data = read_environment(corpus, env)
        assert len(data) >= POSITIONS - 2 and data.los is not None and data.los.any()
        source = read_environment_meta(corpus, env).source
        index = int(env.split("/")[1][1:])
        # the scene spec is recorded and is exactly the generator's scene
        assert SceneSpec.from_dict(source["scene"]) == procedural_scene(index, "tiny")
        assert source["chain"] == "randomised"
        assert source["timing"] in {"absolute", "first-path", "random"}
        assert source["radio"]["pattern"] in {"tr38901", "iso", "dipole"}
        meta = read_environment_meta(corpus, env)
        assert meta.carrier_hz == source["radio"]["carrier_hz"]
        assert data.snr_db is not None
        assert data.snr_db.min() >= source["measurement"]["min_snr_db"]  # detection limit


def test_killed_run_resumes_without_redoing_finished_scenes(corpus: Path, tmp_path: Path) -> None:
    out = tmp_path / "resumed.h5"
    args = [
        "data",
        "simulate",
        "--scene",
        "procedural",
        "--count",
        str(COUNT),
        "--seed",
        "0",
        "--preset",
        "tiny",
        "--positions",
        str(POSITIONS),
        "--out",
        str(out),
        "--quiet",
    ]
    proc = subprocess.Popen(
        [sys.executable, "-c", "from training.cli import app; app()", *args],
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    parts = parts_dir(out)
    deadline = time.monotonic() + 120
    try:
        while not list(parts.glob("s*.h5")) and time.monotonic() < deadline:
            assert proc.poll() is None, "the run ended before its first scene was killed"
            time.sleep(0.01)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    finished = sorted(int(p.name[1:5]) for p in parts.glob("s*.h5"))
    assert finished and len(finished) < COUNT and not out.exists()

    report = simulate_procedural(out, count=COUNT, seed=0, preset="tiny", positions=POSITIONS)
    assert report.skipped == finished  # nothing finished is traced again
    assert report.traced == [k for k in range(COUNT) if k not in finished]
    assert list_environments(out) == list_environments(corpus)
    for env in list_environments(corpus):
        a, b = read_environment(corpus, env), read_environment(out, env)
        np.testing.assert_array_equal(a.pos, b.pos)
        scale = float(np.abs(a.csi).max())
        np.testing.assert_allclose(a.csi, b.csi, rtol=1e-5, atol=1e-5 * scale)
        assert read_environment_meta(corpus, env).source == read_environment_meta(out, env).source
    # once merged, a third start has nothing to do
    again = simulate_procedural(out, count=COUNT, seed=0, preset="tiny", positions=POSITIONS)
    assert again.traced == [] and again.skipped == list(range(COUNT))
    # ... unless it asks for something else than what the file holds
    with pytest.raises(FileExistsError, match="other options"):
        simulate_procedural(
            out, count=COUNT, seed=0, preset="tiny", positions=POSITIONS, randomise_chain=False
        )


def test_other_options_never_mix_with_old_parts(tmp_path: Path) -> None:
    out = tmp_path / "x.h5"
    parts = parts_dir(out)
    parts.mkdir()
    (parts / "run.json").write_text('{"preset": "something else"}')
    with pytest.raises(ValueError, match="other options"):
        simulate_procedural(out, count=1, seed=0, preset="tiny", positions=5)


def test_plot_gives_a_contact_sheet(corpus: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app, ["data", "plot", str(corpus), "--out", str(tmp_path), "--sheet-only"]
    )
    assert result.exit_code == 0, result.output
    sheet = tmp_path / "contact-sheet.png"
    assert sheet.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and sheet.stat().st_size > 20_000
    assert not list(tmp_path.glob("proc_*.png"))


def test_parallel_workers_write_the_same_file(corpus: Path, tmp_path: Path) -> None:
    out = tmp_path / "parallel.h5"
    seen: list[tuple[int, int]] = []
    report = simulate_procedural(
        out,
        count=2,
        seed=0,
        preset="tiny",
        positions=POSITIONS,
        workers=2,
        on_progress=lambda done, total: seen.append((done, total)),
    )
    assert report.traced == [0, 1]
    assert seen[-1][0] == seen[-1][1] > 0  # progress reached the total
    for env in list_environments(out):
        a, b = read_environment(corpus, env), read_environment(out, env)
        np.testing.assert_array_equal(a.pos, b.pos)
        scale = float(np.abs(a.csi).max())
        np.testing.assert_allclose(a.csi, b.csi, rtol=1e-5, atol=1e-5 * scale)


def test_ray_resumes_a_killed_driver_retries_a_killed_task_and_writes_the_same_file(
    corpus: Path, tmp_path: Path, ray_head: RayCluster
) -> None:
    """The corpus on a real local Ray cluster, one scene at a time (`--workers 1`)."""
    out = tmp_path / "ray.h5"
    cmd = [sys.executable, "-c", "from training.cli import app; app()", "data", "simulate",
           "--scene", "procedural", "--count", str(COUNT), "--seed", "0", "--preset", "tiny",
           "--positions", str(POSITIONS), "--out", str(out), "--quiet",
           "--executor", "ray", "--address", ray_head.address, "--workers", "1"]  # fmt: skip
    driver = subprocess.Popen(
        cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    parts = parts_dir(out)
    deadline = time.monotonic() + 240
    try:
        while not list(parts.glob("s*.h5")):
            assert driver.poll() is None, "the driver ended before it was killed"
            assert time.monotonic() < deadline, "no scene finished in time"
            time.sleep(0.02)
    finally:
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait()
    finished = {p.name: p.stat().st_mtime_ns for p in parts.glob("s*.h5")}
    assert 0 < len(finished) < COUNT

    killed: list[int] = []
    stop = threading.Event()

    def kill_one_tracer() -> None:
        while not stop.is_set() and not killed:
            for pid in ray_head.task_workers("trace_part"):
                time.sleep(0.1)  # into the trace
                if pid in ray_head.task_workers("trace_part"):
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
                    return
            time.sleep(0.05)

    threading.Thread(target=kill_one_tracer, daemon=True).start()
    seen: list[tuple[int, int]] = []
    try:
        report = simulate_procedural(
            out,
            count=COUNT,
            seed=0,
            preset="tiny",
            positions=POSITIONS,
            executor=ExecutorConfig("ray", address=ray_head.address),
            on_progress=lambda done, total: seen.append((done, total)),
        )
    finally:
        stop.set()
    assert report.skipped == sorted(int(name[1:5]) for name in finished)  # nothing redone
    assert len(killed) == 1 and sorted(report.traced + report.skipped) == list(range(COUNT))
    done = [d for d, _ in seen]  # progress from the tasks: rising to the total
    assert done == sorted(done) and seen[-1][0] == seen[-1][1] > done[0]
    assert list_environments(out) == list_environments(corpus)
    for env in list_environments(corpus):
        a, b = read_environment(corpus, env), read_environment(out, env)
        np.testing.assert_array_equal(a.pos, b.pos)
        scale = float(np.abs(a.csi).max())
        np.testing.assert_allclose(a.csi, b.csi, rtol=1e-5, atol=1e-5 * scale)
        assert read_environment_meta(corpus, env).source == read_environment_meta(out, env).source
