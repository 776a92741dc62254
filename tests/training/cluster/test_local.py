"""The embedded executor: inline and process-pool jobs, failures, progress channels."""

from __future__ import annotations

import os
from concurrent.futures.process import BrokenProcessPool

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
