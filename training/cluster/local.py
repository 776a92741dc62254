"""The embedded executor: this process (one worker) or a spawned process pool.

Spawned, not forked: Dr.Jit's threads (the ray tracer) do not survive a fork,
and a fresh interpreter starts with torch's defaults, not the driver's state.
"""

from __future__ import annotations

import multiprocessing
import os
import queue
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Any, TypeVar

from training.cluster import Channel, Executor, Task, WorkerSetup

T = TypeVar("T")


class _Deferred:
    """An inline job: it runs when the driver waits for it, so progress shows job by job."""

    def __init__(self, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
        self._call: tuple[Callable[..., Any], tuple[Any, ...]] | None = (fn, args)
        self._value: Any = None
        self._error: BaseException | None = None

    @property
    def finished(self) -> bool:
        return self._call is None

    def run(self) -> None:
        if self._call is None:
            return
        fn, args = self._call
        self._call = None
        try:
            self._value = fn(*args)
        except Exception as exc:
            self._error = exc

    def result(self) -> Any:
        self.run()
        if self._error is not None:
            raise self._error
        return self._value


class _DirectChannel:
    """Inline jobs call the driver's callback at once."""

    def __init__(self, on_item: Callable[[Any], None]) -> None:
        self.sender = _DirectSender(on_item)

    def drain(self) -> None:
        return


class _DirectSender:
    def __init__(self, on_item: Callable[[Any], None]) -> None:
        self.put = on_item


class InlineExecutor:
    """Jobs run one after the other in this process, when the driver waits for them.

    The driver keeps its own torch thread count and logging (no worker set-up).
    """

    name = "local"
    max_in_flight: int | None = None

    def submit(self, fn: Callable[..., T], *args: Any) -> Task[T]:
        return _Deferred(fn, args)

    def wait(self, tasks: Iterable[Task[Any]], timeout: float | None) -> list[Task[Any]]:
        pending = [t for t in tasks if isinstance(t, _Deferred)]
        done = [t for t in pending if t.finished]
        if done:
            return list(done)
        if pending:
            pending[0].run()
            return [pending[0]]
        return []

    def share(self, obj: Any) -> Any:
        return obj

    def channel(self, on_item: Callable[[Any], None]) -> Channel:
        return _DirectChannel(on_item)

    def close(self, cancel: bool) -> None:
        return


class _QueueChannel:
    """A manager queue: picklable into pool workers, drained by the driver."""

    def __init__(self, q: Any, on_item: Callable[[Any], None]) -> None:
        self.sender = q
        self._on_item = on_item

    def drain(self) -> None:
        while True:
            try:
                item = self.sender.get_nowait()
            except queue.Empty:
                return
            self._on_item(item)


ORPHAN_CHECK_S = 1.0
"""How often a pool worker checks that its driver is still alive."""


def _exit_when_orphaned(parent: int) -> None:
    """Leave as soon as the driver is gone (killed, crashed): an orphan would keep burning
    CPU, and a tracing orphan would rename its part into the folder of the next run."""
    while True:
        time.sleep(ORPHAN_CHECK_S)
        if os.getppid() != parent:
            os._exit(1)


def _init_worker(setup: WorkerSetup | None, threads: int) -> None:
    threading.Thread(
        target=_exit_when_orphaned, args=(os.getppid(),), daemon=True, name="orphan-watch"
    ).start()
    if setup is not None:
        setup(threads)


class PoolExecutor:
    """A spawned `ProcessPoolExecutor` of `workers` processes, `threads` CPU threads each."""

    name = "local"
    max_in_flight: int | None = None  # the pool queues them; Ctrl-C cancels what waits

    def __init__(self, workers: int, threads: int, setup: WorkerSetup | None) -> None:
        self._ctx = multiprocessing.get_context("spawn")
        self._pool = ProcessPoolExecutor(
            workers, mp_context=self._ctx, initializer=_init_worker, initargs=(setup, threads)
        )
        self._manager: Any = None

    def submit(self, fn: Callable[..., T], *args: Any) -> Task[T]:
        try:
            return self._pool.submit(fn, *args)
        except BrokenProcessPool as exc:
            # A worker died (e.g. killed for memory): this job fails like the ones it
            # took down with it, and a rerun retries them all.
            failed: Future[T] = Future()
            failed.set_exception(exc)
            return failed

    def wait(self, tasks: Iterable[Task[Any]], timeout: float | None) -> list[Task[Any]]:
        futures = [t for t in tasks if isinstance(t, Future)]
        done, _ = wait(futures, timeout=timeout, return_when=FIRST_COMPLETED)
        return list(done)

    def share(self, obj: Any) -> Any:
        return obj

    def channel(self, on_item: Callable[[Any], None]) -> Channel:
        if self._manager is None:
            self._manager = self._ctx.Manager()
        return _QueueChannel(self._manager.Queue(), on_item)

    def close(self, cancel: bool) -> None:
        self._pool.shutdown(wait=True, cancel_futures=cancel)
        if self._manager is not None:
            self._manager.shutdown()


def open_local(workers: int, threads: int, setup: WorkerSetup | None) -> Executor:
    """This process for one worker, else a pool."""
    if workers <= 1:
        return InlineExecutor()
    return PoolExecutor(workers, threads, setup)
