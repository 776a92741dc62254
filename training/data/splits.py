"""Deterministic index splits: train/val/test, K folds, and nested data fractions.

All randomness comes from ``numpy.random.Generator(PCG64(seed))``, whose stream
numpy keeps stable across versions and platforms, so a seed names the same split
on every machine. Returned index arrays are sorted (int64), which also keeps
lazy HDF5 reads sequential.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    from training.data.fingerprints import Fingerprints

__all__ = [
    "Split",
    "fraction_subset",
    "kfold",
    "split_train_val",
    "train_val_indices",
    "train_val_test",
]

IndexArray = npt.NDArray[np.int64]


class Split(NamedTuple):
    """Disjoint sorted index arrays that together cover `range(n)`."""

    train: IndexArray
    val: IndexArray
    test: IndexArray


def _rng(seed: int) -> np.random.Generator:
    if not isinstance(seed, int | np.integer) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    return np.random.Generator(np.random.PCG64(int(seed)))


def _check_n(n: int) -> int:
    if not isinstance(n, int | np.integer) or n < 1:
        raise ValueError(f"n must be a positive number of samples, got {n!r}")
    return int(n)


def _sorted(idx: npt.NDArray[np.integer]) -> IndexArray:
    return np.sort(idx.astype(np.int64))


def train_val_test(n: int, val: float, test: float, seed: int) -> Split:
    """Split `range(n)` at random into train/val/test with fractions `val` and `test`.

    Sizes are `round(val * n)` and `round(test * n)`; train gets the rest and is
    never empty.
    """
    n = _check_n(n)
    for name, frac in (("val", val), ("test", test)):
        if not 0.0 <= frac < 1.0:
            raise ValueError(f"{name} fraction must be in [0, 1), got {frac!r}")
    n_val, n_test = round(val * n), round(test * n)
    if n_val + n_test >= n:
        raise ValueError(
            f"val={val} and test={test} leave no training samples out of n={n}; "
            "expected val + test < 1 with at least one sample left"
        )
    perm = _rng(seed).permutation(n)
    return Split(
        train=_sorted(perm[n_test + n_val :]),
        val=_sorted(perm[n_test : n_test + n_val]),
        test=_sorted(perm[:n_test]),
    )


def kfold(n: int, k: int, seed: int) -> list[tuple[IndexArray, IndexArray]]:
    """K-fold cross-validation over `range(n)`: a list of k (train_idx, val_idx).

    The val parts partition `range(n)`, differ in size by at most one, and each
    train part is the complement of its val part.
    """
    n = _check_n(n)
    if not isinstance(k, int | np.integer) or not 2 <= k <= n:
        raise ValueError(f"k must be an int in [2, n={n}], got {k!r}")
    perm = _rng(seed).permutation(n)
    folds = np.array_split(perm, int(k))
    out: list[tuple[IndexArray, IndexArray]] = []
    for i, val_part in enumerate(folds):
        train_part = np.concatenate([f for j, f in enumerate(folds) if j != i])
        out.append((_sorted(train_part), _sorted(val_part)))
    return out


def fraction_subset(idx: npt.ArrayLike, fraction: float, seed: int) -> IndexArray:
    """A random `fraction` of the indices `idx` (at least one), sorted.

    Nested by construction: for the same `idx` and `seed`, the subset for a smaller
    fraction is contained in the subset for a larger one (both are prefixes of one
    seeded permutation), so the data-fraction experiments only ever add samples.
    """
    values = np.asarray(idx)
    if values.ndim != 1 or (values.size and values.dtype.kind not in "iu"):
        raise ValueError(f"idx must be a 1-D int array, got shape {values.shape} {values.dtype}")
    if values.size == 0:
        raise ValueError("idx is empty; expected at least one index to draw from")
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction!r}")
    count = max(1, round(fraction * values.size))
    # Permute the sorted values, so the subset does not depend on the input order.
    base = np.sort(values.astype(np.int64))
    perm = _rng(seed).permutation(base.size)
    return np.sort(base[perm[:count]])


def train_val_indices(n: int, val_fraction: float, seed: int) -> tuple[IndexArray, IndexArray]:
    """Sorted (train, validation) rows of a seeded random split, at least one row each."""
    if n < 2:
        raise ValueError(f"need at least 2 samples to split off validation, got {n}")
    val = min(max(val_fraction, 1.0 / n), (n - 1) / n)
    split = train_val_test(n, val, 0.0, seed)
    return split.train, split.val


def split_train_val(
    data: Fingerprints, val_fraction: float, seed: int
) -> tuple[Fingerprints, Fingerprints]:
    """A seeded random train/validation split of fingerprints (at least one sample each)."""
    train, val = train_val_indices(len(data), val_fraction, seed)
    return data.subset(train), data.subset(val)
