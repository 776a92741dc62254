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
"""

from __future__ import annotations

import logging

import numpy as np
import numpy.typing as npt
import torch

from training.data.fingerprints import Fingerprints
from training.fit import predict
from training.fusion import COVERAGE_MIN, coverage_factor
from training.nets import Backbone, Head

log = logging.getLogger(__name__)

MIN_SAMPLES = 10
"""Fewest validation points a factor is fitted on; below it sigma stays as trained."""


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


@torch.no_grad()
def calibrate_sigma(
    backbone: Backbone, head: Head, val: Fingerprints, *, min_samples: int = MIN_SAMPLES
) -> tuple[float, float] | None:
    """Fit ``head.sigma_scale`` on ``val``; returns the factors (x, y), or None when the head
    has no sigma (MSE) or ``val`` has fewer than ``min_samples`` points (too few to trust).
    """
    head.sigma_scale.fill_(1.0)
    if head.loss != "nll":
        return None
    if len(val) < min_samples:
        log.info("sigma not calibrated: %d validation points, need %d", len(val), min_samples)
        return None
    pos, sigma = predict(backbone, head, torch.from_numpy(np.ascontiguousarray(val.csi)))
    assert sigma is not None  # an nll head always gives sigma
    scale = fit_sigma_scale(pos.numpy() - val.pos, sigma.numpy())
    head.sigma_scale.copy_(torch.from_numpy(scale).to(head.sigma_scale.dtype))
    x, y = (float(v) for v in scale)
    log.info("sigma calibrated on %d validation points: x %.3f, y %.3f", len(val), x, y)
    return x, y
