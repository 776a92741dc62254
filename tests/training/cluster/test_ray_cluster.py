"""The Ray executor on a real local cluster: results, a killed task's retry, no retry of errors."""

from __future__ import annotations

import os
import time
from pathlib import Path

from tests.training.raycluster import RayCluster
from training.cluster import ExecutorConfig, map_unordered, open_executor


def die_once(marker: str) -> int:
    """The first attempt kills its worker process mid-task (as kill -9 or a lost node would)."""
    path = Path(marker)
    if not path.exists():
        path.write_text(str(os.getpid()))
        os._exit(1)
    return os.getpid()


def raise_and_count(counter: str) -> int:
    path = Path(counter)
    path.write_text(path.read_text() + "x" if path.exists() else "x")
    raise ValueError("bad input")


def report_and_square(x: int, sender: object, shared: bytes) -> tuple[int, int]:
    sender.put(x)  # type: ignore[attr-defined]
    return x * x, len(shared)


def torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def set_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def test_jobs_run_as_tasks_with_progress_and_shared_objects(ray_head: RayCluster) -> None:
    seen: list[int] = []
    with open_executor(ExecutorConfig("ray", address=ray_head.address)) as ex:
        assert ex.name == "ray"
        chan = ex.channel(seen.append)
        blob = ex.share(b"\0" * 100_000)
        got = list(
            map_unordered(
                ex,
                report_and_square,
                range(6),
                args=lambda x: (x, chan.sender, blob),
                poll=chan.drain,
            )
        )
        chan.drain()
    assert sorted(v for _, v, _ in got) == [(x * x, 100_000) for x in range(6)]
    assert all(err is None for _, _, err in got)
    assert sorted(seen) == list(range(6))


def test_a_task_whose_worker_dies_is_retried(ray_head: RayCluster, tmp_path: Path) -> None:
    marker = tmp_path / "attempt"
    with open_executor(ExecutorConfig("ray", address=ray_head.address)) as ex:
        [(_, pid, err)] = list(map_unordered(ex, die_once, [str(marker)]))
    assert err is None and pid is not None
    assert int(marker.read_text()) != pid  # the second attempt ran in another worker


def test_without_retries_a_dead_worker_fails_only_its_job(
    ray_head: RayCluster, tmp_path: Path
) -> None:
    from ray.exceptions import WorkerCrashedError

    config = ExecutorConfig("ray", address=ray_head.address, max_retries=0)
    with open_executor(config) as ex:
        [(_, value, err)] = list(map_unordered(ex, die_once, [str(tmp_path / "m")]))
    assert value is None and isinstance(err, WorkerCrashedError)


def test_a_python_error_is_not_retried_and_keeps_its_type(
    ray_head: RayCluster, tmp_path: Path
) -> None:
    counter = tmp_path / "count"
    with open_executor(ExecutorConfig("ray", address=ray_head.address)) as ex:
        [(_, value, err)] = list(map_unordered(ex, raise_and_count, [str(counter)]))
    assert value is None and isinstance(err, ValueError) and "bad input" in str(err)
    assert counter.read_text() == "x"  # one attempt


def test_tasks_get_their_cpus_as_threads_and_a_window(ray_head: RayCluster) -> None:
    config = ExecutorConfig("ray", address=ray_head.address, task_cpus=2, workers=1)
    with open_executor(config, setup=set_threads) as ex:
        assert ex.max_in_flight == 1
        got = [v for _, v, _ in map_unordered(ex, torch_threads, [()], args=lambda _: ())]
    assert got == [2]


def sleep_for(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def test_leaving_early_cancels_the_tasks_still_running(ray_head: RayCluster) -> None:
    t0 = time.monotonic()
    with open_executor(ExecutorConfig("ray", address=ray_head.address)) as ex:
        first = next(map_unordered(ex, sleep_for, [0.0, 120.0]))  # e.g. Ctrl-C after one
    assert first[1] == 0.0
    assert time.monotonic() - t0 < 60  # the 120 s task did not hold the driver
