from __future__ import annotations

import numpy as np
import pytest

from training.data.splits import fraction_subset, kfold, train_val_test


def test_train_val_test_pinned_values() -> None:
    # Pinned: a silent change of the split (numpy stream, rounding, order) fails here.
    split = train_val_test(20, 0.2, 0.1, seed=7)
    assert split.train.tolist() == [0, 1, 2, 4, 5, 6, 7, 9, 10, 11, 15, 17, 18, 19]
    assert split.val.tolist() == [12, 13, 14, 16]
    assert split.test.tolist() == [3, 8]


def test_train_val_test_partition_and_seed() -> None:
    split = train_val_test(1000, 0.15, 0.2, seed=3)
    assert (len(split.train), len(split.val), len(split.test)) == (650, 150, 200)
    joined = np.concatenate(split)
    assert np.array_equal(np.sort(joined), np.arange(1000))
    for part in split:
        assert part.dtype == np.int64 and np.all(np.diff(part) > 0)
    again = train_val_test(1000, 0.15, 0.2, seed=3)
    assert all(np.array_equal(a, b) for a, b in zip(split, again, strict=True))
    other = train_val_test(1000, 0.15, 0.2, seed=4)
    assert not np.array_equal(split.test, other.test)


@pytest.mark.parametrize(
    ("n", "val", "test", "match"),
    [(10, 0.5, 0.5, "no training samples"), (10, -0.1, 0.1, "val fraction"), (0, 0.1, 0.1, "n")],
)
def test_train_val_test_bad_input(n: int, val: float, test: float, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        train_val_test(n, val, test, seed=0)


def test_kfold_pinned_values() -> None:
    folds = [(a.tolist(), b.tolist()) for a, b in kfold(10, 3, seed=1)]
    assert folds == [
        ([1, 2, 3, 5, 6, 9], [0, 4, 7, 8]),
        ([0, 3, 4, 6, 7, 8, 9], [1, 2, 5]),
        ([0, 1, 2, 4, 5, 7, 8], [3, 6, 9]),
    ]


@pytest.mark.parametrize(("n", "k"), [(103, 5), (10, 10), (7, 2)])
def test_kfold_partitions(n: int, k: int) -> None:
    folds = kfold(n, k, seed=11)
    assert len(folds) == k
    vals = np.concatenate([v for _, v in folds])
    assert np.array_equal(np.sort(vals), np.arange(n))  # val parts partition range(n)
    sizes = [len(v) for _, v in folds]
    assert max(sizes) - min(sizes) <= 1
    for train, val in folds:
        assert np.intersect1d(train, val).size == 0
        assert len(train) + len(val) == n


def test_kfold_bad_k() -> None:
    with pytest.raises(ValueError, match="k must be"):
        kfold(5, 1, seed=0)
    with pytest.raises(ValueError, match="k must be"):
        kfold(5, 6, seed=0)


def test_fraction_subset_pinned_and_nested() -> None:
    assert fraction_subset(np.arange(100, 120), 0.25, seed=3).tolist() == [103, 108, 112, 116, 118]
    pool = kfold(500, 5, seed=2)[0][0]
    previous: set[int] = set()
    for fraction in (0.2, 0.4, 0.6, 0.8, 1.0):
        subset = fraction_subset(pool, fraction, seed=9)
        assert len(subset) == round(fraction * len(pool))
        assert previous <= set(subset.tolist())  # 20 % within 40 % within ...
        assert set(subset.tolist()) <= set(pool.tolist())
        previous = set(subset.tolist())
    assert np.array_equal(fraction_subset(pool, 1.0, seed=9), pool)


def test_fraction_subset_ignores_input_order_and_keeps_one() -> None:
    idx = np.arange(50)
    shuffled = np.random.default_rng(0).permutation(idx)
    assert np.array_equal(fraction_subset(idx, 0.3, 1), fraction_subset(shuffled, 0.3, 1))
    assert len(fraction_subset(np.array([4, 8]), 0.01, 0)) == 1
    with pytest.raises(ValueError, match="fraction"):
        fraction_subset(idx, 0.0, 0)
    with pytest.raises(ValueError, match="empty"):
        fraction_subset(np.array([], dtype=np.int64), 0.5, 0)
