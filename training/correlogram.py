"""How a site's position errors correlate over distance: the tracker's error model.

A fingerprint model's error at a position is mostly set by the multipath the UE sees
there, so errors at nearby positions are alike. The tracker (`training.tracking`) models
this as an error field with an exponential correlogram and a nugget,

    corr(d) = c exp(-d / L)        (d > 0; 1 at d = 0)

where ``c`` is the share of the error variance that is spatially correlated and ``L`` the
distance over which it decays (the standard variogram model of geostatistics; Cressie,
*Statistics for Spatial Data*, 1993, sec. 2.3). `fit_correlogram` estimates both from
labelled positions the site's models never trained on, with the errors whitened by their
predicted covariance (the filter scales the field by each estimate's covariance).

`label_spacing` measures what sets ``L`` at a site: a model fitted to labelled positions
interpolates between them, so its errors stay alike over a few times the distance between
neighbouring labels. On held-out trajectories of six simulated sites ``L`` was 2.5-4.4x
the median nearest-neighbour distance of the training labels at four (spacings 0.16-0.69 m),
5.5x at a fifth and ~10x at a sixth whose models erred by 4-5 m
(docs/results/site-trust/error-length); the tracker scales its ``L`` by it
(`training.tracking.TrackerConfig.error_length_spacings`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from training.neighbours import k_nearest

Array = npt.NDArray[np.float64]

MAX_POINTS = 2000
"""Positions beyond this are subsampled (seeded): the pairs grow as N^2."""

SPACING_MAX_POINTS = 20_000
"""`label_spacing` measures at most this many distinct positions (a seeded draw beyond,
its spacing scaled back by sqrt(draw / N): in 2-D the distance to the nearest neighbour
goes as one over the square root of the density)."""


@dataclass(frozen=True)
class Correlogram:
    """A fitted ``corr(d) = share * exp(-d / length_m)`` and the binned estimate behind it."""

    share: float
    length_m: float
    distance: Array
    """[B] bin centres (m)."""
    correlation: Array
    """[B] mean whitened error correlation of the pairs in each bin."""
    pairs: npt.NDArray[np.int64]
    """[B] pairs per bin (the fit's weights)."""
    points: int


def whiten(errors: npt.ArrayLike, covs: npt.ArrayLike) -> Array:
    """Errors [N, 2] divided by their covariances' Cholesky factors [N, 2, 2]."""
    e = np.asarray(errors, dtype=np.float64)
    chol = np.linalg.cholesky(np.asarray(covs, dtype=np.float64))
    return np.asarray(np.linalg.solve(chol, e[..., None])[..., 0])


def label_spacing(positions: npt.ArrayLike, seed: int = 0) -> float | None:
    """Median distance (m) from each distinct labelled position [N, 2] to its nearest
    neighbour; None with fewer than 2 distinct positions (nothing to measure). Repeated
    positions (several fingerprints at one surveyed point) count once."""
    p = np.asarray(positions, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] != 2 or not np.isfinite(p).all():
        raise ValueError(f"positions: expected finite [N, 2], got {p.shape}")
    p = np.unique(p, axis=0)
    n = len(p)
    if n < 2:
        return None
    factor = 1.0
    if n > SPACING_MAX_POINTS:
        p = p[np.random.default_rng(seed).choice(n, SPACING_MAX_POINTS, replace=False)]
        factor = math.sqrt(SPACING_MAX_POINTS / n)
    dist, _ = k_nearest(p, p, 1, leave_out=True)
    return float(np.median(dist[:, 0])) * factor


def spacing_metrics(train_positions: npt.ArrayLike) -> dict[str, float]:
    """A site version's ``label_spacing_m`` (`label_spacing` of the positions it trained
    on), the manifest entry the service's tracker reads; empty when it cannot be measured."""
    spacing = label_spacing(train_positions)
    return {} if spacing is None else {"label_spacing_m": spacing}


def fit_correlogram(
    positions: npt.ArrayLike,
    errors: npt.ArrayLike,
    covs: npt.ArrayLike,
    max_distance_m: float = 8.0,
    bin_m: float = 0.5,
    seed: int = 0,
) -> Correlogram:
    """Fit ``c exp(-d / L)`` to the correlation of whitened errors over pairs of positions.

    positions, errors [N, 2] (m) and covs [N, 2, 2]. The whitened errors are scaled to
    unit variance first, so a covariance that is off by one factor does not bias ``c``.
    The fit is weighted least squares over bins up to `max_distance_m`: ``c`` in closed
    form for each ``L`` of a log grid (`bin_m` to 50 m: a shorter length cannot be told
    from white noise at this binning), the best pair kept.
    """
    p = np.asarray(positions, dtype=np.float64)
    u = whiten(errors, covs)
    if p.ndim != 2 or p.shape[1] != 2 or u.shape != p.shape:
        raise ValueError(f"positions and errors [N, 2] expected, got {p.shape} and {u.shape}")
    if len(p) < 10:
        raise ValueError(f"at least 10 positions are needed, got {len(p)}")
    if len(p) > MAX_POINTS:
        keep = np.random.default_rng(seed).choice(len(p), MAX_POINTS, replace=False)
        p, u = p[keep], u[keep]
    u = u / np.sqrt(np.mean(u * u))
    i, j = np.triu_indices(len(p), 1)
    d = np.linalg.norm(p[i] - p[j], axis=1)
    corr = np.einsum("nk,nk->n", u[i], u[j]) / 2.0
    edges = np.arange(0.0, max_distance_m + 1e-9, bin_m)
    which = np.digitize(d, edges) - 1
    inside = (which >= 0) & (which < len(edges) - 1)
    nb = len(edges) - 1
    pairs = np.bincount(which[inside], minlength=nb).astype(np.int64)
    sums = np.bincount(which[inside], weights=corr[inside], minlength=nb)
    dsum = np.bincount(which[inside], weights=d[inside], minlength=nb)
    filled = pairs > 0
    if filled.sum() < 2:
        raise ValueError(f"fewer than 2 distance bins below {max_distance_m} m hold pairs")
    y = sums[filled] / pairs[filled]
    x = dsum[filled] / pairs[filled]
    w = pairs[filled].astype(np.float64)
    best = (np.inf, 0.0, 1.0)
    for length in np.geomspace(bin_m, 50.0, 240):
        g = np.exp(-x / length)
        share = float(np.clip(np.sum(w * y * g) / np.sum(w * g * g), 0.0, 0.99))
        sse = float(np.sum(w * (y - share * g) ** 2))
        if sse < best[0]:
            best = (sse, share, float(length))
    return Correlogram(best[1], best[2], x, y, pairs[filled], len(p))
