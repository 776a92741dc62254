"""Sigma calibration: one factor per axis on an NLL head's sigma, fitted on validation data.

Why: an NLL head trained to convergence on a small site is over-confident (the
default sites put 25 % of test points inside the 1-sigma ellipse, not 39.3 %),
and operators read sigma as the error to expect. For a Gaussian with per-axis
sigma, the factor that minimises the NLL of held-out points has a closed form,
``s_k = sqrt(mean((err_k / sigma_k)^2))`` (temperature scaling for regression).
It changes no position, only sigma, and lives in the head (`Head.sigma_scale`),
so the exported ONNX model serves calibrated sigmas. With `fusion.COVERAGE_MIN`
validation points or more, one more factor for both axes fits the 1- and 2-sigma
coverage instead (`fusion.coverage_factor`): the errors' tails are heavier than a
Gaussian's, so the likelihood factor leaves 45-48 % inside 1 sigma at 3,000 labels.

Given the labelled fingerprints the head was trained on (``reference``), one more term
widens sigma where a fingerprint is far, in the backbone's feature space, from all of
them (`Head`'s distance term): there the head interpolates and errs more than its sigma
says. Its weight is fitted on validation by the same likelihood, from
`REF_MIN_VAL` points (docs/results/transfer/distance-sigma: 0.04-0.7 nats lower test NLL
on 28 of 28 runs with `select="calibrated"`, 1-sigma coverage 4 points nearer 39.3 %).
"""

from __future__ import annotations

import logging
import math

import numpy as np
import numpy.typing as npt
import torch

from training.data.fingerprints import Fingerprints
from training.fit import predict
from training.fusion import COVERAGE_MIN, coverage_factor
from training.nets import REF_NEIGHBOURS, Backbone, Head, log_reference_distance
from training.novelty import backbone_features

log = logging.getLogger(__name__)

MIN_SAMPLES = 10
"""Fewest validation points a factor is fitted on; below it sigma stays as trained."""


REF_MIN_VAL = 50
"""Fewest validation points the distance term's weight is fitted on; below, it stays off."""

REF_MAX = 2048
"""Most labelled fingerprints kept as the reference (a seeded draw beyond): 1 MB of
features in the head and its ONNX graph, and one [B, 2048] matmul per request."""

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


def _reference(train: Fingerprints, seed: int) -> npt.NDArray[np.float32]:
    """The CSI of at most `REF_MAX` of ``train``'s fingerprints (a seeded draw)."""
    if len(train) <= REF_MAX:
        return np.ascontiguousarray(train.csi)
    keep = np.sort(np.random.default_rng(seed).choice(len(train), REF_MAX, replace=False))
    return np.ascontiguousarray(train.csi[keep])


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
    (``reference``) and `REF_MIN_VAL` validation points, the distance term (module
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
    pos, sigma_t = predict(backbone, head, torch.from_numpy(np.ascontiguousarray(val.csi)))
    assert sigma_t is not None  # an nll head always gives sigma
    err = pos.numpy().astype(np.float64) - val.pos
    sigma = sigma_t.numpy().astype(np.float64)
    if reference is not None and len(val) >= REF_MIN_VAL and len(reference) >= REF_NEIGHBOURS:
        ref = torch.from_numpy(backbone_features(backbone, _reference(reference, seed)))
        val_features = torch.from_numpy(backbone_features(backbone, val.csi))
        log_d = log_reference_distance(val_features, ref, min(REF_NEIGHBOURS, len(ref))).numpy()
        weight, centre = fit_distance_weight(err, sigma, log_d)
        if weight > 0:
            head.set_reference(ref, weight, centre)
            sigma = sigma * np.exp(weight * (log_d - centre))[:, None]
        log.info("sigma's distance term: weight %.2f on %d reference points", weight, len(ref))
    scale = fit_sigma_scale(err, sigma)
    head.sigma_scale.copy_(torch.from_numpy(scale).to(head.sigma_scale.dtype))
    x, y = (float(v) for v in scale)
    log.info("sigma calibrated on %d validation points: x %.3f, y %.3f", len(val), x, y)
    return x, y
