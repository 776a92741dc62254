"""The error correlogram: recovers a known exponential field, and refuses too little data."""

from __future__ import annotations

import numpy as np
import pytest

from training.correlogram import fit_correlogram


def _field(seed: int, share: float, length: float, n: int = 1000) -> tuple[np.ndarray, ...]:
    """Errors at n random positions in a 40 x 40 m area: an exponential field of variance
    `share` plus white noise, each scaled by its own (known) sigma."""
    rng = np.random.default_rng(seed)
    pos = rng.uniform(0.0, 40.0, (n, 2))
    d = np.linalg.norm(pos[:, None] - pos[None], axis=-1)
    k = share * np.exp(-d / length) + (1.0 - share) * np.eye(n)
    chol = np.linalg.cholesky(k + 1e-9 * np.eye(n))
    unit = chol @ rng.normal(size=(n, 2))
    sigma = np.exp(rng.normal(0.0, 0.4, (n, 2)))
    covs = np.zeros((n, 2, 2))
    covs[:, 0, 0], covs[:, 1, 1] = sigma[:, 0] ** 2, sigma[:, 1] ** 2
    return pos, unit * sigma, covs


@pytest.mark.parametrize(("share", "length"), [(0.7, 2.5), (0.4, 1.0)])
def test_a_known_field_is_recovered(share: float, length: float) -> None:
    pos, err, covs = _field(2, share, length)  # one realisation: the fit varies ~0.1 by seed
    cg = fit_correlogram(pos, err, covs)
    assert cg.share == pytest.approx(share, abs=0.12)
    assert cg.length_m == pytest.approx(length, rel=0.35)
    assert cg.points == len(pos) and cg.pairs.sum() > 0
    assert cg.correlation[0] > cg.correlation[-1]


def test_independent_errors_give_no_share() -> None:
    rng = np.random.default_rng(1)
    pos = rng.uniform(0.0, 25.0, (500, 2))
    cg = fit_correlogram(pos, rng.normal(size=(500, 2)), np.tile(np.eye(2), (500, 1, 1)))
    assert cg.share < 0.08


def test_too_few_positions_are_refused() -> None:
    with pytest.raises(ValueError, match="at least 10"):
        fit_correlogram(np.zeros((3, 2)), np.zeros((3, 2)), np.tile(np.eye(2), (3, 1, 1)))
