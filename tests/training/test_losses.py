"""Losses: the formulas of eq. 3 and eq. 4, their units, and their input checks."""

from __future__ import annotations

import math

import pytest
import torch

from training.losses import check_loss_name, gaussian_nll, mse_loss, position_loss


def test_mse_is_mean_squared_euclidean_error() -> None:
    pos = torch.tensor([[0.0, 0.0], [1.0, 1.0]])
    truth = torch.tensor([[3.0, 4.0], [1.0, 1.0]])
    assert mse_loss(pos, truth).item() == pytest.approx(12.5)  # (25 + 0) / 2
    assert mse_loss(pos, truth, scale=5.0).item() == pytest.approx(0.5)


def test_nll_matches_torch_normal_log_prob() -> None:
    gen = torch.Generator().manual_seed(0)
    pos = torch.randn(50, 2, generator=gen) * 3
    truth = torch.randn(50, 2, generator=gen) * 3
    sigma = torch.rand(50, 2, generator=gen) + 0.1
    normal = torch.distributions.Normal(pos, sigma)
    expected = -normal.log_prob(truth).sum(dim=1).mean()  # type: ignore[no-untyped-call]
    assert gaussian_nll(pos, sigma, truth).item() == pytest.approx(expected.item(), rel=1e-5)


def test_nll_in_normalised_units_only_drops_log_scale() -> None:
    gen = torch.Generator().manual_seed(1)
    pos, truth = torch.randn(20, 2, generator=gen), torch.randn(20, 2, generator=gen)
    sigma = torch.rand(20, 2, generator=gen) + 0.5
    metres = gaussian_nll(pos, sigma, truth)
    scaled = gaussian_nll(pos, sigma, truth, scale=4.0)
    assert (metres - scaled).item() == pytest.approx(2 * math.log(4.0), rel=1e-5)


def test_nll_needs_sigma_and_names_bad_shapes() -> None:
    pos = torch.zeros(3, 2)
    with pytest.raises(ValueError, match="nll loss needs a head with sigma"):
        position_loss("nll", pos, None, pos)
    with pytest.raises(ValueError, match=r"expected \[B, 2\]"):
        mse_loss(torch.zeros(3, 3), torch.zeros(3, 3))
    with pytest.raises(ValueError, match="sigma has shape"):
        gaussian_nll(pos, torch.ones(3, 1), pos)
    with pytest.raises(ValueError, match="expected one of mse, nll"):
        check_loss_name("mae")
