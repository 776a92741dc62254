"""The blocked k-nearest search against a brute-force one."""

from __future__ import annotations

import numpy as np
import pytest

from training import neighbours
from training.neighbours import k_nearest


def _brute(
    x: np.ndarray, ref: np.ndarray, k: int, leave_out: bool
) -> tuple[np.ndarray, np.ndarray]:
    d = np.sqrt(((x[:, None, :] - ref[None, :, :]) ** 2).sum(axis=2))
    if leave_out:
        np.fill_diagonal(d, np.inf)
    index = np.argsort(d, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(d, index, axis=1), index


@pytest.mark.parametrize("k", [1, 4])
@pytest.mark.parametrize("leave_out", [False, True])
def test_matches_brute_force_across_blocks(
    monkeypatch: pytest.MonkeyPatch, k: int, leave_out: bool
) -> None:
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(57, 3))
    x = ref if leave_out else rng.normal(size=(41, 3))
    whole = k_nearest(x, ref, k, leave_out=leave_out)
    monkeypatch.setattr(neighbours, "BLOCK_ENTRIES", 3 * 57)  # blocks of 3 rows, a short last one
    blocked = k_nearest(x, ref, k, leave_out=leave_out)
    dist, index = _brute(x, ref, k, leave_out)
    for got in (whole, blocked):
        np.testing.assert_array_equal(got[1], index)
        np.testing.assert_allclose(got[0], dist, rtol=1e-9, atol=1e-9)
    if leave_out:
        assert not (index == np.arange(len(x))[:, None]).any()


def test_ties_go_to_the_lower_index_and_duplicates_are_neighbours() -> None:
    ref = np.array([[1.0, 0.0], [0.0, 0.0], [-1.0, 0.0], [0.0, 0.0]])
    dist, index = k_nearest(np.zeros((1, 2)), ref, 3)
    assert index.tolist() == [[1, 3, 0]]
    np.testing.assert_allclose(dist, [[0.0, 0.0, 1.0]])
    # left out: row 1's twin (row 3) is its nearest, at distance 0
    dist, index = k_nearest(ref, ref, 1, leave_out=True)
    assert index[:, 0].tolist() == [1, 3, 1, 1]
    np.testing.assert_allclose(dist[:, 0], [1.0, 0.0, 1.0, 0.0])


def test_float32_stays_float32_and_mixed_input_is_float64() -> None:
    x = np.random.default_rng(1).normal(size=(10, 4)).astype(np.float32)
    assert k_nearest(x, x, 2, leave_out=True)[0].dtype == np.float32
    assert k_nearest(x, x.astype(np.float64), 2)[0].dtype == np.float64
    assert k_nearest(x.astype(int), x.astype(int), 1)[0].dtype == np.float64


@pytest.mark.parametrize(
    ("x", "ref", "k", "leave_out", "match"),
    [
        (np.zeros((3, 2)), np.zeros((4, 3)), 1, False, "expected x"),
        (np.zeros(3), np.zeros((4, 3)), 1, False, "expected x"),
        (np.zeros((3, 2)), np.zeros((4, 2)), 1, True, "leave_out"),
        (np.zeros((3, 2)), np.zeros((4, 2)), 5, False, "k = 5: expected 1 to 4"),
        (np.zeros((4, 2)), np.zeros((4, 2)), 4, True, "k = 4: expected 1 to 3"),
        (np.zeros((4, 2)), np.zeros((4, 2)), 0, False, "k = 0"),
    ],
)
def test_refuses_what_it_cannot_search(
    x: np.ndarray, ref: np.ndarray, k: int, leave_out: bool, match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        k_nearest(x, ref, k, leave_out=leave_out)
