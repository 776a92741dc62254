"""Training rows left on disk: batches read from the HDF5 file a window of chunks at a time.

A corpus of hundreds of environments may not fit in RAM. `LazyRows` holds only
the row numbers of one environment's training split; `LazyRows.stream` gives
endless batches the way `training.fit` draws in-memory ones, but shuffles at
two levels so reads stay sequential: each pass permutes the *chunks* (runs of
``chunk_rows`` consecutive training rows in file order), reads a window of
``window_chunks`` chunks at once (sorted rows, chunk-aligned slices through
`LazyEnvironment.read`), and permutes the rows within the window. Memory per
environment is one window (``chunk_rows * window_chunks`` samples, ~6.6 kB
each), so an environment's batches are less independent than a full
permutation's: a batch mixes ``window_chunks`` runs of the file, not the whole
split. The throughput cost is in bench/README.md.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch

from training.data.fingerprints import LazyEnvironment, open_environment

CHUNK_ROWS = 256
"""Consecutive training rows (in file order) that are read and shuffled as one unit."""
WINDOW_CHUNKS = 8
"""Chunks held in memory per environment; a batch is drawn from their union."""

Batch = tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]


class LazyRows:
    """One environment's training rows (file row numbers), read lazily in shuffled windows."""

    def __init__(
        self,
        path: str | Path,
        env: str,
        rows: npt.ArrayLike,
        *,
        chunk_rows: int = CHUNK_ROWS,
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
            self._lazy = open_environment(self.path, self.env)
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
        chunks = [self.rows[i : i + self.chunk_rows] for i in range(0, n, self.chunk_rows)]
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
