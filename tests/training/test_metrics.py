"""Metrics: error statistics, CRPS against independent estimates, calibration, NLL."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scoringrules
import torch

from training.metrics import CALIBRATION_EXPECTED, crps_gaussian, euclidean_errors, evaluate


def test_error_statistics() -> None:
    truth = np.zeros((10, 2))
    pos = np.stack([np.arange(10.0), np.zeros(10)], axis=1)  # errors 0..9
    m = evaluate(pos, None, truth)
    assert m["me"] == pytest.approx(4.5)
    assert m["median"] == pytest.approx(4.5)
    assert m["p90"] == pytest.approx(8.1)
    assert m["n"] == 10
    assert "crps" not in m
    assert euclidean_errors([[3.0, 4.0]], [[0.0, 0.0]])[0] == pytest.approx(5.0)


def test_accepts_torch_tensors() -> None:
    m = evaluate(torch.ones(4, 2), torch.ones(4, 2), torch.zeros(4, 2))
    assert m["me"] == pytest.approx(math.sqrt(2))


def test_crps_matches_scoringrules() -> None:
    rng = np.random.default_rng(0)
    mu, sigma, y = rng.normal(size=200), rng.uniform(0.1, 3, 200), rng.normal(size=200) * 2
    ours = crps_gaussian(mu, sigma, y)
    ref = np.asarray(scoringrules.crps_normal(y, mu, sigma))
    np.testing.assert_allclose(ours, ref, rtol=1e-9, atol=1e-12)


def test_crps_matches_monte_carlo() -> None:
    # CRPS(F, y) = E|X - y| - E|X - X'| / 2 with X, X' ~ F.
    rng = np.random.default_rng(1)
    mu, sigma, y = 1.5, 0.7, 0.4
    x1, x2 = rng.normal(mu, sigma, 400_000), rng.normal(mu, sigma, 400_000)
    mc = np.abs(x1 - y).mean() - 0.5 * np.abs(x1 - x2).mean()
    assert float(crps_gaussian(mu, sigma, y)) == pytest.approx(mc, rel=5e-3)


def test_evaluate_crps_is_mean_over_axes() -> None:
    pos, sig, tru = np.array([[0.0, 1.0]]), np.array([[1.0, 2.0]]), np.array([[0.5, -1.0]])
    expected = 0.5 * (crps_gaussian(0.0, 1.0, 0.5) + crps_gaussian(1.0, 2.0, -1.0))
    assert evaluate(pos, sig, tru)["crps"] == pytest.approx(float(expected))


def test_calibration_on_samples_from_the_predicted_gaussian() -> None:
    rng = np.random.default_rng(2)
    n = 20_000
    pos = rng.uniform(-10, 10, (n, 2))
    sig = rng.uniform(0.2, 3.0, (n, 2))
    truth = pos + sig * rng.standard_normal((n, 2))
    m = evaluate(pos, sig, truth)
    assert m["within_1sigma"] == pytest.approx(CALIBRATION_EXPECTED["within_1sigma"], abs=0.015)
    assert m["within_2sigma"] == pytest.approx(CALIBRATION_EXPECTED["within_2sigma"], abs=0.015)
    assert CALIBRATION_EXPECTED["within_1sigma"] == pytest.approx(0.393, abs=1e-3)
    assert CALIBRATION_EXPECTED["within_2sigma"] == pytest.approx(0.865, abs=1e-3)
    # Mean NLL of a 2-D standard normal in whitened units is log(2 pi) + 1.
    expected_nll = math.log(2 * math.pi) + 1 + np.log(sig).sum(axis=1).mean()
    assert m["nll"] == pytest.approx(expected_nll, abs=0.03)


def test_overconfident_sigmas_show_in_calibration() -> None:
    rng = np.random.default_rng(3)
    pos = np.zeros((5000, 2))
    truth = rng.standard_normal((5000, 2)) * 2.0
    m = evaluate(pos, np.ones((5000, 2)), truth)  # claims 1 m, truly 2 m
    assert m["within_1sigma"] < 0.2


def test_bad_input_is_named() -> None:
    with pytest.raises(ValueError, match=r"position has shape \(3,\): expected \[N, 2\]"):
        evaluate(np.zeros(3), None, np.zeros(3))
    with pytest.raises(ValueError, match="truth has shape"):
        evaluate(np.zeros((3, 2)), None, np.zeros((4, 2)))
    with pytest.raises(ValueError, match="sigma must be positive"):
        evaluate(np.zeros((3, 2)), np.zeros((3, 2)), np.zeros((3, 2)))
    with pytest.raises(ValueError, match="NaN"):
        evaluate(np.full((3, 2), np.nan), None, np.zeros((3, 2)))
    with pytest.raises(ValueError, match="empty"):
        evaluate(np.zeros((0, 2)), None, np.zeros((0, 2)))
