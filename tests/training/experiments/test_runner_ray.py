"""The quick grid on a real local Ray cluster: a killed driver, a killed task, the same numbers.

One grid serves all three checks (a grid takes a minute or two on 2 cores): a
`csipos experiment --executor ray` driver is killed once some runs have
finished; the same experiment is resumed here while one running task's worker
is killed; every result then matches the local pool's run of the same seed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.training.raycluster import RayCluster
from training.cli import app
from training.cluster import ExecutorConfig
from training.experiments.grid import QUICK
from training.experiments.runner import Outcome, run_experiment
from training.experiments.store import ResultStore

KILL_AFTER = 8  # results on disk before the driver is killed


@dataclass
class RayGrid:
    out: Path
    before: dict[str, int]  # file -> mtime_ns when the driver was killed
    outcome: Outcome  # of the resume
    killed: list[int]  # worker pids killed during the resume


def _stamps(out: Path) -> dict[str, int]:
    files = [*(out / "runs").glob("*.json"), *(out / "sources").glob("*/*")]
    return {str(p.relative_to(out)): p.stat().st_mtime_ns for p in files}


def _kill_one_running_task(cluster: RayCluster, task: str, stop: threading.Event) -> list[int]:
    """In a thread: kill -9 the first worker seen running `task` (then stop)."""
    killed: list[int] = []

    def watch() -> None:
        while not stop.is_set():
            for pid in cluster.task_workers(task):
                time.sleep(0.2)  # well into the run
                if pid in cluster.task_workers(task):
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
                    return
            time.sleep(0.05)

    threading.Thread(target=watch, daemon=True).start()
    return killed


@pytest.fixture(scope="module")
def ray_grid(
    ray_head: RayCluster, fingerprint_file: Path, tmp_path_factory: pytest.TempPathFactory
) -> RayGrid:
    out = tmp_path_factory.mktemp("ray-grid") / "exp"
    cmd = [sys.executable, "-c", "from training.cli import app; app()", "experiment",
           "--preset", "quick", "--data", str(fingerprint_file), "--out", str(out),
           "--executor", "ray", "--address", ray_head.address, "--quiet"]  # fmt: skip
    log = out.parent / "driver.log"
    with log.open("wb") as sink:
        driver = subprocess.Popen(cmd, stdout=sink, stderr=sink, start_new_session=True)
        deadline = time.monotonic() + 300
        try:
            while len(list((out / "runs").glob("*.json"))) < KILL_AFTER:
                assert driver.poll() is None, f"the driver ended early: {log.read_text()}"
                assert time.monotonic() < deadline, f"no results in time: {log.read_text()}"
                time.sleep(0.05)
        finally:
            os.killpg(driver.pid, signal.SIGKILL)
            driver.wait()
    before = _stamps(out)

    stop = threading.Event()
    killed = _kill_one_running_task(ray_head, "run_job", stop)
    try:
        config = ExecutorConfig("ray", address=ray_head.address)
        outcome = run_experiment(QUICK, fingerprint_file, out, seed=0, executor=config)
    finally:
        stop.set()
    return RayGrid(out, before, outcome, killed)


def test_resume_after_a_killed_driver_redoes_nothing_that_finished(ray_grid: RayGrid) -> None:
    done_before = [f for f in ray_grid.before if f.startswith("runs/")]
    assert KILL_AFTER <= len(done_before) < 144
    assert ray_grid.outcome.skipped == len(done_before)
    assert ray_grid.outcome.ran == 144 - len(done_before)
    after = _stamps(ray_grid.out)
    # every file that existed (results and the cached sources) is untouched
    assert {f: after[f] for f in ray_grid.before} == ray_grid.before


def test_a_killed_task_is_retried_and_the_grid_completes(ray_grid: RayGrid) -> None:
    assert len(ray_grid.killed) == 1  # one worker was killed mid-run ...
    assert ray_grid.outcome.complete and ray_grid.outcome.failed == {}  # ... and nothing failed
    assert all(ResultStore(ray_grid.out).done(r) for r in QUICK.runs())
    assert "144 of 144 finished" in (ray_grid.out / "report.md").read_text()


def test_results_equal_the_local_pool(ray_grid: RayGrid, quick_run: tuple[Path, Outcome]) -> None:
    local, ray = ResultStore(quick_run[0]), ResultStore(ray_grid.out)
    for run in QUICK.runs():
        a, b = local.read(run), ray.read(run)
        assert (a.metrics, a.epochs, a.best_val_me, a.seed) == (
            b.metrics,
            b.epochs,
            b.best_val_me,
            b.seed,
        ), run.id
    backbones = sorted((quick_run[0] / "sources").glob("*/backbone.pt"))
    assert len(backbones) >= 2  # MEML and DTL
    for path in backbones:
        mine = ray_grid.out / path.relative_to(quick_run[0])
        assert path.read_bytes() == mine.read_bytes(), path.parent.name


def test_cli_names_a_bad_executor_option(fingerprint_file: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    help_text = runner.invoke(app, ["experiment", "--help"]).output
    for option in ("--executor", "--address", "--task-cpus", "--workers"):
        assert option in help_text
    base = ["experiment", "--data", str(fingerprint_file), "--out", str(tmp_path)]
    bad = runner.invoke(app, [*base, "--executor", "slurm"])
    assert bad.exit_code == 2 and "--executor" in bad.output
    stray = runner.invoke(app, [*base, "--address", "10.0.0.1:6379"])
    assert stray.exit_code == 2 and "--address" in stray.output
