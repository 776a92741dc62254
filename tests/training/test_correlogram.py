"""The error correlogram: recovers a known exponential field, and refuses too little data."""

from __future__ import annotations

import numpy as np
import pytest

import training.correlogram as correlogram
from training.correlogram import fit_correlogram, label_spacing, spacing_metrics


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


def test_label_spacing_is_the_median_distance_to_the_nearest_label() -> None:
    grid = np.stack(np.meshgrid(np.arange(20) * 0.4, np.arange(30) * 0.4), -1).reshape(-1, 2)
    assert label_spacing(grid) == pytest.approx(0.4)
    # several fingerprints at one surveyed point count once
    assert label_spacing(np.concatenate([grid, grid[:100]])) == pytest.approx(0.4)
    assert label_spacing(np.tile([[1.0, 2.0]], (5, 1))) is None
    assert spacing_metrics(np.tile([[1.0, 2.0]], (5, 1))) == {}
    assert spacing_metrics(grid) == {"label_spacing_m": pytest.approx(0.4)}
    with pytest.raises(ValueError, match="positions"):
        label_spacing(np.zeros((4, 3)))


def test_a_large_survey_is_measured_on_a_draw_scaled_back_to_its_density(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rng = np.random.default_rng(0)
    points = rng.uniform(0.0, 50.0, (4000, 2))
    exact = label_spacing(points)
    assert exact is not None
    # a Poisson pattern: median nearest-neighbour distance sqrt(ln 2 / (pi * density))
    assert exact == pytest.approx(np.sqrt(np.log(2) / (np.pi * 4000 / 2500)), rel=0.05)
    monkeypatch.setattr(correlogram, "SPACING_MAX_POINTS", 1000)
    drawn = label_spacing(points)
    assert drawn is not None and drawn == pytest.approx(exact, rel=0.08)
    assert label_spacing(points, seed=1) != drawn  # the draw is seeded
