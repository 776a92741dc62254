"""Positioning metrics, all in metres: error statistics, Gaussian CRPS, calibration, NLL.

`evaluate` is the one function that training reports, the CLI, the
experiments and site adaptation all call, so every number in the project is
computed the same way. Everything is done in float64 numpy.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
import torch

if TYPE_CHECKING:
    from training.config import TrainConfig
    from training.data.fingerprints import Fingerprints
    from training.nets import Backbone, Head

Array = npt.NDArray[np.float64]

CALIBRATION_EXPECTED: dict[str, float] = {
    "within_1sigma": 1.0 - math.exp(-0.5),  # 39.35 %: chi-square with 2 dof at 1
    "within_2sigma": 1.0 - math.exp(-2.0),  # 86.47 %: chi-square with 2 dof at 4
}
"""Share of points inside the k-sigma ellipse of a 2-D axis-aligned Gaussian."""

_INV_SQRT_PI = 1.0 / math.sqrt(math.pi)
_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


def as_positions(value: Any, name: str) -> Array:
    """Convert a [N, 2] tensor or array-like to float64 numpy, or raise naming the argument."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    arr = np.asarray(value, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise ValueError(f"{name} has shape {arr.shape}: expected [N, 2]")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or infinite values")
    return arr


def euclidean_errors(position: Any, truth: Any) -> Array:
    """Per-point Euclidean distance [N] between predicted and true positions."""
    pos, tru = _pair(position, truth)
    return np.asarray(np.hypot(pos[:, 0] - tru[:, 0], pos[:, 1] - tru[:, 1]), dtype=np.float64)


def crps_gaussian(mu: Any, sigma: Any, truth: Any) -> Array:
    """Closed-form CRPS of N(mu, sigma^2) at ``truth`` (appendix eq. 9), elementwise.

    ``sigma * (z * (2 Phi(z) - 1) + 2 phi(z) - 1/sqrt(pi))`` with ``z = (y - mu) / sigma``.
    """
    m = np.asarray(mu, dtype=np.float64)
    s = np.asarray(sigma, dtype=np.float64)
    y = np.asarray(truth, dtype=np.float64)
    z = (y - m) / s
    pdf = np.exp(-0.5 * z * z) / math.sqrt(2.0 * math.pi)
    cdf = 0.5 * (1.0 + _erf(z / math.sqrt(2.0)))
    return np.asarray(s * (z * (2.0 * cdf - 1.0) + 2.0 * pdf - _INV_SQRT_PI), dtype=np.float64)


def evaluate(position: Any, sigma: Any | None, truth: Any) -> dict[str, float]:
    """All metrics of one prediction set, in metres.

    Always: ``n``, ``me`` (mean Euclidean error), ``median``, ``p90``. With a
    ``sigma`` [N, 2] (1-sigma per axis, NLL models): ``crps`` (mean over points
    and over x and y), ``nll`` (mean per point, summed over x and y, in metres),
    and calibration ``within_1sigma`` / ``within_2sigma``: the share of points
    with ``(dx/sx)^2 + (dy/sy)^2 <= k^2`` (expected 0.393 and 0.865, see
    `CALIBRATION_EXPECTED`).
    """
    pos, tru = _pair(position, truth)
    if len(pos) == 0:
        raise ValueError("cannot evaluate an empty prediction set: got 0 points")
    err = np.hypot(pos[:, 0] - tru[:, 0], pos[:, 1] - tru[:, 1])
    out: dict[str, float] = {
        "n": float(len(err)),
        "me": float(err.mean()),
        "median": float(np.median(err)),
        "p90": float(np.percentile(err, 90)),
    }
    if sigma is None:
        return out
    sig = as_positions(sigma, "sigma")
    if sig.shape != pos.shape:
        raise ValueError(f"sigma has shape {sig.shape}: expected {pos.shape} like position")
    if np.any(sig <= 0):
        raise ValueError("sigma must be positive everywhere")
    z = (pos - tru) / sig
    r2 = (z * z).sum(axis=1)
    out["crps"] = float(crps_gaussian(pos, sig, tru).mean())
    out["nll"] = float(nll_per_point(pos, sig, tru).mean())
    out["within_1sigma"] = float((r2 <= 1.0).mean())
    out["within_2sigma"] = float((r2 <= 4.0).mean())
    return out


def nll_per_point(position: Any, sigma: Any, truth: Any) -> Array:
    """Gaussian NLL of each point in metres, summed over x and y (axis-aligned sigma)."""
    pos, tru = _pair(position, truth)
    sig = as_positions(sigma, "sigma")
    z = (pos - tru) / sig
    return np.asarray((np.log(sig) + 0.5 * z * z + _HALF_LOG_2PI).sum(axis=1))


def evaluate_model(backbone: Backbone, head: Head, data: Fingerprints) -> dict[str, float]:
    """`evaluate` of one model (backbone + head) on labelled fingerprints (metres)."""
    from training.fit import predict

    pos, sigma = predict(backbone, head, torch.from_numpy(np.ascontiguousarray(data.csi)))
    return evaluate(pos, sigma, data.pos)


def finish_head(
    backbone: Backbone,
    head: Head,
    val: Fingerprints,
    config: TrainConfig,
    *,
    reference: Fingerprints | None = None,
) -> dict[str, float]:
    """After training: calibrate the head's sigma on ``val`` (if configured; with its
    neighbour terms given the head's training fingerprints ``reference``), then its
    validation metrics, with the calibration factors when they were fitted and the
    neighbour terms when they are on (``neighbour_rows``, ``_blend``, ``_weight``: an
    operator reads from the manifest what the head does)."""
    from training.calibration import calibrate_sigma

    scale = (
        calibrate_sigma(backbone, head, val, reference=reference, seed=config.seed)
        if config.calibrate_sigma
        else None
    )
    metrics = evaluate_model(backbone, head, val)
    if scale is not None:
        metrics["sigma_scale_x"], metrics["sigma_scale_y"] = scale
    if rows := int(head.ref_features.shape[0]):
        metrics["neighbour_rows"] = float(rows)
        metrics["neighbour_blend"] = float(head.ref_blend)
        metrics["neighbour_weight"] = float(head.ref_weight)
    return metrics


def _pair(position: Any, truth: Any) -> tuple[Array, Array]:
    pos = as_positions(position, "position")
    tru = as_positions(truth, "truth")
    if pos.shape != tru.shape:
        raise ValueError(f"truth has shape {tru.shape}: expected {pos.shape} like position")
    return pos, tru


def _erf(x: Array) -> Array:
    # numpy has no vectorised erf and scipy is not a dependency; torch's is exact
    # to float64 precision.
    flat = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float64).reshape(-1))
    return np.asarray(torch.special.erf(flat).numpy().reshape(np.shape(x)))
