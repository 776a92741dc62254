"""Training rows left on disk: batches read from the HDF5 file a window of chunks at a time.

A corpus of hundreds of environments may not fit in RAM. `LazyRows` holds only
the row numbers of one environment's training split; `LazyRows.stream` gives
endless batches the way `training.fit` draws in-memory ones, but shuffles at
two levels so every HDF5 chunk is inflated once per pass: each pass permutes
the file's *chunks* (the training rows inside one HDF5 chunk of
``chunk_rows`` = `CHUNK_SAMPLES` rows), reads a window of ``window_chunks``
chunks at once (chunk-aligned slices through `LazyEnvironment.read`), and
permutes the rows within the window (a partial last batch carries over to the
next window). Memory per environment is one window, ``window_chunks`` x ~1.7 MB,
held between the steps that draw it, so N environments hold N windows: a
corpus of 1,000 environments needs ~3.4 GB at the default 2. The price is
randomness: a batch mixes ``window_chunks`` stretches of the file rather than
the whole split (files written in scan order then give spatially clustered
batches; raise ``window_chunks`` where RAM allows). Throughput: bench/README.md.

Reads are scheduled `AHEAD` windows before they are drawn from; with a reader pool
(`training.data.prefetch`) they run in worker processes meanwhile. The shuffles are
drawn when a window is scheduled, so the batches are the same with or without a pool.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, Future
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch

from training.data.fingerprints import CHUNK_SAMPLES, LazyEnvironment
from training.data.prefetch import (
    Batch,
    Shared,
    discard,
    open_for_reads,
    read_shared,
    read_window,
    take_shared,
)

WINDOW_CHUNKS = 2
"""HDF5 chunks held in memory per environment; a batch is drawn from their union."""
AHEAD = 2
"""Windows per environment scheduled beyond the one being drawn from (read ahead by a
pool; memory per environment is then up to ``1 + AHEAD`` windows)."""


class LazyRows:
    """One environment's training rows (file row numbers), read lazily in shuffled windows."""

    def __init__(
        self,
        path: str | Path,
        env: str,
        rows: npt.ArrayLike,
        *,
        chunk_rows: int = CHUNK_SAMPLES,
        window_chunks: int = WINDOW_CHUNKS,
    ) -> None:
        if chunk_rows < 1 or window_chunks < 1:
            raise ValueError(
                f"chunk_rows={chunk_rows}, window_chunks={window_chunks}: expected >= 1"
            )
        self.path, self.env = Path(path), env
        self.rows = np.sort(np.asarray(rows, dtype=np.int64))
        self.chunk_rows, self.window_chunks = chunk_rows, window_chunks
        self._lazy: LazyEnvironment | None = None

    def __len__(self) -> int:
        return len(self.rows)

    def __getstate__(self) -> dict[str, object]:
        # The HDF5 handle does not pickle; it reopens on first read.
        return {**self.__dict__, "_lazy": None}

    def read(self, rows: npt.NDArray[np.int64]) -> Batch:
        """CSI and positions of file rows ``rows`` (sorted reads are fastest)."""
        if self._lazy is None:
            self._lazy = open_for_reads(str(self.path), self.env)
        return read_window(self._lazy, rows)

    def stream(
        self, batch_size: int, gen: torch.Generator, pool: Executor | None = None
    ) -> Iterator[Batch]:
        """Endless batches of ``min(batch_size, len)`` samples; ``gen`` seeds every shuffle.

        ``pool``: read the scheduled windows there (`training.data.prefetch.reader_pool`);
        None reads each in this process when it is drawn from. The batches are the same.
        """
        n = len(self.rows)
        if n == 0:
            raise ValueError(f"{self.path}: environment {self.env!r} has no training rows")
        batch = min(batch_size, n)
        # The training rows of each file chunk (rows are sorted).
        chunks = np.split(self.rows, np.flatnonzero(np.diff(self.rows // self.chunk_rows)) + 1)

        def windows() -> Iterator[tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]]:
            """(file rows, their shuffle) of each window, pass after pass."""
            while True:
                order = torch.randperm(len(chunks), generator=gen).tolist()
                for w in range(0, len(order), self.window_chunks):
                    picked = np.sort(
                        np.concatenate([chunks[c] for c in order[w : w + self.window_chunks]])
                    )
                    yield picked, torch.randperm(len(picked), generator=gen).numpy()

        def schedule(picked: npt.NDArray[np.int64], perm: npt.NDArray[np.int64]) -> _Window:
            if pool is None:
                return _Window(lambda: _shuffled(self.read(picked), perm))
            future = pool.submit(read_shared, str(self.path), self.env, picked)
            return _Window(lambda: take_shared(future.result(), perm), future)

        planned = windows()
        pending = deque(schedule(*next(planned)) for _ in range(1 + AHEAD))
        carry: Batch | None = None
        try:
            while True:
                window = pending.popleft()
                pending.append(schedule(*next(planned)))
                csi, pos = window.take()
                if carry is not None and len(carry[0]):
                    csi, pos = np.concatenate([carry[0], csi]), np.concatenate([carry[1], pos])
                start = 0
                while start + batch <= len(csi):
                    yield csi[start : start + batch], pos[start : start + batch]
                    start += batch
                carry = csi[start:], pos[start:]
        finally:  # the stream is closed or collected: free the windows read ahead
            for window in pending:
                if window.future is not None:
                    discard(window.future)


class _Window:
    """A scheduled window: how to get its shuffled rows, and the pool's future if any."""

    def __init__(self, take: Callable[[], Batch], future: Future[Shared] | None = None) -> None:
        self.take, self.future = take, future


def _shuffled(data: Batch, perm: npt.NDArray[np.int64]) -> Batch:
    return data[0][perm], data[1][perm]
