"""The k nearest rows of a reference matrix, in numpy, a block of rows at a time.

Why one search: the labels' spacing (`training.correlogram`), the multi-BS consistency
check (`training.consistency`) and the channel pairs of fingerprints without tracks
(`training.unlabelled`) all ask for the nearest rows among thousands. The whole [N, M]
distance matrix of 20,000 rows would be 3.2 GB; a block of `BLOCK_ENTRIES` entries is
32 MB at most. (The head's own search, `training.nets.reference_neighbours`, is torch:
it runs inside the ONNX graph the service serves.)
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

BLOCK_ENTRIES = 1 << 22
"""Entries of the distance matrix held at once (rows of ``x`` per block: this over M)."""


def k_nearest(
    x: npt.ArrayLike, ref: npt.ArrayLike, k: int = 1, *, leave_out: bool = False
) -> tuple[npt.NDArray[np.floating], npt.NDArray[np.intp]]:
    """(distances [N, k], indices [N, k]): each row of ``x`` [N, D]'s ``k`` nearest rows of
    ``ref`` [M, D] by Euclidean distance, nearest first, ties to the lower index.

    ``leave_out``: ``x`` is ``ref`` (the same rows in the same order) and row i never
    counts itself, so a sample is not its own neighbour. Float32 input is searched in
    float32 (half the time of the matmul), anything else in float64.
    """
    xx, rr = _floats(x), _floats(ref)
    if xx.ndim != 2 or rr.ndim != 2 or xx.shape[1] != rr.shape[1]:
        raise ValueError(f"expected x [N, D] and ref [M, D]; got {xx.shape} and {rr.shape}")
    if leave_out and xx.shape != rr.shape:
        raise ValueError(f"leave_out: expected x to be ref; got {xx.shape} and {rr.shape}")
    if xx.dtype != rr.dtype:
        xx, rr = xx.astype(np.float64), rr.astype(np.float64)
    available = len(rr) - int(leave_out)
    if not 1 <= k <= available:
        raise ValueError(f"k = {k}: expected 1 to {available} (the reference's other rows)")
    n = len(xx)
    dist = np.empty((n, k), dtype=xx.dtype)
    index = np.empty((n, k), dtype=np.intp)
    ref_sq = (rr * rr).sum(axis=1)
    rows = max(1, BLOCK_ENTRIES // max(1, len(rr)))
    for lo in range(0, n, rows):
        block = xx[lo : lo + rows]
        d2 = (block * block).sum(axis=1)[:, None] - 2.0 * block @ rr.T + ref_sq[None]
        if leave_out:
            d2[np.arange(len(block)), np.arange(lo, lo + len(block))] = np.inf
        if k == 1:
            near = np.argmin(d2, axis=1)[:, None]  # the first of equal minima
        else:
            near = np.argsort(d2, axis=1, kind="stable")[:, :k]
        index[lo : lo + len(block)] = near
        dist[lo : lo + len(block)] = np.sqrt(np.maximum(np.take_along_axis(d2, near, axis=1), 0.0))
    return dist, index


def _floats(a: npt.ArrayLike) -> npt.NDArray[np.floating]:
    """``a`` as float32 when it is float32, else float64."""
    arr = np.asarray(a)
    return arr if arr.dtype == np.float32 else arr.astype(np.float64)
