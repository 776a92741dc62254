"""Window reads of `LazyRows` in worker processes, so a GPU is not left waiting on gzip.

A lazy corpus is read a window of HDF5 chunks at a time, and inflating a window
costs one CPU core ~10-20 us a sample: ~40k samples/s on one core of a GPU machine,
where the batched MEML loop reaches ~220k (bench/README.md, "On a GPU"). h5py holds
one global lock, so threads cannot inflate in parallel; processes can. The workers
import only numpy and h5py (not torch) and keep each environment's file open.

A window comes back through shared memory, not the pool's pipe: pickling ~3.4 MB
windows through it cost the trainer about as much as reading them itself (one worker
delivered 0.53x the in-process rate). The worker writes the window into a new block
and returns its name; the trainer copies the shuffled rows out and unlinks it.
"""

from __future__ import annotations

import multiprocessing
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from multiprocessing.shared_memory import SharedMemory

import numpy as np
import numpy.typing as npt

from training.data.fingerprints import LazyEnvironment, open_environment

READ_CACHE_BYTES = 4 * 1024 * 1024
"""HDF5 chunk cache per open environment: windows read whole chunks once, so a small one
does (the 256 MB default of `open_environment` times hundreds of environments would not
fit)."""

Batch = tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]

_WORKER_OPEN: dict[tuple[str, str], LazyEnvironment] = {}
"""A reader process's open environments. Its pool lives for one training run, so no file
changes under it; the trainer's own reads keep one handle per `LazyRows` instead."""


def open_for_reads(path: str, env: str) -> LazyEnvironment:
    """``env`` of ``path`` opened with the small chunk cache that window reads need."""
    return open_environment(path, env, cache_bytes=READ_CACHE_BYTES)


def read_window(lazy: LazyEnvironment, rows: npt.NDArray[np.int64]) -> Batch:
    """CSI and positions of file rows ``rows`` (sorted reads are fastest)."""
    data = lazy.read(rows)
    return (
        np.ascontiguousarray(data.csi, dtype=np.float32),
        np.ascontiguousarray(data.pos, dtype=np.float32),
    )


Shared = tuple[str, tuple[int, ...], tuple[int, ...]]
"""A window in shared memory: the block's name, the CSI's shape, the positions' shape."""


def read_shared(path: str, env: str, rows: npt.NDArray[np.int64]) -> Shared:
    """A window read into a new shared-memory block (a worker's task); the caller unlinks it."""
    key = (path, env)
    lazy = _WORKER_OPEN.get(key)
    if lazy is None:
        lazy = _WORKER_OPEN[key] = open_for_reads(path, env)
    csi, pos = read_window(lazy, rows)
    block = SharedMemory(create=True, size=max(1, csi.nbytes + pos.nbytes))
    try:
        np.ndarray(csi.shape, np.float32, block.buf)[...] = csi
        np.ndarray(pos.shape, np.float32, block.buf, offset=csi.nbytes)[...] = pos
    except BaseException:
        block.close()
        block.unlink()
        raise
    block.close()
    return block.name, csi.shape, pos.shape


def take_shared(window: Shared, perm: npt.NDArray[np.int64]) -> Batch:
    """The rows ``perm`` of a window in shared memory, copied out; the block is unlinked."""
    name, csi_shape, pos_shape = window
    block = SharedMemory(name=name)
    try:
        csi_view = np.ndarray(csi_shape, np.float32, block.buf)
        offset = csi_view.nbytes
        csi = csi_view[perm]
        pos = np.ndarray(pos_shape, np.float32, block.buf, offset=offset)[perm]
        del csi_view  # no view may outlive close()
    finally:
        block.close()
        block.unlink()
    return csi, pos


def discard(future: Future[Shared]) -> None:
    """Drop a scheduled window that will not be drawn: cancel it, or unlink its block."""
    if future.cancel():
        return

    def unlink(done: Future[Shared]) -> None:
        if done.cancelled() or done.exception() is not None:
            return
        block = SharedMemory(name=done.result()[0])
        block.close()
        block.unlink()

    future.add_done_callback(unlink)


def reader_pool(workers: int) -> Executor:
    """``workers`` reader processes. Spawned, not forked: the trainer holds HDF5 handles
    and perhaps a CUDA context, neither of which survives a fork."""
    if workers < 1:
        raise ValueError(f"read_workers={workers}, expected >= 1 (0 reads in the trainer)")
    return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
