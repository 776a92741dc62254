"""Calibration on validation data: one factor per axis on an NLL head's sigma, and the
head's neighbour terms.

Why: an NLL head trained to convergence on a small site is over-confident (the
default sites put 25 % of test points inside the 1-sigma ellipse, not 39.3 %),
and operators read sigma as the error to expect. For a Gaussian with per-axis
sigma, the factor that minimises the NLL of held-out points has a closed form,
``s_k = sqrt(mean((err_k / sigma_k)^2))`` (temperature scaling for regression).
The factor changes no position (the neighbour blend below does) and lives in the head
(`Head.sigma_scale`), so the exported ONNX model serves calibrated sigmas. With
`fusion.COVERAGE_MIN` validation points or more, one more factor for both axes fits the
1- and 2-sigma coverage instead (`fusion.coverage_factor`): the errors' tails are heavier
than a Gaussian's, so the likelihood factor leaves 45-48 % inside 1 sigma at 3,000 labels.

Given the labelled fingerprints the head was trained on (``reference``) and
`REF_MIN_VAL` validation points, the head's neighbour terms are fitted first (`Head`):
the share ``blend`` by which the position moves to the k-NN estimate among them in the
backbone's feature space (the validation ME decides, 0 keeps the head's position), then
the distance term that widens sigma where a fingerprint is far from all of them (there
the head interpolates and errs more than its sigma says; the validation NLL decides).
docs/results/transfer/distance-sigma: the term lowered the test NLL by 0.02-0.12 nats
with the default recipe; the blend, "Blending in the neighbours' positions".
"""

from __future__ import annotations

import logging
import math

import numpy as np
import numpy.typing as npt
import torch

from training.data.fingerprints import Fingerprints
from training.fusion import COVERAGE_MIN, coverage_factor
from training.nets import (
    REF_NEIGHBOURS,
    Backbone,
    Head,
    neighbour_position,
    reference_neighbours,
)
from training.novelty import backbone_features

log = logging.getLogger(__name__)

MIN_SAMPLES = 10
"""Fewest validation points a factor is fitted on; below it sigma stays as trained."""


REF_MIN_VAL = 50
"""Fewest validation points the neighbour terms are fitted on; below, they stay off."""

REF_MAX = 2048
"""Most labelled fingerprints kept as the reference (a seeded draw beyond): 1 MB of
features in the head and its ONNX graph, and one [B, 2048] matmul per request."""

REF_BLENDS = tuple(round(0.1 * i, 1) for i in range(11))
"""The shares of the way to the neighbours' position tried (0 = the head's position)."""

REF_WEIGHTS = tuple(round(0.05 * i, 2) for i in range(41))
"""The distance term's weights tried (0 = off, up to sigma ~ d^2)."""

Floats = npt.NDArray[np.float64]


def nll_factor(err: Floats, sigma: Floats) -> Floats:
    """The NLL-optimal factor per axis on ``sigma`` [N, 2] for errors ``err`` [N, 2],
    ``sqrt(mean((err / sigma)^2))`` (float64, no checks: `fit_sigma_scale` validates)."""
    scale: Floats = np.sqrt(np.mean(np.square(err / sigma), axis=0))
    # A perfect fit (all errors 0) would give 0, a sigma of 0: keep a tiny positive floor.
    return np.maximum(scale, 1e-6)


def fit_sigma_scale(err: npt.ArrayLike, sigma: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """The per-axis factor on ``sigma`` [N, 2] for errors ``err`` [N, 2] (metres): NLL-optimal
    per axis, then with `COVERAGE_MIN` points or more both axes scaled together to the
    nominal 1- and 2-sigma coverage (module docstring)."""
    e = np.asarray(err, dtype=np.float64)
    s = np.asarray(sigma, dtype=np.float64)
    if e.ndim != 2 or e.shape[1] != 2 or e.shape != s.shape or len(e) == 0:
        raise ValueError(f"err and sigma must both be [N >= 1, 2], got {e.shape} and {s.shape}")
    if not (np.isfinite(e).all() and np.isfinite(s).all() and (s > 0).all()):
        raise ValueError("err must be finite and sigma finite and positive")
    scale = nll_factor(e, s)
    if len(e) >= COVERAGE_MIN:
        d2 = np.sum(np.square(e / (s * scale)), axis=1)
        scale = np.maximum(scale * np.sqrt(coverage_factor(d2)), 1e-6)
    return scale


def fit_distance_weight(err: Floats, sigma: Floats, log_d: Floats) -> tuple[float, float]:
    """(weight, centre) of the distance term ``exp(weight * (log_d - centre))`` on
    ``sigma`` [N, 2] that, with the per-axis `nll_factor` on top, gives the errors ``err``
    [N, 2] the lowest Gaussian NLL; centre is the median of ``log_d`` [N]. The weights are
    `REF_WEIGHTS`, the smallest of equal ones wins (0: the term does not pay)."""
    centre = float(np.median(log_d))
    best, chosen = math.inf, 0.0
    for weight in REF_WEIGHTS:
        widened = sigma * np.exp(weight * (log_d - centre))[:, None]
        # NLL up to a constant, each axis at its likelihood factor s: sum log s + mean log sigma
        nll = float(np.log(nll_factor(err, widened)).sum() + np.log(widened).sum(axis=1).mean())
        if nll < best - 1e-12:
            best, chosen = nll, weight
    return chosen, centre


def fit_blend(head_pos: Floats, nearby: Floats, truth: Floats) -> float:
    """The share of `REF_BLENDS` by which moving ``head_pos`` [N, 2] towards ``nearby``
    [N, 2] gives the lowest mean error against ``truth`` [N, 2]; the smallest of equal ones."""
    best, chosen = math.inf, 0.0
    for blend in REF_BLENDS:
        me = float(np.linalg.norm(head_pos + blend * (nearby - head_pos) - truth, axis=1).mean())
        if me < best - 1e-12:
            best, chosen = me, blend
    return chosen


def _reference(train: Fingerprints, seed: int) -> Fingerprints:
    """At most `REF_MAX` of ``train``'s fingerprints (a seeded draw)."""
    if len(train) <= REF_MAX:
        return train
    keep = np.sort(np.random.default_rng(seed).choice(len(train), REF_MAX, replace=False))
    return train.subset(keep)


@torch.no_grad()
def calibrate_sigma(
    backbone: Backbone,
    head: Head,
    val: Fingerprints,
    *,
    min_samples: int = MIN_SAMPLES,
    reference: Fingerprints | None = None,
    seed: int = 0,
) -> tuple[float, float] | None:
    """Fit ``head.sigma_scale`` on ``val`` and, given the head's training fingerprints
    (``reference``) and `REF_MIN_VAL` validation points, the neighbour terms (module
    docstring); returns the factors (x, y), or None when the head has no sigma (MSE) or
    ``val`` has fewer than ``min_samples`` points (too few to trust). ``seed`` draws the
    reference when ``reference`` has more than `REF_MAX` fingerprints.
    """
    head.reset_calibration()
    if head.loss != "nll":
        return None
    if len(val) < min_samples:
        log.info("sigma not calibrated: %d validation points, need %d", len(val), min_samples)
        return None
    # One backbone pass over validation: the head's input and the neighbour search's.
    val_features = torch.from_numpy(backbone_features(backbone, val.csi))
    head.eval()
    pos_t, sigma_t = head(val_features.to(head.sigma_scale))
    assert sigma_t is not None  # an nll head always gives sigma
    pos = pos_t.cpu().numpy().astype(np.float64)
    sigma = sigma_t.cpu().numpy().astype(np.float64)
    truth = val.pos.astype(np.float64)
    if reference is not None and len(val) >= REF_MIN_VAL and len(reference) >= REF_NEIGHBOURS:
        ref = _reference(reference, seed)  # >= REF_NEIGHBOURS rows
        ref_features = torch.from_numpy(backbone_features(backbone, ref.csi))
        ref_pos = torch.from_numpy(ref.pos.astype(np.float64))
        distance, index = reference_neighbours(val_features, ref_features)
        nearby = neighbour_position(distance, index, ref_pos).numpy()
        blend = fit_blend(pos, nearby, truth)
        pos = pos + blend * (nearby - pos)
        log_d = distance.mean(dim=1).log().numpy()
        weight, centre = fit_distance_weight(pos - truth, sigma, log_d)
        if weight > 0 or blend > 0:
            head.set_reference(ref_features, ref_pos, blend=blend, weight=weight, centre=centre)
            sigma = sigma * np.exp(weight * (log_d - centre))[:, None]
        log.info(
            "neighbour terms on %d reference points: blend %.1f, sigma weight %.2f",
            len(ref),
            blend,
            weight,
        )
    err = pos - truth
    scale = fit_sigma_scale(err, sigma)
    head.sigma_scale.copy_(torch.from_numpy(scale).to(head.sigma_scale.dtype))
    x, y = (float(v) for v in scale)
    log.info("sigma calibrated on %d validation points: x %.3f, y %.3f", len(val), x, y)
    return x, y
