"""Where offline sweeps run: one executor interface over a local process pool or a Ray cluster.

The experiment grid (`training.experiments.runner`) and the procedural corpus
(`training.sim.corpus`) hand out independent, picklable jobs and collect their
results; they do not care where a job runs. An `Executor` runs them:

- `local` (the embedded default): in this process with one worker, else in a
  spawned process pool of `workers` processes;
- `ray`: as Ray tasks on a cluster (`address`), each asking for `task_cpus`
  CPUs; a task lost with its worker or node is retried up to `max_retries`
  times, a Python exception is not (it fails the same way again: the job is
  reported failed and the next invocation retries it, as with the local pool).

Jobs *return* their results and the driver writes them (atomically, into the
out dir), so a task never needs the driver's disk and resuming works the same on
every backend. See docs/cluster.md.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal, Protocol, TypeVar

T = TypeVar("T")
U = TypeVar("U")
T_co = TypeVar("T_co", covariant=True)

ExecutorKind = Literal["local", "ray"]
EXECUTOR_KINDS: tuple[ExecutorKind, ...] = ("local", "ray")

POLL_S = 0.5
"""How often a waiting driver wakes up to drain progress messages."""


class Task(Protocol[T_co]):
    """A submitted job: `result()` returns its value or raises its error."""

    def result(self) -> T_co: ...


class Channel(Protocol):
    """Progress messages from running jobs to the driver.

    `sender` is passed to jobs (picklable; `sender.put(item)`); the driver calls
    `drain()` to hand what arrived so far to the callback the channel was made with.
    """

    @property
    def sender(self) -> Any: ...

    def drain(self) -> None: ...


class Executor(Protocol):
    """Runs picklable jobs somewhere and hands back their results."""

    name: str
    max_in_flight: int | None
    """Jobs submitted at once (None: all, the backend queues them)."""

    def submit(self, fn: Callable[..., T], *args: Any) -> Task[T]:
        """Start `fn(*args)`; arguments made by `share` arrive as the object itself."""
        ...

    def wait(self, tasks: Iterable[Task[Any]], timeout: float | None) -> list[Task[Any]]:
        """Those of `tasks` that have finished, waiting up to `timeout` s for at least one."""
        ...

    def share(self, obj: Any) -> Any:
        """A handle for a large read-only argument that many jobs take (sent once, not per job)."""
        ...

    def channel(self, on_item: Callable[[Any], None]) -> Channel:
        """A progress channel whose messages reach `on_item` in the driver."""
        ...

    def close(self, cancel: bool) -> None:
        """Release the workers; `cancel` drops jobs that have not finished."""
        ...


@dataclass(frozen=True)
class ExecutorConfig:
    """Which backend runs the jobs, and how.

    `workers`: jobs at once (local: processes, default 1; ray: tasks in flight,
    default all, so that Ray queues them and an autoscaler sees the demand).
    `task_cpus`: CPUs a job asks for (Ray's `num_cpus`) and torch threads it runs
    with. `address`: the Ray cluster (`host:6379`, `ray://host:10001`, `auto`;
    None: what `ray.init()` finds: `$RAY_ADDRESS`, else the cluster last started on
    this machine with `ray start`, else a new Ray instance for this process).
    """

    kind: ExecutorKind = "local"
    workers: int | None = None
    address: str | None = None
    task_cpus: int = 1
    max_retries: int = 3

    def __post_init__(self) -> None:
        if self.kind not in EXECUTOR_KINDS:
            raise ValueError(
                f"executor: expected one of {', '.join(EXECUTOR_KINDS)}, got {self.kind!r}"
            )
        if self.workers is not None and self.workers < 1:
            raise ValueError(f"workers: expected >= 1, got {self.workers}")
        if self.task_cpus < 1:
            raise ValueError(f"task_cpus: expected >= 1, got {self.task_cpus}")
        if self.max_retries < 0:
            raise ValueError(f"max_retries: expected >= 0, got {self.max_retries}")
        if self.kind == "local" and self.address is not None:
            raise ValueError("address: only the ray executor connects to a cluster")


class ClusterUnavailableError(RuntimeError):
    """The chosen backend cannot run: Ray is not installed, or its cluster cannot be reached."""


WorkerSetup = Callable[[int], None]
"""Run once in each worker process with its thread count (torch threads, log levels)."""


@contextmanager
def open_executor(
    config: ExecutorConfig, *, setup: WorkerSetup | None = None, jobs: int | None = None
) -> Iterator[Executor]:
    """Start the backend `config` names, and release it (dropping unfinished jobs) on exit.

    `jobs`, when known, caps the local pool's size. On Ctrl-C the jobs that have
    not finished are dropped; finished results were written as they came.
    """
    executor: Executor
    if config.kind == "ray":
        try:
            from training.cluster.ray_cluster import RayExecutor
        except ImportError as exc:
            raise ClusterUnavailableError(
                f"the ray executor needs Ray ({exc}): pip install 'csipos[cluster]'"
            ) from exc
        executor = RayExecutor(config, setup=setup)
    else:
        from training.cluster.local import open_local

        workers = config.workers or 1
        if jobs is not None:
            workers = min(workers, max(1, jobs))
        executor = open_local(workers, config.task_cpus, setup)
    try:
        yield executor
    finally:
        executor.close(cancel=True)


def map_unordered(
    executor: Executor,
    fn: Callable[..., U],
    items: Iterable[T],
    *,
    args: Callable[[T], tuple[Any, ...]] | None = None,
    poll: Callable[[], None] | None = None,
) -> Iterator[tuple[T, U | None, Exception | None]]:
    """Run `fn(*args(item))` (default `fn(item)`) for every item; yield `(item, value, error)`
    as each finishes.

    One job's error (including a lost worker, after the backend's retries) is
    yielded, not raised, so the other jobs go on. `poll` runs whenever the driver
    wakes up (at least every `POLL_S` s while jobs run), e.g. to drain progress.
    """
    todo = iter(items)
    running: dict[Task[U], T] = {}
    limit = executor.max_in_flight
    more = True
    while more or running:
        while more and (limit is None or len(running) < limit):
            try:
                item = next(todo)
            except StopIteration:
                more = False
                break
            running[executor.submit(fn, *(args(item) if args else (item,)))] = item
        if not running:
            break
        finished = executor.wait(list(running), POLL_S if poll is not None else None)
        if poll is not None:
            poll()
        for task in finished:
            item = running.pop(task)
            try:
                value = task.result()
            except Exception as exc:  # one job's failure must not stop the others
                yield item, None, exc
            else:
                yield item, value, None
