"""Product-of-Gaussians fusion, the full-covariance ellipse and calibration helpers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from training.fusion import (
    COVERAGE_MIN,
    NOMINAL,
    PRODUCT,
    ROBUST,
    coverage,
    coverage_factor,
    diag_cov,
    ellipse,
    fit_inflation,
    fuse,
    fuse_by,
    fuse_robust,
    k_for_confidence,
    mahalanobis2,
    sigma_from_rmse,
)


def test_product_of_two_gaussians_by_hand() -> None:
    # 1-D per axis: x: N(0, 1) * N(2, 1) -> N(1, 1/2); y: N(0, 4) * N(3, 1) -> N(2.4, 0.8)
    means = np.array([[[0.0, 0.0]], [[2.0, 3.0]]])
    covs = np.stack([diag_cov([[1.0, 2.0]]), diag_cov([[1.0, 1.0]])])
    mean, cov = fuse(means, covs)
    assert mean[0] == pytest.approx([1.0, 2.4])
    assert cov[0] == pytest.approx(np.array([[0.5, 0.0], [0.0, 0.8]]))


def test_fused_covariance_is_smaller_than_each_input() -> None:
    rng = np.random.default_rng(0)
    a = rng.standard_normal((2, 2))
    b = rng.standard_normal((2, 2))
    c1, c2 = a @ a.T + 0.1 * np.eye(2), b @ b.T + 0.1 * np.eye(2)
    _, cov = fuse(np.zeros((2, 1, 2)), np.stack([c1[None], c2[None]]))
    for c in (c1, c2):  # C - P is positive semi-definite: every direction shrank
        assert np.linalg.eigvalsh(c - cov[0]).min() >= -1e-12
    assert np.linalg.det(cov[0]) < min(np.linalg.det(c1), np.linalg.det(c2))


def test_absent_base_stations_are_left_out() -> None:
    means = np.array([[[0.0, 0.0], [5.0, 5.0]], [[2.0, 2.0], [9.0, 9.0]]])
    covs = np.broadcast_to(np.eye(2), (2, 2, 2, 2)).copy()
    present = np.array([[True, False], [True, True]])
    mean, cov = fuse(means, covs, present)
    assert mean[0] == pytest.approx([1.0, 1.0]) and mean[1] == pytest.approx([9.0, 9.0])
    assert cov[1] == pytest.approx(np.eye(2))  # one estimate: unchanged
    with pytest.raises(ValueError, match="at least one base station"):
        fuse(means, covs, np.array([[True, False], [True, False]]))
    with pytest.raises(ValueError, match=r"means \[K,B,2\]"):
        fuse(means[0], covs[0])


def test_ellipse_orientation_of_a_rotated_covariance() -> None:
    theta = math.radians(30.0)
    r = np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])
    cov = r @ np.diag([4.0, 1.0]) @ r.T  # major axis (sd 2) at 30 degrees
    e = ellipse(cov, 0.95)
    k = k_for_confidence(0.95)
    assert e["orientation_deg"] == pytest.approx(30.0)
    assert e["semi_major"] == pytest.approx(2.0 * k) and e["semi_minor"] == pytest.approx(k)
    assert ellipse(r @ np.diag([1.0, 4.0]) @ r.T, 0.5)["orientation_deg"] == pytest.approx(120.0)
    # axis-aligned like service.positioning.ellipse: 0 or 90 degrees
    assert ellipse(np.diag([1.0, 9.0]), 0.9)["orientation_deg"] == pytest.approx(90.0)
    assert ellipse(np.diag([9.0, 1.0]), 0.9)["orientation_deg"] == pytest.approx(0.0)
    assert k_for_confidence(1 - math.exp(-0.5)) == pytest.approx(1.0)


def test_coverage_and_inflation_on_gaussian_errors() -> None:
    rng = np.random.default_rng(1)
    covs = np.broadcast_to(diag_cov([2.0, 0.5]), (20000, 2, 2))
    errors = rng.standard_normal((20000, 2)) * [2.0, 0.5]
    assert coverage(errors, covs, 1.0) == pytest.approx(1 - math.exp(-0.5), abs=0.01)
    assert coverage(errors, covs, 2.0) == pytest.approx(1 - math.exp(-2.0), abs=0.01)
    assert fit_inflation(errors, covs) == pytest.approx(1.0, abs=0.03)
    s = fit_inflation(3.0 * errors, covs)  # errors 3x too large for their sigma: ~9
    assert s == pytest.approx(9.0, rel=0.05)
    assert coverage(3.0 * errors, covs * s, 1.0) == pytest.approx(0.393, abs=0.01)
    # enough points: a too-wide ellipse shrinks to the coverage (0.1x errors: ~0.01) ...
    assert fit_inflation(0.1 * errors, covs) == pytest.approx(0.01, rel=0.05)
    # ... below COVERAGE_MIN points the likelihood factor never shrinks
    few = slice(COVERAGE_MIN - 1)
    assert fit_inflation(0.1 * errors[few], covs[few]) == 1.0
    assert fit_inflation(3.0 * errors[few], covs[few]) == pytest.approx(
        np.mean(mahalanobis2(3.0 * errors[few], covs[few])) / 2
    )


def _heavy_tailed(n: int, seed: int) -> np.ndarray:
    """2-D Student-t errors (8 dof): the fused fingerprint errors' pattern, the likelihood
    factor holding ~46 / 87 % inside 1 / 2 sigma (docs/results/site-trust/calibration)."""
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, 2)) / np.sqrt(rng.chisquare(8, (n, 1)) / 8)


def test_coverage_factor_splits_a_heavy_tail_miss_that_the_likelihood_puts_on_1_sigma() -> None:
    errors = _heavy_tailed(20000, 2)
    covs = np.broadcast_to(np.eye(2), (20000, 2, 2))
    d2 = mahalanobis2(errors, covs)
    ml = float(np.mean(d2)) / 2
    # the likelihood factor is set by the tail: 1 sigma far over, 2 sigma under nominal
    assert coverage(errors, covs * ml, 1.0) > NOMINAL[0][1] + 0.05
    s = coverage_factor(d2)
    assert s == fit_inflation(errors, covs)  # enough points: fit_inflation uses it
    for k, share in NOMINAL:
        assert abs(coverage(errors, covs * s, k) - share) < 0.05

    # least squares over both levels: no other factor misses less
    def miss(f: float) -> float:
        return sum((coverage(errors, covs * f, k) - share) ** 2 for k, share in NOMINAL)

    assert all(miss(s) <= miss(s * r) for r in (0.8, 0.95, 0.99, 1.01, 1.05, 1.25))
    assert coverage_factor(d2[::-1]) == s  # the same distances in any order
    assert coverage_factor(4.0 * d2) == pytest.approx(4.0 * s)
    assert coverage_factor(np.zeros(COVERAGE_MIN)) == 1.0  # no error at all: left as it is
    exact = np.concatenate([np.zeros(1000), d2[:1000]])  # half the errors nil: >= 50 % inside

    def miss_d2(f: float) -> float:
        return sum((np.mean(exact / f <= k * k) - share) ** 2 for k, share in NOMINAL)

    f = coverage_factor(exact)
    assert 0 < f < np.inf and all(miss_d2(f) <= miss_d2(f * r) for r in (0.5, 0.9, 1.1, 2.0))


@pytest.mark.parametrize("d2", [[], [1.0, np.nan], [-1.0, 2.0]])
def test_coverage_factor_refuses_bad_distances(d2: list[float]) -> None:
    with pytest.raises(ValueError, match="squared distances"):
        coverage_factor(d2)


def test_sigma_from_rmse() -> None:
    assert sigma_from_rmse({"rmse_x": 1.5, "rmse_y": 0.5}) == (1.5, 0.5)
    assert sigma_from_rmse({"me": 1.0}) is None
    assert sigma_from_rmse({"rmse_x": 0.0, "rmse_y": 1.0}) is None


def test_robust_fusion_equals_the_product_when_the_stations_agree() -> None:
    means = np.array([[[1.0, 2.0]], [[1.2, 2.1]], [[0.9, 1.8]]])
    covs = np.tile(np.eye(2), (3, 1, 1, 1))
    m0, c0 = fuse(means, covs)
    m1, c1 = fuse_robust(means, covs)
    assert np.allclose(m0, m1) and np.allclose(c0, c1)
    # a lone station is its own estimate
    m, c = fuse_robust(means[:1], covs[:1] * 4.0)
    assert np.allclose(m, means[0]) and np.allclose(c, 4.0 * np.eye(2))


def test_robust_fusion_down_weights_a_confidently_wrong_station() -> None:
    truth = np.array([5.0, 5.0])
    offsets = np.array([[[0.3, -0.2]], [[-0.2, 0.4]], [[8.0, 0.0]]])
    means = truth + offsets
    covs = np.tile(np.eye(2), (3, 1, 1, 1))
    plain, _ = fuse(means, covs)
    robust, cov = fuse_robust(means, covs)
    assert np.linalg.norm(plain[0] - truth) > 2.5  # the product is pulled 8/3 m away
    assert np.linalg.norm(robust[0] - truth) < 0.8
    assert 1 / 3 < cov[0, 0, 0] < 0.5  # the outlier still counts, a little
    # absent stations stay absent; by name
    present = np.array([[True], [True], [False]])
    assert np.allclose(fuse_by(ROBUST, means, covs, present)[0], fuse(means, covs, present)[0])
    assert np.allclose(fuse_by(PRODUCT, means, covs)[0], plain)
    with pytest.raises(ValueError, match="unknown fusion method"):
        fuse_by("median", means, covs)
    with pytest.raises(ValueError, match="dof"):
        fuse_robust(means, covs, dof=0.0)
