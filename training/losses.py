"""Training losses: MSE (paper eq. 3) and Gaussian NLL with per-axis sigma (eq. 4).

Units: the losses take positions and sigmas in metres together with the site's
position scale (the head's ``pos_scale`` buffer) and compute in *normalised*
units, i.e. metres divided by that scale. A site 10 m across and one 100 m
across then produce losses of the same size, so one learning rate and one
early-stopping rule fit every site. For the NLL this only drops the constant
``log(scale)`` term, so its gradients equal the NLL in metres; for the MSE it is
a constant factor ``1 / scale**2``. Metrics (``training.metrics``) are always in
metres.
"""

from __future__ import annotations

import math

import torch

from training.config import LOSSES, LossName, check_loss_name

__all__ = [
    "LOSSES",
    "LossName",
    "batched_position_loss",
    "check_loss_name",
    "gaussian_nll",
    "mse_loss",
    "position_loss",
]

_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


def mse_loss(
    position: torch.Tensor, truth: torch.Tensor, scale: torch.Tensor | float = 1.0
) -> torch.Tensor:
    """Mean over the batch of the squared Euclidean error (eq. 3), in normalised units.

    ``position`` and ``truth`` are [B, 2] in metres; ``scale`` broadcasts against
    them (a scalar or per-axis [2]).
    """
    _check_pair(position, truth)
    err = (position - truth) / scale
    return err.square().sum(dim=1).mean()


def gaussian_nll(
    position: torch.Tensor,
    sigma: torch.Tensor,
    truth: torch.Tensor,
    scale: torch.Tensor | float = 1.0,
    beta: float = 0.0,
) -> torch.Tensor:
    """Mean over the batch of the axis-aligned Gaussian NLL (eq. 4), in normalised units.

    Per point: sum over x and y of ``log(sigma) + (err / sigma)**2 / 2 + log(2 pi) / 2``.
    ``sigma`` [B, 2] is the 1-sigma per axis in metres and must be positive (the
    head guarantees a floor).

    ``beta`` > 0 gives the beta-NLL of Seitzer et al. (ICLR 2022): each axis term
    is weighted by ``sigma**(2 beta)`` (normalised units) with the gradient stopped
    through the weight. The plain NLL lets a network give up on hard points by
    growing their sigma, which on small data ends at the centroid; the weight
    keeps those points' position gradient alive. ``beta=0`` is the plain NLL.
    """
    _check_pair(position, truth)
    if sigma.shape != position.shape:
        raise ValueError(
            f"sigma has shape {tuple(sigma.shape)}: expected {tuple(position.shape)} like position"
        )
    return _nll_per_axis(position, sigma, truth, scale, beta).sum(dim=1).mean()


def _nll_per_axis(
    position: torch.Tensor,
    sigma: torch.Tensor,
    truth: torch.Tensor,
    scale: torch.Tensor | float,
    beta: float,
) -> torch.Tensor:
    """The (beta-weighted) NLL per point and axis in normalised units, any leading shape."""
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta={beta}, expected in [0, 1]")
    z = (position - truth) / sigma
    norm_sigma = sigma / scale
    per_axis = torch.log(norm_sigma) + 0.5 * z.square() + _HALF_LOG_2PI
    if beta > 0:
        per_axis = per_axis * norm_sigma.detach().pow(2.0 * beta)
    return per_axis


def position_loss(
    loss: LossName,
    position: torch.Tensor,
    sigma: torch.Tensor | None,
    truth: torch.Tensor,
    scale: torch.Tensor | float = 1.0,
    beta: float = 0.0,
) -> torch.Tensor:
    """Dispatch on the loss name; the NLL needs the head's sigma output (``beta``: beta-NLL)."""
    if loss == "mse":
        return mse_loss(position, truth, scale)
    if sigma is None:
        raise ValueError("the nll loss needs a head with sigma outputs (out=4); got none")
    return gaussian_nll(position, sigma, truth, scale, beta)


def batched_position_loss(
    loss: LossName,
    position: torch.Tensor,
    sigma: torch.Tensor | None,
    truth: torch.Tensor,
    scale: torch.Tensor,
    beta: float = 0.0,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """`position_loss` of k environments at once: [k, B, 2] tensors -> one loss per env [k].

    ``scale`` [k] is each environment's position scale; ``mask`` [k, B] (bool) marks the
    real samples when environments with fewer than B samples were padded. Each
    environment's value equals `position_loss` on its own (unpadded) batch.
    """
    if position.ndim != 3 or position.shape[-1] != 2 or truth.shape != position.shape:
        raise ValueError(
            f"position {tuple(position.shape)} and truth {tuple(truth.shape)}: "
            "expected both [k, B, 2]"
        )
    s = scale.reshape(-1, 1, 1)
    if loss == "mse":
        per_point = ((position - truth) / s).square().sum(dim=-1)
    else:
        if sigma is None:
            raise ValueError("the nll loss needs a head with sigma outputs (out=4); got none")
        per_point = _nll_per_axis(position, sigma, truth, s, beta).sum(dim=-1)
    if mask is None:
        return per_point.mean(dim=1)
    weights = mask.to(per_point.dtype)
    return (per_point * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1.0)


def _check_pair(position: torch.Tensor, truth: torch.Tensor) -> None:
    if position.ndim != 2 or position.shape[1] != 2:
        raise ValueError(f"position has shape {tuple(position.shape)}: expected [B, 2]")
    if truth.shape != position.shape:
        raise ValueError(
            f"truth has shape {tuple(truth.shape)}: expected {tuple(position.shape)} like position"
        )
