"""A torch `Dataset` over fingerprints in memory or left on disk.

Items are `(csi float32 [8,103,2], pos float32 [2])`. For in-memory data the
trainers should rather call `as_tensors()` and index the tensors directly: a
per-item Python `__getitem__` costs far more than the small CNN it feeds.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch.utils.data import Dataset

from training.data.fingerprints import Fingerprints, LazyEnvironment

__all__ = ["FingerprintDataset"]

Item = tuple[torch.Tensor, torch.Tensor]


class FingerprintDataset(Dataset[Item]):
    """Fingerprints (or a lazily read environment), optionally restricted to `indices`.

    In-memory data is wrapped without copying (`torch.from_numpy`). A
    `LazyEnvironment` is read on demand; `__getitems__` lets a DataLoader fetch a
    whole batch with one sorted HDF5 read instead of one read per item.
    """

    def __init__(
        self, source: Fingerprints | LazyEnvironment, indices: npt.ArrayLike | None = None
    ) -> None:
        if not isinstance(source, Fingerprints | LazyEnvironment):
            raise TypeError(
                f"source must be Fingerprints or LazyEnvironment, got {type(source).__name__}"
            )
        n = len(source)
        if indices is None:
            idx = np.arange(n, dtype=np.int64)
        else:
            idx = np.asarray(indices)
            if idx.ndim != 1 or (idx.size and idx.dtype.kind not in "iu"):
                raise ValueError(
                    f"indices must be a 1-D int array, got shape {idx.shape} dtype {idx.dtype}"
                )
            idx = idx.astype(np.int64)
            if idx.size and (idx.min() < 0 or idx.max() >= n):
                raise IndexError(
                    f"indices must lie in [0, {n}), got {int(idx.min())}..{int(idx.max())}"
                )
        self.source = source
        self.indices = idx
        self._csi: torch.Tensor | None = None
        self._pos: torch.Tensor | None = None
        if isinstance(source, Fingerprints):
            source.validate()
            self._csi = torch.from_numpy(source.csi)
            self._pos = torch.from_numpy(source.pos)

    def __len__(self) -> int:
        return int(self.indices.size)

    def __getitem__(self, i: int) -> Item:
        if not -len(self) <= i < len(self):
            raise IndexError(f"item {i} out of range for a dataset of {len(self)}")
        row = int(self.indices[i])
        if self._csi is not None and self._pos is not None:
            return self._csi[row], self._pos[row]
        assert isinstance(self.source, LazyEnvironment)
        data = self.source.read(slice(row, row + 1))
        return torch.from_numpy(data.csi[0]), torch.from_numpy(data.pos[0])

    def __getitems__(self, items: list[int]) -> list[Item]:
        """Batched fetch (used by DataLoader): one read for the whole batch."""
        rows = self.indices[np.asarray(items, dtype=np.int64)]
        csi, pos = self._gather(rows)
        return list(zip(csi.unbind(0), pos.unbind(0), strict=True))

    def _gather(self, rows: npt.NDArray[np.int64]) -> tuple[torch.Tensor, torch.Tensor]:
        if self._csi is not None and self._pos is not None:
            index = torch.from_numpy(rows)
            return self._csi[index], self._pos[index]
        assert isinstance(self.source, LazyEnvironment)
        data = self.source.read(rows)
        return torch.from_numpy(data.csi), torch.from_numpy(data.pos)

    def as_tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """All selected samples as `(csi [N,8,103,2], pos [N,2])` float32 tensors.

        Shares memory with the source when no subset is selected; a lazy source is
        read into memory here (in one sorted pass).
        """
        if self._csi is not None and self._pos is not None and self._is_identity():
            return self._csi, self._pos
        return self._gather(self.indices)

    def _is_identity(self) -> bool:
        n = len(self.source)
        return self.indices.size == n and bool(
            np.array_equal(self.indices, np.arange(n, dtype=np.int64))
        )

    def extras(self) -> dict[str, Any]:
        """Optional per-sample fields (`los`, `snr_db`) of the selected samples, where present."""
        if isinstance(self.source, Fingerprints):
            data = self.source.subset(self.indices)
        else:
            data = self.source.read(self.indices)
        return {k: v for k, v in (("los", data.los), ("snr_db", data.snr_db)) if v is not None}
