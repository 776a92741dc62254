"""Window reads in worker processes: the same batches as reading in the trainer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from tests.training.toychannel import write_toy_file
from training.data.lazy import LazyRows
from training.data.prefetch import reader_pool


def test_a_reader_pool_gives_the_same_batches_as_reading_in_process(tmp_path: Path) -> None:
    path = write_toy_file(tmp_path / "toy.h5", n=80)
    rows = np.arange(3, 80, 2)  # 39 rows: windows do not divide into batches
    lazy = LazyRows(path, "lab-los", rows, chunk_rows=6, window_chunks=2)
    local = lazy.stream(10, torch.Generator().manual_seed(3))
    want = [next(local) for _ in range(12)]  # three passes

    def blocks() -> set[Path]:  # shared-memory blocks (other tests' semaphores live there too)
        return set(Path("/dev/shm").glob("psm_*"))

    before = blocks()
    with reader_pool(2) as pool:
        pooled = lazy.stream(10, torch.Generator().manual_seed(3), pool)
        got = [next(pooled) for _ in range(12)]
        pooled.close()  # the windows read ahead are freed, not left in shared memory
    assert blocks() <= before
    for (c1, p1), (c2, p2) in zip(want, got, strict=True):
        np.testing.assert_array_equal(c1, c2)
        np.testing.assert_array_equal(p1, p2)
    other = lazy.stream(10, torch.Generator().manual_seed(4))
    assert not np.array_equal(next(other)[1], want[0][1])  # the seed decides the order


def test_a_pool_needs_a_worker() -> None:
    with pytest.raises(ValueError, match="read_workers=0"):
        reader_pool(0)
