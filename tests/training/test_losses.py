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


def test_beta_zero_is_the_plain_nll() -> None:
    gen = torch.Generator().manual_seed(2)
    pos, truth = torch.randn(30, 2, generator=gen), torch.randn(30, 2, generator=gen)
    sigma = torch.rand(30, 2, generator=gen) + 0.2
    plain = gaussian_nll(pos, sigma, truth, scale=2.0)
    assert gaussian_nll(pos, sigma, truth, scale=2.0, beta=0.0).item() == plain.item()
    # beta > 0 weights each axis term by (sigma / scale)^(2 beta).
    w = (sigma / 2.0).pow(1.0)
    z = (pos - truth) / sigma
    per = torch.log(sigma / 2.0) + 0.5 * z**2 + 0.5 * math.log(2 * math.pi)
    weighted = (per * w).sum(dim=1).mean()
    assert gaussian_nll(pos, sigma, truth, scale=2.0, beta=0.5).item() == pytest.approx(
        weighted.item(), rel=1e-6
    )
    with pytest.raises(ValueError, match=r"beta=1\.5"):
        gaussian_nll(pos, sigma, truth, beta=1.5)


def test_beta_nll_gradient_check() -> None:
    """Analytic gradients of the beta-NLL match finite differences (the weight carries no
    gradient: it is a constant at each evaluation point, so the check uses a fixed sigma
    for the weight by construction of `detach`)."""
    gen = torch.Generator().manual_seed(3)
    pos = torch.randn(6, 2, generator=gen, dtype=torch.float64, requires_grad=True)
    truth = torch.randn(6, 2, generator=gen, dtype=torch.float64)
    raw = torch.randn(6, 2, generator=gen, dtype=torch.float64)
    sigma0 = torch.nn.functional.softplus(raw) + 0.3
    weight = sigma0.pow(2 * 0.5)  # the stopped-gradient weight at this point

    def loss(p: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        return gaussian_nll(p, s, truth, beta=0.5)

    sigma = sigma0.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda p: loss(p, sigma0), (pos,))
    # d/d sigma: the weight is held fixed, so the gradient is weight * d NLL / d sigma.
    out = loss(pos, sigma)
    (g_sigma,) = torch.autograd.grad(out, sigma)
    z2 = ((pos - truth) / sigma0).square()
    expected = weight * (1.0 / sigma0 - z2 / sigma0) / len(pos)
    assert torch.allclose(g_sigma, expected.detach(), rtol=1e-9)
    # and the position gradient is the plain NLL's, scaled per axis by the weight
    (g_pos,) = torch.autograd.grad(loss(pos, sigma0), pos)
    (g_plain,) = torch.autograd.grad(gaussian_nll(pos, sigma0, truth), pos)
    assert torch.allclose(g_pos, g_plain * weight, rtol=1e-9)
