"""The Ray backend: every job is one Ray task (Ray Core), scheduled by the cluster.

A task asks for `task_cpus` CPUs and runs with that many torch threads. Ray
re-executes a task whose worker process or node died (`max_retries`); a Python
exception raised by the job is not retried (`retry_exceptions=False`): a job that
fails by itself would fail again the same way, so it is reported to the driver,
which leaves it pending for the next invocation (as with the local pool).
Results come back through Ray's object store; the driver writes them.
"""

from __future__ import annotations

import logging
import os
import weakref
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import ray
from ray.exceptions import RayTaskError
from ray.util.queue import Empty, Queue

from training.cluster import (
    Channel,
    ClusterUnavailableError,
    ExecutorConfig,
    Task,
    WorkerSetup,
)

T = TypeVar("T")

_SET_UP: set[tuple[WorkerSetup, int]] = set()
"""Worker set-ups already run in this (Ray worker) process: Ray reuses workers across tasks."""


def _call(setup: WorkerSetup | None, threads: int, fn: Callable[..., T], *args: Any) -> T:
    if setup is not None and (setup, threads) not in _SET_UP:
        setup(threads)
        _SET_UP.add((setup, threads))
    return fn(*args)


class _RayTask:
    def __init__(self, ref: ray.ObjectRef[Any]) -> None:
        self.ref = ref
        self.collected = False

    def result(self) -> Any:
        self.collected = True
        try:
            return ray.get(self.ref)
        except RayTaskError as exc:
            # The job's own exception, as the local pool raises it (the remote
            # traceback stays attached as its cause).
            cause = exc.cause
            if isinstance(cause, Exception):
                raise cause from exc
            raise


class _QueueChannel:
    """A Ray queue (an actor that holds no CPU): tasks on any node put, the driver drains."""

    def __init__(self, on_item: Callable[[Any], None]) -> None:
        self.sender = Queue(actor_options={"num_cpus": 0})
        self._on_item = on_item

    def drain(self) -> None:
        while True:
            try:
                item = self.sender.get_nowait()
            except Empty:
                return
            self._on_item(item)


class RayExecutor:
    """Jobs as Ray tasks on the cluster at `config.address`."""

    name = "ray"

    def __init__(self, config: ExecutorConfig, *, setup: WorkerSetup | None = None) -> None:
        self.max_in_flight = config.workers
        self._setup = setup
        self._threads = config.task_cpus
        self._owns = not ray.is_initialized()  # a caller's own connection is left open
        if self._owns:
            try:
                ray.init(address=config.address, logging_level=logging.WARNING)
            except ConnectionError as exc:
                where = config.address or os.environ.get("RAY_ADDRESS") or "(none given)"
                raise ClusterUnavailableError(
                    f"cannot reach the Ray cluster at {where}: {exc}"
                ) from exc
        self._remote = ray.remote(
            num_cpus=config.task_cpus, max_retries=config.max_retries, retry_exceptions=False
        )(_call)
        self._tasks: weakref.WeakSet[_RayTask] = weakref.WeakSet()
        self._channels: list[_QueueChannel] = []

    def submit(self, fn: Callable[..., T], *args: Any) -> Task[T]:
        name = getattr(fn, "__name__", "job")
        ref = self._remote.options(name=name).remote(self._setup, self._threads, fn, *args)
        task = _RayTask(ref)
        self._tasks.add(task)
        return task

    def wait(self, tasks: Iterable[Task[Any]], timeout: float | None) -> list[Task[Any]]:
        by_ref = {t.ref: t for t in tasks if isinstance(t, _RayTask)}
        if not by_ref:
            return []
        refs = list(by_ref)
        ready, rest = ray.wait(refs, num_returns=1, timeout=timeout)
        if ready and rest:  # and whatever else is done by now
            more, _ = ray.wait(rest, num_returns=len(rest), timeout=0)
            ready += more
        return [by_ref[r] for r in ready]

    def share(self, obj: Any) -> Any:
        return ray.put(obj)

    def channel(self, on_item: Callable[[Any], None]) -> Channel:
        chan = _QueueChannel(on_item)
        self._channels.append(chan)
        return chan

    def close(self, cancel: bool) -> None:
        unfinished = [t.ref for t in list(self._tasks) if not t.collected]
        if cancel and unfinished:
            _, running = ray.wait(unfinished, num_returns=len(unfinished), timeout=0)
            for ref in running:
                # Not force=True: killing a worker whose reply is already on its way
                # aborts the driver (Ray 2.60, task_manager "task that was not pending").
                ray.cancel(ref)
        for chan in self._channels:
            chan.sender.shutdown()
        self._channels.clear()
        if self._owns:
            ray.shutdown()
