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
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch

from training.data.fingerprints import CHUNK_SAMPLES, LazyEnvironment, open_environment

WINDOW_CHUNKS = 2
"""HDF5 chunks held in memory per environment; a batch is drawn from their union."""
READ_CACHE_BYTES = 4 * 1024 * 1024
"""HDF5 chunk cache per environment: windows read whole chunks once, so a small one does
(the 256 MB default of `open_environment` times hundreds of environments would not fit)."""

Batch = tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]


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
            self._lazy = open_environment(self.path, self.env, cache_bytes=READ_CACHE_BYTES)
        data = self._lazy.read(rows)
        return (
            np.ascontiguousarray(data.csi, dtype=np.float32),
            np.ascontiguousarray(data.pos, dtype=np.float32),
        )

    def stream(self, batch_size: int, gen: torch.Generator) -> Iterator[Batch]:
        """Endless batches of ``min(batch_size, len)`` samples; ``gen`` seeds every shuffle."""
        n = len(self.rows)
        if n == 0:
            raise ValueError(f"{self.path}: environment {self.env!r} has no training rows")
        batch = min(batch_size, n)
        # The training rows of each file chunk (rows are sorted).
        chunks = np.split(self.rows, np.flatnonzero(np.diff(self.rows // self.chunk_rows)) + 1)
        carry: Batch | None = None
        while True:
            order = torch.randperm(len(chunks), generator=gen).tolist()
            for w in range(0, len(order), self.window_chunks):
                window = order[w : w + self.window_chunks]
                picked = np.sort(np.concatenate([chunks[c] for c in window]))
                csi, pos = self.read(picked)
                perm = torch.randperm(len(picked), generator=gen).numpy()
                csi, pos = csi[perm], pos[perm]
                if carry is not None:
                    csi, pos = np.concatenate([carry[0], csi]), np.concatenate([carry[1], pos])
                start = 0
                while start + batch <= len(csi):
                    yield csi[start : start + batch], pos[start : start + batch]
                    start += batch
                carry = csi[start:], pos[start:]
