"""Late fusion of per-BS position estimates: product of Gaussians, pure numpy.

Each base station's head gives a 2-D Gaussian (mean, sigma_x, sigma_y; the axes are
independent, so its covariance is diagonal). The BSs see the UE through different
channels and their models are trained separately, so their errors are treated as
independent, and the fused estimate is their product: in information form
``P = sum_k C_k^-1`` and ``m = P^-1 sum_k C_k^-1 m_k``, a full 2x2 covariance ``P^-1``
whose ellipse is rotated towards the geometry of the BSs that heard the UE.

MSE heads predict no sigma: their site version stores each BS's validation RMSE per
axis, which stands in as a constant sigma (`sigma_from_rmse`). A covariance that is
too small for its errors can be widened by one factor fitted on validation errors
(`fit_inflation`; fitted to the 1- and 2-sigma coverage once validation has enough
points, `coverage_factor`); the service applies it when the manifest holds one. A
multi-BS version also fits one factor per set of BSs heard (`set_key`, `inflation_for`):
fused from one BS its covariance needs about none, from all of them the most (their
errors correlate), and the every-BS factor on one BS's Gaussian left its ellipse far
too wide (docs/results/site-trust/calibration).

Robust fusion (`fuse_robust`, method ``robust_student_t``). A fingerprint model's
errors have heavy tails: now and then one BS is confidently wrong by metres (a blocked
path, a reflection it never saw in training), and the product of Gaussians then pulls
the fused estimate towards it. Modelling each BS's estimate as Student-t with ``dof``
degrees of freedom around the true position (Lange, Little and Taylor, *Robust
statistical modeling using the t distribution*, JASA 1989) gives an EM fixed point: a
product of Gaussians whose covariances are divided by the weights
``w_k = (dof + 2) / (dof + d_k^2)``, with ``d_k^2`` BS k's squared Mahalanobis distance
from the fused mean, iterated from the product of Gaussians. The weights are capped at 1,
so a BS is only ever down-weighted when it disagrees by more than its own covariance
says (a lone BS, or BSs that agree, give the product of Gaussians exactly). ``dof = 4``
is the usual robust default (Lange et al.), not tuned per site.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = [
    "COVERAGE_MIN",
    "JOINT",
    "JOINT_FILES",
    "METHODS",
    "coverage",
    "coverage_factor",
    "diag_cov",
    "ellipse",
    "fit_inflation",
    "fuse",
    "fuse_by",
    "fuse_robust",
    "inflation_for",
    "k_for_confidence",
    "mahalanobis2",
    "nll",
    "set_key",
]

Array = npt.NDArray[np.float64]

PRODUCT = "product_of_gaussians"
ROBUST = "robust_student_t"
METHODS = (PRODUCT, ROBUST)
"""Fusion methods a site version's manifest may name (``metrics.fusion.method``)."""
ROBUST_DOF = 4.0
ROBUST_ITERATIONS = 10

JOINT = "joint"
"""A multi-BS version's joint head (`training.multibs`): its key in the manifest
(``metrics.fusion.joint``) and in progress and training summaries."""
JOINT_FILES = ("joint.onnx", "joint-head.pt")
"""(ONNX, head) files of the joint head; outside the ``model.<bs>.onnx`` pattern, so no
BS id can collide with them. Its backbone is the version's parent, frozen: the ONNX
graph holds it, the head file holds the rest."""
JOINT_MIN_HEARD = 2
"""Fewest BSs a subset joint head (``metrics.fusion.joint.subsets``) answers for: with one
it would fuse a second estimate from the same CSI as that BS's own model."""


def joint_min_heard(stations: int, subsets: bool) -> int:
    """Fewest of a site's ``stations`` BSs a joint head answers for: `JOINT_MIN_HEARD`
    for a subset head, every BS otherwise (one rule for training and serving)."""
    return min(JOINT_MIN_HEARD, stations) if subsets else stations


SET_MAX_STATIONS = 6
"""Sites with up to this many BSs get a factor per set of BSs heard (2^K - 1 sets, each
fitted on the validation UEs that heard the set); larger sites use the one factor."""
SET_MIN_VAL = 10
"""Fewest validation UEs a set's factor is fitted on (as `training.calibration.MIN_SAMPLES`
for a head's sigma); a set heard by fewer gets the one factor."""

MIN_SIGMA_M = 1e-3
"""Sigmas below this are raised to it, so one over-confident BS cannot make P singular."""


def diag_cov(sigma: npt.ArrayLike) -> Array:
    """Diagonal covariances [..., 2, 2] from per-axis 1-sigma values [..., 2]."""
    s = np.maximum(np.asarray(sigma, dtype=np.float64), MIN_SIGMA_M)
    out = np.zeros((*s.shape[:-1], 2, 2))
    out[..., 0, 0] = s[..., 0] ** 2
    out[..., 1, 1] = s[..., 1] ** 2
    return out


def fuse(
    means: npt.ArrayLike, covs: npt.ArrayLike, present: npt.ArrayLike | None = None
) -> tuple[Array, Array]:
    """Product of Gaussians over the BS axis: means [K,B,2], covs [K,B,2,2] -> [B,2], [B,2,2].

    `present` bool [K,B] leaves out the BSs that did not hear a UE; every UE needs at
    least one. With one estimate the result is that estimate.
    """
    m = np.asarray(means, dtype=np.float64)
    c = np.asarray(covs, dtype=np.float64)
    if m.ndim != 3 or m.shape[-1] != 2 or c.shape != (*m.shape, 2):
        raise ValueError(f"means [K,B,2] and covs [K,B,2,2] expected, got {m.shape} {c.shape}")
    mask = np.ones(m.shape[:2], dtype=bool) if present is None else np.asarray(present, bool)
    if mask.shape != m.shape[:2]:
        raise ValueError(f"present must be [K,B] = {m.shape[:2]}, got {mask.shape}")
    if not mask.any(axis=0).all():
        raise ValueError("every UE needs an estimate from at least one base station")
    info = np.linalg.inv(c) * mask[..., None, None]  # [K,B,2,2], zero where absent
    total = info.sum(axis=0)  # [B,2,2]
    cov = np.linalg.inv(total)
    weighted = np.einsum("kbij,kbj->bi", info, m)
    mean = np.einsum("bij,bj->bi", cov, weighted)
    cov = 0.5 * (cov + np.swapaxes(cov, -1, -2))  # exactly symmetric for the ellipse
    return mean, cov


def fuse_robust(
    means: npt.ArrayLike,
    covs: npt.ArrayLike,
    present: npt.ArrayLike | None = None,
    dof: float = ROBUST_DOF,
    iterations: int = ROBUST_ITERATIONS,
) -> tuple[Array, Array]:
    """`fuse` with Student-t down-weighting of the BSs that disagree (module docstring):
    the same shapes in and out; the covariance is the weighted product's."""
    if not math.isfinite(dof) or dof <= 0:
        raise ValueError(f"dof must be a positive number, got {dof}")
    m = np.asarray(means, dtype=np.float64)
    c = np.asarray(covs, dtype=np.float64)
    mean, cov = fuse(m, c, present)
    inv = np.linalg.inv(c)
    for _ in range(iterations):
        e = m - mean[None]
        d2 = np.einsum("kbi,kbij,kbj->kb", e, inv, e)
        w = np.minimum(1.0, (dof + 2.0) / (dof + d2))
        mean, cov = fuse(m, c / w[..., None, None], present)
    return mean, cov


def fuse_by(
    method: str, means: npt.ArrayLike, covs: npt.ArrayLike, present: npt.ArrayLike | None = None
) -> tuple[Array, Array]:
    """`fuse` or `fuse_robust` by the method's name (`METHODS`)."""
    if method == PRODUCT:
        return fuse(means, covs, present)
    if method == ROBUST:
        return fuse_robust(means, covs, present)
    raise ValueError(f"unknown fusion method {method!r}, expected one of {METHODS}")


def k_for_confidence(confidence: float) -> float:
    """Scale of the k-sigma ellipse holding `confidence` of a 2-D Gaussian (chi2, 2 dof)."""
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    return math.sqrt(-2.0 * math.log(1.0 - confidence))


def ellipse(cov: npt.ArrayLike, confidence: float) -> dict[str, float]:
    """The confidence ellipse of a full 2x2 covariance.

    Semi-axes are k * sqrt(eigenvalues), k from `k_for_confidence`; the orientation is
    the angle of the major axis, counter-clockwise from the site's x axis, in [0, 180)
    degrees (the axis-aligned case gives 0 or 90, like `service.positioning.ellipse`).
    """
    c = np.asarray(cov, dtype=np.float64)
    if c.shape != (2, 2):
        raise ValueError(f"covariance must be 2x2, got {c.shape}")
    values, vectors = np.linalg.eigh(0.5 * (c + c.T))
    values = np.maximum(values, 0.0)
    k = k_for_confidence(confidence)
    major = vectors[:, 1]  # eigh sorts ascending: the last is the major axis
    angle = math.degrees(math.atan2(major[1], major[0])) % 180.0
    if values[1] - values[0] <= 1e-12 * max(values[1], 1e-300):
        angle = 0.0  # a circle has no orientation
    return {
        "semi_major": k * math.sqrt(values[1]),
        "semi_minor": k * math.sqrt(values[0]),
        "orientation_deg": 0.0 if angle >= 180.0 - 1e-9 else angle,
        "confidence": confidence,
        "k": k,
    }


def mahalanobis2(errors: npt.ArrayLike, covs: npt.ArrayLike) -> Array:
    """Squared Mahalanobis distance of each error [N,2] under its covariance [N,2,2]."""
    e = np.asarray(errors, dtype=np.float64)
    c = np.asarray(covs, dtype=np.float64)
    solved = np.linalg.solve(c, e[..., None])[..., 0]
    return np.asarray(np.einsum("ni,ni->n", e, solved))


def coverage(errors: npt.ArrayLike, covs: npt.ArrayLike, k: float) -> float:
    """Share of errors inside their k-sigma ellipse (a Gaussian gives 1 - exp(-k^2/2))."""
    d2 = mahalanobis2(errors, covs)
    return float(np.mean(d2 <= k * k)) if d2.size else float("nan")


def nll(errors: npt.ArrayLike, covs: npt.ArrayLike) -> Array:
    """Gaussian negative log-likelihood of each 2-D error [N,2] under its full covariance
    [N,2,2] (nats): what `nll_per_point` is for axis-aligned sigmas."""
    c = np.asarray(covs, dtype=np.float64)
    _, logdet = np.linalg.slogdet(c)
    return np.asarray(0.5 * mahalanobis2(errors, c) + 0.5 * logdet + math.log(2.0 * math.pi))


COVERAGE_MIN = 300
"""Fewest validation points on which a factor is fitted to the coverage
(`coverage_factor`) instead of by likelihood: there the 2-sigma share of the fit's
points has a standard error of 2 points (sqrt(0.865 * 0.135 / 300)), well inside the
+-5-point band a calibrated ellipse is judged by. Fewer points overfit: at 50, 36.8 /
78.4 % inside 1 / 2 sigma (docs/results/transfer, "Coverage as served"); at 160 the
coverage fit was better on average but left one demo site's 2-sigma ellipse at 77 %
where the likelihood factor held 84 % (docs/results/site-trust/calibration, "How many
points")."""

NOMINAL = ((1.0, 1.0 - math.exp(-0.5)), (2.0, 1.0 - math.exp(-2.0)))
"""(k, share): a 2-D Gaussian holds 39.3 % of its errors inside the 1-sigma ellipse and
86.5 % inside the 2-sigma one."""


def coverage_factor(d2: npt.ArrayLike) -> float:
    """The variance factor s whose ellipses s*C hold shares of the squared Mahalanobis
    distances ``d2`` closest to `NOMINAL` (least squares over both levels).

    Why not the likelihood factor mean(d^2)/2: fingerprint errors have heavier tails than
    a Gaussian, and that factor is set by the tail, so the 1-sigma ellipse holds 45-48 %
    of the errors when 2 sigma holds 86.5 % (docs/results/transfer, 3,000 labels); no
    single factor reaches both, and this one splits the miss (~41.5 / ~83.5 %). The
    shares are step functions of s, so every interval between steps is tried (at its
    geometric middle) and the first best one wins: the same d2 gives the same factor.
    Distances that are all 0 (every error nil) fit any factor: 1, the ellipse as it is."""
    d = np.sort(np.asarray(d2, dtype=np.float64).ravel())
    if d.size == 0 or not np.isfinite(d).all() or d[0] < 0:
        raise ValueError("d2: expected one or more finite squared distances >= 0")
    if d[-1] == 0:
        return 1.0
    d = np.maximum(d, d[-1] * 1e-12)  # exact hits: inside any ellipse, and logs stay finite
    log_steps = np.log(np.unique(np.concatenate([d / (k * k) for k, _ in NOMINAL])))
    middles = (log_steps[:-1] + log_steps[1:]) / 2
    tried = np.exp(np.concatenate([[log_steps[0] - 1], middles, [log_steps[-1] + 1]]))
    miss = np.zeros(tried.size)
    for k, share in NOMINAL:
        miss += (np.searchsorted(d, tried * k * k, side="right") / d.size - share) ** 2
    return float(tried[int(np.argmin(miss))])


def fit_inflation(errors: npt.ArrayLike, covs: npt.ArrayLike) -> float:
    """The factor s for covariances s*C on validation `errors`: with `COVERAGE_MIN`
    points or more the `coverage_factor`; below, the Gaussian likelihood's
    s = mean(d^2) / 2 for 2-D errors, never below 1 (a too-wide ellipse on a small
    validation set is left as it is)."""
    d2 = mahalanobis2(errors, covs)
    if d2.size == 0:
        return 1.0
    if d2.size >= COVERAGE_MIN:
        return coverage_factor(d2)
    return max(1.0, float(np.mean(d2)) / 2.0)


def set_key(heard: Iterable[str], stations: Sequence[str]) -> str:
    """The key of a set of BSs heard (``metrics.fusion.inflation_by_set``): their ids in
    the site's ``stations`` order, joined by ``+`` (a BS id has no ``+``)."""
    chosen = set(heard)
    return "+".join(bs for bs in stations if bs in chosen)


def inflation_for(
    by_set: Mapping[str, float], heard: Iterable[str], stations: Sequence[str], default: float
) -> float:
    """The factor for a UE heard by ``heard``: its set's, else ``default`` (the version's
    one factor: a set without enough validation UEs, or a version before sets)."""
    return float(by_set.get(set_key(heard, stations), default))


def sigma_from_rmse(metrics: dict[str, Any]) -> tuple[float, float] | None:
    """A per-axis sigma for an MSE head from its validation metrics (`rmse_x`, `rmse_y`)."""
    try:
        sx, sy = float(metrics["rmse_x"]), float(metrics["rmse_y"])
    except (KeyError, TypeError, ValueError):
        return None
    if not (math.isfinite(sx) and math.isfinite(sy)) or sx <= 0 or sy <= 0:
        return None
    return sx, sy
