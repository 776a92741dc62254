"""Dynamic batching: concurrent requests for one site coalesce into one model call.

A single fingerprint costs the model ~0.2 ms, but every call also pays a thread hop and
onnxruntime's per-run setup; under concurrency, one call over many fingerprints spreads
that cost (Triton's dynamic batcher, with its `max_batch_size` and
`max_queue_delay_microseconds`). Requests queue per site; each of `workers` loops per site
takes the oldest request, adds whatever else is queued (waiting up to `max_delay_s` after
the oldest arrived for more) while the batch stays within `max_batch` fingerprints, and
runs it as one call. Each caller gets back the rows at its own offset in that batch, never
another caller's (MLServer #1306).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from service import metrics

if TYPE_CHECKING:
    from service.positioning import Prediction

RunBatch = Callable[[str, np.ndarray], Awaitable["Prediction"]]


@dataclass
class _Pending:
    csi: np.ndarray
    future: asyncio.Future[Prediction]
    enqueued: float = field(default_factory=time.perf_counter)

    @property
    def rows(self) -> int:
        return int(self.csi.shape[0])


@dataclass
class _Lane:
    """One site's queue and the loops that drain it."""

    pending: deque[_Pending] = field(default_factory=deque)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    workers: list[asyncio.Task[None]] = field(default_factory=list)


class Batcher:
    """Coalesces `submit` calls per site into calls of `run` over the concatenated rows."""

    def __init__(
        self,
        run: RunBatch,
        *,
        max_batch: int,
        max_delay_s: float,
        workers: int,
        site_label: Callable[[str], str],
    ) -> None:
        self._run = run
        self.max_batch = max_batch
        self.max_delay_s = max_delay_s
        self.workers = workers
        self._label = site_label
        self._lanes: dict[str, _Lane] = {}
        self._loop: asyncio.AbstractEventLoop | None = None

    async def submit(self, site: str, csi: np.ndarray) -> Prediction:
        """This request's rows of a (possibly shared) model call."""
        lane = self._lane(site)
        item = _Pending(csi, asyncio.get_running_loop().create_future())
        lane.pending.append(item)
        lane.arrived.set()
        return await item.future

    def _lane(self, site: str) -> _Lane:
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # a new event loop (e.g. an app restarted in tests)
            self._lanes.clear()
            self._loop = loop
        lane = self._lanes.get(site)
        if lane is None:
            lane = self._lanes[site] = _Lane()
            lane.workers = [
                loop.create_task(self._drain(site, lane), name=f"csipos-batch-{site}-{i}")
                for i in range(self.workers)
            ]
        return lane

    async def _collect(self, lane: _Lane) -> list[_Pending]:
        """The next batch: the oldest live request and what may join it."""
        loop = asyncio.get_running_loop()
        while True:
            while not lane.pending:
                lane.arrived.clear()
                await lane.arrived.wait()
            first = lane.pending.popleft()
            if not first.future.done():  # skip callers that went away while queued
                break
        batch, rows = [first], first.rows
        deadline = loop.time() + self.max_delay_s - (time.perf_counter() - first.enqueued)
        while rows < self.max_batch:
            if lane.pending:
                nxt = lane.pending[0]
                if nxt.future.done():
                    lane.pending.popleft()
                elif rows + nxt.rows > self.max_batch:
                    break
                else:
                    batch.append(lane.pending.popleft())
                    rows += nxt.rows
                continue
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            lane.arrived.clear()
            try:
                await asyncio.wait_for(lane.arrived.wait(), remaining)
            except TimeoutError:
                break
        return batch

    async def _drain(self, site: str, lane: _Lane) -> None:
        label = self._label(site)
        queue_time = metrics.BATCH_QUEUE_DURATION.labels(label)
        requests = metrics.BATCH_REQUESTS.labels(label)
        while True:
            batch = await self._collect(lane)
            now = time.perf_counter()
            for item in batch:
                queue_time.observe(now - item.enqueued)
            requests.observe(len(batch))
            csi = batch[0].csi if len(batch) == 1 else np.concatenate([b.csi for b in batch])
            try:
                pred = await self._run(site, csi)
            except Exception as exc:
                for item in batch:
                    if not item.future.done():
                        item.future.set_exception(exc)
                continue
            start = 0
            for item in batch:
                stop = start + item.rows
                if not item.future.done():
                    item.future.set_result(pred.rows(start, stop))
                start = stop

    async def close(self) -> None:
        """Stop the loops; queued callers get CancelledError."""
        tasks = [t for lane in self._lanes.values() for t in lane.workers]
        for lane in self._lanes.values():
            for item in lane.pending:
                item.future.cancel()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._lanes.clear()
