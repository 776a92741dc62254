"""Keep a training process's freed activation memory in the process (glibc only).

Every training step frees and allocates again the same few-MB activation and gradient
buffers (~8 MB for one convolution's output at batch 64). glibc serves blocks that large
with fresh ``mmap`` calls and trims freed memory at the top of the heap back to the
kernel, so every step faults the same pages in again: a 500-label `auto` adaptation on
2 cores spent 25 s in the kernel beside 157 s of user time, with 7 million minor page
faults. Raising glibc's mmap and trim thresholds keeps those buffers in the heap. The
arithmetic is the same, and the peak memory too (the process already held it once);
`bench/allocator.py` measures the time and checks the weights match bit for bit.

Process-wide and one-way, so it is applied where a process trains: the training
commands, the service's adaptation workers, and the experiment workers. It is not
applied in the API process, whose memory should go back to the kernel between requests.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import platform

__all__ = ["MMAP_THRESHOLD", "TRIM_THRESHOLD", "keep_freed_memory"]

log = logging.getLogger(__name__)

MMAP_THRESHOLD = 32 * 1024 * 1024
"""Blocks below this come from the heap, not their own mapping: glibc's ceiling on 64-bit."""
TRIM_THRESHOLD = 256 * 1024 * 1024
"""Freed memory at the top of the heap the process keeps before returning it."""
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_applied: bool | None = None


def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds in this process (once; later calls return
    the first answer). False where the C library is not glibc or refused: nothing changed."""
    global _applied
    if _applied is not None:
        return _applied
    _applied = False
    if platform.libc_ver()[0] != "glibc":
        return False
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    # mallopt returns 1 on success, 0 on error (a value out of its range)
    ok = bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1)
    ok = bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1) and ok
    if not ok:
        log.debug("glibc refused the malloc thresholds; the defaults stay")
    _applied = ok
    return ok
