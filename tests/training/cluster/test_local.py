"""The embedded executor: inline and process-pool jobs, failures, progress channels."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import pytest

from training.cluster import ExecutorConfig, map_unordered, open_executor
from training.cluster.local import InlineExecutor, PoolExecutor


def square_or_die(x: int) -> int:
    if x == 2:
        os._exit(1)  # a worker killed from outside (out of memory, kill -9)
    return x * x


def square_or_raise(x: int) -> int:
    if x == 3:
        raise ValueError("three")
    return x * x


def report_and_square(x: int, sender: object) -> int:
    sender.put(x)  # type: ignore[attr-defined]
    return x * x


def test_one_worker_runs_inline_job_by_job() -> None:
    order: list[str] = []

    def job(x: int) -> int:
        order.append(f"run {x}")
        return x

    with open_executor(ExecutorConfig()) as ex:
        assert isinstance(ex, InlineExecutor)
        for item, value, err in map_unordered(ex, job, [1, 2, 3]):
            order.append(f"got {item}")
            assert value == item and err is None
    # each job runs when the driver asks for it: progress shows as jobs finish
    assert order == ["run 1", "got 1", "run 2", "got 2", "run 3", "got 3"]


@pytest.mark.parametrize("workers", [1, 2])
def test_a_failing_job_is_reported_and_the_others_go_on(workers: int) -> None:
    with open_executor(ExecutorConfig(workers=workers)) as ex:
        got = {
            item: (value, err) for item, value, err in map_unordered(ex, square_or_raise, range(5))
        }
    assert {k: v for k, (v, e) in got.items() if e is None} == {0: 0, 1: 1, 2: 4, 4: 16}
    assert isinstance(got[3][1], ValueError) and str(got[3][1]) == "three"


def test_dead_worker_fails_its_jobs_instead_of_the_sweep() -> None:
    with open_executor(ExecutorConfig(workers=2)) as ex:
        assert isinstance(ex, PoolExecutor)
        got = list(map_unordered(ex, square_or_die, [1, 2, 3, 4]))
    assert sorted(item for item, _, _ in got) == [1, 2, 3, 4]
    dead = [item for item, _, exc in got if isinstance(exc, BrokenProcessPool)]
    assert 2 in dead
    assert all(value == item * item for item, value, exc in got if exc is None)


@pytest.mark.parametrize("workers", [1, 2])
def test_progress_channel_reaches_the_driver(workers: int) -> None:
    seen: list[int] = []
    with open_executor(ExecutorConfig(workers=workers)) as ex:
        chan = ex.channel(seen.append)
        got = list(
            map_unordered(
                ex, report_and_square, range(4), args=lambda x: (x, chan.sender), poll=chan.drain
            )
        )
        chan.drain()
    assert sorted(v for _, v, _ in got) == [0, 1, 4, 9]
    assert sorted(seen) == [0, 1, 2, 3]


def test_config_is_checked() -> None:
    with pytest.raises(ValueError, match="executor"):
        ExecutorConfig("slurm")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="workers"):
        ExecutorConfig(workers=0)
    with pytest.raises(ValueError, match="only the ray executor"):
        ExecutorConfig("local", address="10.0.0.1:6379")


_DRIVER = """
import sys, time
from training.cluster.local import PoolExecutor
from tests.training.cluster.test_local import report_pid_and_sleep
ex = PoolExecutor(1 + 1, 1, None)
ex.submit(report_pid_and_sleep, sys.argv[1])
time.sleep(600)
"""


def report_pid_and_sleep(path: str) -> None:
    Path(path).write_text(str(os.getpid()))
    time.sleep(600)


def test_pool_workers_exit_when_the_driver_is_killed(tmp_path: Path) -> None:
    """A killed driver leaves no worker behind to burn CPU or write into the next run."""
    marker = tmp_path / "worker.pid"
    driver = subprocess.Popen(
        [sys.executable, "-c", _DRIVER, str(marker)],
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[3])},
    )
    try:
        deadline = time.monotonic() + 120
        while not marker.is_file() or not marker.read_text():
            assert time.monotonic() < deadline, "the worker never started"
            time.sleep(0.2)
        worker = int(marker.read_text())
        driver.kill()
        driver.wait(30)
        deadline = time.monotonic() + 30
        while _alive(worker):
            assert time.monotonic() < deadline, f"worker {worker} outlived its driver"
            time.sleep(0.2)
    finally:
        driver.kill()


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split()[2]
    except FileNotFoundError:
        return False
    return state != "Z"
