"""Out-of-site detection: how unlike a site's training fingerprints a CSI is.

A model trained on one site answers for any CSI, and its sigma says nothing about
a fingerprint from elsewhere (a lab-los model on another office: sigma ~0.3 m,
errors ~4.6 m). So each head gets a *novelty model*: the Mahalanobis distance of
the backbone's features (the head's input) from the features of the head's
training split,

    d(f) = sqrt((f - mean)^T  Sigma^-1  (f - mean)),

with ``Sigma`` the Ledoit-Wolf shrinkage covariance: 128 features from a few
hundred fingerprints give a badly conditioned sample covariance (ReLU units that
never fire on the site have zero variance), and Ledoit-Wolf picks the shrinkage
towards ``mu * I`` from the data, with nothing to tune per site.

The threshold is calibrated on the validation split, which the features were not
fitted on (training features sit closer to their own mean than new fingerprints
of the same site do): the split-conformal quantile, the ``ceil((n + 1)(1 - a))``-th
smallest validation distance, so a new fingerprint of the site exceeds it with
probability at most ``a`` on average over validation draws (``false_alarm``, 1 % by
default; with fewer than ``1/a - 1`` validation points it is the largest one, and
one site's realised rate varies: docs/results/out-of-site). Scores are reported as
``d / threshold``: above 1 is out of site, whatever the method.

Channel statistics. A backbone built to transfer is trained to *discard* what tells
sites apart (the common phase, the timing offset: docs/results/out-of-site, "Corpus
backbone"), so its features alone miss many foreign fingerprints. Each head's detector
therefore also scores two statistics of the raw CSI that such a backbone ignores and
that carry the room (`channel_statistics`), both invariant to the per-sample common
phase and timing offset that every site has:

- ``spatial``: the antennas' covariance summed over subcarriers, normalised by its
  trace (the directions the energy arrives from);
- ``delay``: the log power-delay profile, aligned on its strongest tap (the room's
  multipath spread).

Each part is the same Ledoit-Wolf Mahalanobis distance with its own conformal
threshold; a fingerprint's score is the largest of the parts' ``d / threshold``, each
threshold at ``false_alarm / parts`` (a union bound: the OR of the parts keeps the
false-alarm target). On the two held-out multi-BS sites this raised the share of other
sites' fingerprints detected from 2-97 % to 36-100 % of each foreign set
(docs/results/site-trust).
Versions published before (format 1) score the features alone, as they did.

Relative distances (format 3). The plain distance weighs every direction in which a
fingerprint is unusual, including those in which every room varies (a deep fade, a
blocked array), so a foreign room that is ordinary in the others gets through.
The relative Mahalanobis distance (Ren et al. 2021, "A Simple Fix to Mahalanobis
Distance for Improving Near-OOD Detection") subtracts what is common to all sites:

    r(x) = d_site(x)^2 - d_background(x)^2,

with the background a Ledoit-Wolf Gaussian of the same statistic over the pre-training
corpus (`Background`, fitted when a source backbone is trained and published with it as
``background.npz``). Each channel part whose backbone has one scores ``r``, with the same
conformal threshold, reported as ``max(r - c, 0) / (t - c)`` with ``c`` the median and
``t`` the threshold of the validation scores (``r`` has no natural zero). On the two
held-out multi-BS sites this raised the weakest foreign sets (55 -> 91 %, 74 -> 97 %)
at the same false alarms (docs/results/site-trust). The backbone's features keep the
plain distance: adaptation changes the backbone, so a background of the source
backbone's features would describe other features (measured: no better).

One novelty model per head, keyed by head name in one ``novelty.npz`` per site
version, so a site with one head per base station gets one per base station. The
heads of a site share the corpus background of their backbone: format 4 stores each
distinct background once (``_background/<k>/...``, a name no head can take) and each
part refers to it by ``k``, so a 4-BS site no longer carries four copies (~44 KB each).

Several base stations (`combine_scores`). Each BS that heard a UE scores its own
fingerprint; the UE's score is the *median* of those scores, so it is in site when at
least half of the BSs that heard it (by score) say so: one BS whose view changed (a
moved machine, a fault) neither throws every UE out of the site nor lets a foreign
fingerprint in, and with one BS it is that BS's score. With two BSs the median is their
mean. A multi-BS site also checks that its BSs' views fit one place of the site together
(`training.consistency`); the service serves the larger of the two scores.
"""

from __future__ import annotations

import functools
import io
import logging
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:  # the API process scores features with numpy alone: no torch import
    from training.data.fingerprints import Fingerprints
    from training.nets import Backbone, SiteModel

log = logging.getLogger(__name__)

METHOD = "mahalanobis-lw"
FILE = "novelty.npz"
"""The file in a site version that holds its novelty models."""
FORMAT = 4
"""2 added the channel-statistics parts, 3 their corpus backgrounds, 4 stores a background
shared by several heads once; older files still read."""
FORMATS = (1, 2, 3, 4)
SHARED = "_background"
"""Key prefix of the shared backgrounds in ``novelty.npz``; a head name may not start with
``_`` (nor can a base station id, `training.data.site.BS_ID`)."""
BACKGROUND_FILE = "background.npz"
"""The file in a backbone version that holds its corpus `Background`."""
BACKGROUND_METHOD = "channel-statistics-lw"
BACKGROUND_PER_ENV = 120
"""Fingerprints per source environment the background is fitted on."""
CHANNEL_PARTS = ("spatial", "delay")
DELAY_TAPS = 32
"""Taps of the aligned power-delay profile kept (4 before the strongest, 28 after)."""
SINGLE_HEAD = "site"
"""The head name of a single-BS site."""
DEFAULT_FALSE_ALARM = 0.01
"""Target false-alarm rate of the threshold on the site's own fingerprints."""
MIN_VAL = 20
"""Fewer validation points than this: no novelty model (the threshold would be noise)."""

F64 = npt.NDArray[np.float64]


def channel_statistics(csi: npt.ArrayLike) -> dict[str, F64]:
    """Per fingerprint of ``csi`` [B, antennas, subcarriers, 2] (real, imaginary): the
    ``spatial`` [B, A*A] and ``delay`` [B, DELAY_TAPS] statistics (module docstring).
    In complex64 with cached indices: the service runs it on every request."""
    x = _complex(csi)
    f = x.shape[2]
    n = max(128, 1 << (f - 1).bit_length())
    h = np.fft.ifft(x, n=n, axis=2)
    pdp = (h.real**2 + h.imag**2).sum(axis=1)
    pdp = pdp / np.maximum(pdp.sum(axis=1, keepdims=True), 1e-30)
    taps = (pdp.argmax(axis=1)[:, None] + _DELAY_OFFSETS) % n
    delay = np.log10(np.take_along_axis(pdp, taps, axis=1) + 1e-6)
    return {"spatial": _spatial(x), "delay": delay.astype(np.float64)}


def spatial_statistics(csi: npt.ArrayLike) -> F64:
    """The ``spatial`` statistic [B, A*A] of `channel_statistics` alone (what
    `training.consistency` compares across BSs)."""
    return _spatial(_complex(csi))


def _complex(csi: npt.ArrayLike) -> npt.NDArray[np.complex64]:
    c = np.ascontiguousarray(csi, dtype=np.float32)
    if c.ndim != 4 or c.shape[-1] != 2:
        raise ValueError(f"csi must be [B, antennas, subcarriers, 2], got {list(c.shape)}")
    return np.asarray(c.view(np.complex64)[..., 0])


def _spatial(x: npt.NDArray[np.complex64]) -> F64:
    """The antennas' covariance over subcarriers / its trace: upper triangle (real) and
    strict upper triangle (imaginary), [B, A*A]."""
    b, a, _ = x.shape
    r = x @ x.conj().transpose(0, 2, 1)
    power = np.maximum(r.diagonal(axis1=1, axis2=2).real.sum(axis=1), 1e-30)
    r = r / power[:, None, None]
    upper, strict = _pairs(a)
    spatial = np.concatenate([r[:, upper[0], upper[1]].real, r[:, strict[0], strict[1]].imag], 1)
    return np.asarray(spatial.reshape(b, a * a), dtype=np.float64)


_DELAY_OFFSETS = np.arange(-4, DELAY_TAPS - 4)[None]
_Index = tuple[npt.NDArray[np.intp], ...]


@functools.lru_cache(maxsize=8)
def _pairs(antennas: int) -> tuple[_Index, _Index]:
    """(upper triangle with diagonal, strict upper triangle) indices of an A x A matrix."""
    return np.triu_indices(antennas), np.triu_indices(antennas, 1)


@dataclass(frozen=True)
class Gaussian:
    """A Ledoit-Wolf Gaussian as (mean, whitener W with ``W W^T = Sigma^-1``)."""

    mean: F64
    whitener: F64

    def distance(self, rows: npt.ArrayLike) -> F64:
        return _distance(self.mean, self.whitener, rows)


@dataclass(frozen=True)
class ChannelPart:
    """One channel statistic's Mahalanobis detector (``name`` in `CHANNEL_PARTS`).

    With a ``background`` the raw score is the relative squared distance and
    ``center`` its validation median (module docstring); without, the distance."""

    name: str
    mean: F64
    whitener: F64
    threshold: float
    shrinkage: float
    background: Gaussian | None = None
    center: float = 0.0

    def raw_score(self, stats: npt.ArrayLike) -> F64:
        """What the threshold applies to, per row [B, D]: the distance, or with a
        background the relative squared distance."""
        d = _distance(self.mean, self.whitener, stats)
        if self.background is None:
            return d
        return np.asarray(d**2 - self.background.distance(stats) ** 2)

    def score(self, stats: npt.ArrayLike) -> F64:
        """Per row of the statistic [B, D]: above 1 is beyond the threshold."""
        if self.background is None:
            return self.raw_score(stats) / self.threshold
        return np.maximum(self.raw_score(stats) - self.center, 0.0) / (self.threshold - self.center)


def _distance(mean: F64, whitener: F64, rows: npt.ArrayLike) -> F64:
    f = np.asarray(rows, dtype=np.float64)
    if f.ndim != 2 or f.shape[1] != mean.shape[0]:
        raise ValueError(f"features must be [B, {mean.shape[0]}], got {list(f.shape)}")
    z = (f - mean) @ whitener
    return np.asarray(np.sqrt(np.einsum("ij,ij->i", z, z)))


def _gaussian(train: F64) -> tuple[F64, F64, float]:
    """(mean, whitener W with W W^T = Sigma^-1, shrinkage) of the Ledoit-Wolf fit."""
    mean, cov, shrinkage = ledoit_wolf(train)
    vals, vecs = np.linalg.eigh(cov)
    vals = np.maximum(vals, vals.max() * 1e-12)
    return mean, vecs / np.sqrt(vals), shrinkage


@dataclass(frozen=True)
class NoveltyModel:
    """Mahalanobis distance of backbone features from one head's training features.

    ``whitener`` W has ``W W^T = Sigma^-1``, so ``d(f) = |(f - mean) W|``. ``site_sigma``
    is the per-axis spread (std) of the training positions: the honest 1-sigma of a
    position for a fingerprint that may come from anywhere in the site.
    """

    mean: F64
    whitener: F64
    threshold: float
    shrinkage: float
    false_alarm: float
    site_sigma: F64
    n_train: int
    n_val: int
    parts: tuple[ChannelPart, ...] = ()
    """Channel-statistics detectors (module docstring); empty in format-1 versions."""

    @property
    def features(self) -> int:
        return int(self.mean.shape[0])

    @property
    def false_alarm_bound(self) -> float:
        """What the validation split can guarantee: the union bound over the features'
        and each part's threshold, each `conformal_bound` (n_val, its share of the
        target); above `false_alarm` when the split is too small for the target."""
        share = self.false_alarm / (1 + len(self.parts))
        return min(1.0, (1 + len(self.parts)) * conformal_bound(self.n_val, share))

    @property
    def inflates(self) -> bool:
        """Whether out-of-site answers get ``site_sigma`` as their least sigma."""
        return bool(np.isfinite(self.site_sigma).all() and self.site_sigma.shape == (2,))

    def distance(self, features: npt.ArrayLike) -> F64:
        """Mahalanobis distance of each row of ``features`` [B, D]."""
        return _distance(self.mean, self.whitener, features)

    def score(
        self,
        features: npt.ArrayLike,
        csi: npt.ArrayLike | None = None,
        stats: Mapping[str, F64] | None = None,
    ) -> F64:
        """The largest ``distance / threshold`` over the features and, with parts, the
        channel statistics of ``csi`` (the same rows): above 1 means out of site.
        ``stats``: those statistics already computed (`channel_statistics`), instead of
        ``csi`` (the service also hands them to the cross-BS check)."""
        score = self.distance(features) / self.threshold
        if self.parts:
            if stats is None:
                if csi is None:
                    raise ValueError("this detector also scores the raw CSI: pass csi")
                stats = channel_statistics(csi)
            for part in self.parts:
                score = np.maximum(score, part.score(stats[part.name]))
        return score

    def summary(self) -> dict[str, Any]:
        """What the manifest records about this head's novelty model."""
        return {
            "method": METHOD,
            "threshold": self.threshold,
            "shrinkage": self.shrinkage,
            "false_alarm": self.false_alarm,
            "false_alarm_bound": self.false_alarm_bound,
            "features": self.features,
            "n_train": self.n_train,
            "n_val": self.n_val,
            "site_sigma": [float(s) for s in self.site_sigma],
            "parts": {
                p.name: {
                    "threshold": p.threshold,
                    "shrinkage": p.shrinkage,
                    "relative": p.background is not None,
                    **({"center": p.center} if p.background is not None else {}),
                }
                for p in self.parts
            },
        }


def ledoit_wolf(x: npt.ArrayLike) -> tuple[F64, F64, float]:
    """(mean, shrunk covariance, shrinkage) of the rows of ``x`` [n, p] (Ledoit & Wolf 2004).

    The covariance is ``(1 - s) S + s mu I`` with ``S`` the sample covariance (1/n),
    ``mu = trace(S) / p`` and ``s`` the estimated optimal shrinkage (the formula
    scikit-learn's ``ledoit_wolf_shrinkage`` uses).
    """
    data = np.asarray(x, dtype=np.float64)
    n, p = data.shape
    if n < 2:
        raise ValueError(f"need at least 2 samples for a covariance, got {n}")
    mean = data.mean(axis=0)
    xc = data - mean
    cov = xc.T @ xc / n
    mu = float(np.trace(cov)) / p
    x2 = xc**2
    beta_sum = float((x2.T @ x2).sum())
    delta_sum = float((cov**2).sum())
    beta = (beta_sum / n - delta_sum) / (p * n)
    delta = (delta_sum - 2.0 * mu * float(np.trace(cov)) + p * mu**2) / p
    beta = min(beta, delta)
    shrinkage = 0.0 if delta <= 0.0 else beta / delta
    shrunk = (1.0 - shrinkage) * cov + shrinkage * mu * np.eye(p)
    if mu <= 0.0:  # every feature constant: any change is novel, but keep the matrix finite
        shrunk = shrunk + 1e-12 * np.eye(p)
    return mean, shrunk, float(shrinkage)


def _conformal_rank(n: int, false_alarm: float) -> int:
    if not 0.0 < false_alarm < 1.0:
        raise ValueError(f"false_alarm={false_alarm}, expected in (0, 1)")
    if n <= 0:
        raise ValueError("no validation scores to calibrate the threshold on")
    return min(math.ceil((n + 1) * (1.0 - false_alarm)), n)


def conformal_threshold(scores: npt.ArrayLike, false_alarm: float) -> float:
    """The ``ceil((n + 1)(1 - a))``-th smallest of n scores, or the largest when n is too
    small for ``a``: a new score from the same distribution exceeds it with probability
    at most `conformal_bound` (n, a), which is ``a`` once ``n >= 1 / a - 1``."""
    s = np.sort(np.asarray(scores, dtype=np.float64))
    return float(s[_conformal_rank(s.size, false_alarm) - 1])


def conformal_bound(n: int, false_alarm: float) -> float:
    """The false-alarm rate `conformal_threshold` guarantees with n scores for the target
    ``a``: ``1 - k / (n + 1)`` for its rank k; ``1 / (n + 1)`` (not ``a``) when n is too
    small, e.g. 1/83 against a target of 1/300 on 82 validation points."""
    return 1.0 - _conformal_rank(n, false_alarm) / (n + 1)


def fit_novelty(
    train_features: npt.ArrayLike,
    val_features: npt.ArrayLike,
    *,
    false_alarm: float = DEFAULT_FALSE_ALARM,
    site_sigma: npt.ArrayLike = (math.nan, math.nan),
    train_csi: npt.ArrayLike | None = None,
    val_csi: npt.ArrayLike | None = None,
    background: Background | None = None,
) -> NoveltyModel:
    """Fit mean and Ledoit-Wolf covariance on the training features, the threshold on
    the validation features; with the CSI of both splits, the channel-statistics parts
    too, every threshold then at ``false_alarm / (1 + parts)``, and relative to the
    ``background`` where it has the part (module docstring)."""
    train = np.asarray(train_features, dtype=np.float64)
    val = np.asarray(val_features, dtype=np.float64)
    with_parts = train_csi is not None and val_csi is not None
    alpha = false_alarm / (1 + len(CHANNEL_PARTS)) if with_parts else false_alarm
    mean, whitener, shrinkage = _gaussian(train)
    threshold = conformal_threshold(_distance(mean, whitener, val), alpha)
    parts: list[ChannelPart] = []
    if train_csi is not None and val_csi is not None:  # with_parts, spelled for mypy
        train_stats, val_stats = channel_statistics(train_csi), channel_statistics(val_csi)
        for name in CHANNEL_PARTS:
            m, w, k = _gaussian(train_stats[name])
            bg = None if background is None else background.part(name, m.shape[0])
            part = ChannelPart(name, m, w, 1.0, k, bg)
            val_raw = part.raw_score(val_stats[name])
            t = conformal_threshold(val_raw, alpha)
            if bg is None:
                parts.append(replace(part, threshold=max(t, 1e-12)))
            else:
                c = float(np.median(val_raw))
                parts.append(replace(part, threshold=max(t, c + 1e-12), center=c))
    return NoveltyModel(
        mean,
        whitener,
        max(threshold, 1e-12),
        shrinkage,
        false_alarm,
        np.asarray(site_sigma, dtype=np.float64),
        len(train),
        len(val),
        tuple(parts),
    )


def backbone_features(backbone: Backbone, csi: npt.ArrayLike, batch_size: int = 512) -> F64:
    """The backbone's features [B, D] for ``csi`` [B, 8, 103, 2], in eval mode, on the CPU."""
    import torch

    was_training = backbone.training
    backbone.eval()
    try:
        x = torch.as_tensor(np.asarray(csi, dtype=np.float32))
        device = next(backbone.parameters()).device
        with torch.no_grad():
            parts = [backbone(c.to(device)).cpu().double() for c in torch.split(x, batch_size)]
    finally:
        backbone.train(was_training)
    if not parts:
        return np.zeros((0, backbone.config.features))
    return np.asarray(torch.cat(parts).numpy())


def fit_site_novelty(
    backbone: Backbone,
    train: Fingerprints,
    val: Fingerprints,
    *,
    false_alarm: float = DEFAULT_FALSE_ALARM,
    background: Background | None = None,
) -> NoveltyModel | None:
    """The novelty model of one head trained on ``train`` (None below `MIN_VAL` validation
    points), relative to the starting backbone's corpus ``background`` when it has one."""
    if len(val) < MIN_VAL or len(train) < 2:
        return None
    model = fit_novelty(
        backbone_features(backbone, train.csi),
        backbone_features(backbone, val.csi),
        false_alarm=false_alarm,
        site_sigma=np.asarray(train.pos, dtype=np.float64).std(axis=0),
        train_csi=train.csi,
        val_csi=val.csi,
        background=background,
    )
    if model.false_alarm_bound > false_alarm:
        log.warning(
            "out-of-site detector: %d validation points guarantee false alarms <= %.1f %%, "
            "not the %.1f %% target; the site's walks calibrate the UE's rule "
            "(training.walk_alarm), or more labels make a larger validation split",
            len(val),
            100 * model.false_alarm_bound,
            100 * false_alarm,
        )
    return model


def combine_scores(scores: npt.ArrayLike, present: npt.ArrayLike | None = None) -> F64:
    """Per UE the median score [B] over the BSs that heard it (scores [K, B], present
    bool [K, B]; every UE needs one): above 1 is out of site (module docstring)."""
    s = np.asarray(scores, dtype=np.float64)
    mask = np.ones(s.shape, dtype=bool) if present is None else np.asarray(present, dtype=bool)
    if s.ndim != 2 or mask.shape != s.shape:
        raise ValueError(f"scores [K, B] and present [K, B] expected, got {s.shape} {mask.shape}")
    if not mask.any(axis=0).all():
        raise ValueError("every UE needs a score from at least one base station")
    return np.asarray(np.nanmedian(np.where(mask, s, np.nan), axis=0), dtype=np.float64)


def novelty_bytes(models: Mapping[str, NoveltyModel]) -> bytes:
    """``novelty.npz`` content: per head ``<head>/mean``, ``/whitener``, ``/params``."""
    arrays: dict[str, npt.NDArray[Any]] = {
        "format": np.array(FORMAT),
        "method": np.array(METHOD),
    }
    shared: list[Gaussian] = []
    for head, m in models.items():
        if not head or "/" in head or head.startswith("_"):
            raise ValueError(f"invalid head name {head!r}: expected no '/' and no leading '_'")
        arrays[f"{head}/mean"] = m.mean
        arrays[f"{head}/whitener"] = m.whitener
        arrays[f"{head}/site_sigma"] = m.site_sigma
        arrays[f"{head}/params"] = np.array(
            [m.threshold, m.shrinkage, m.false_alarm, m.n_train, m.n_val], dtype=np.float64
        )
        for part in m.parts:
            arrays[f"{head}/{part.name}/mean"] = part.mean
            arrays[f"{head}/{part.name}/whitener"] = part.whitener
            arrays[f"{head}/{part.name}/params"] = np.array([part.threshold, part.shrinkage])
            if part.background is not None:
                ref = _shared_index(shared, part.background)
                arrays[f"{head}/{part.name}/background"] = np.array(ref)
                arrays[f"{head}/{part.name}/center"] = np.array(part.center)
    for k, g in enumerate(shared):
        arrays[f"{SHARED}/{k}/mean"] = g.mean
        arrays[f"{SHARED}/{k}/whitener"] = g.whitener
    buf = io.BytesIO()
    np.savez(buf, **arrays)  # type: ignore[arg-type]
    return buf.getvalue()


def _shared_index(shared: list[Gaussian], g: Gaussian) -> int:
    """Index of ``g`` in ``shared`` (by value), appending it when new."""
    for k, s in enumerate(shared):
        if s is g or (
            s.mean.shape == g.mean.shape
            and np.array_equal(s.mean, g.mean)
            and np.array_equal(s.whitener, g.whitener)
        ):
            return k
    shared.append(g)
    return len(shared) - 1


def read_novelty(data: bytes, name: str = FILE) -> dict[str, NoveltyModel]:
    """The novelty models in ``novelty.npz`` bytes, by head. Raises ValueError naming
    ``name`` when the file is not one."""
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except Exception as exc:
        raise ValueError(f"{name}: not a novelty file: {exc}") from exc
    if int(arrays.get("format", -1)) not in FORMATS or str(arrays.get("method")) != METHOD:
        raise ValueError(f"{name}: unknown novelty format (expected {METHOD} format {FORMATS})")
    heads = sorted({k.split("/")[0] for k in arrays if "/" in k and not k.startswith("_")})
    models: dict[str, NoveltyModel] = {}
    shared: dict[str, Gaussian] = {}  # format 4: one decoded copy per shared background
    for head in heads:
        try:
            mean = arrays[f"{head}/mean"].astype(np.float64)
            whitener = arrays[f"{head}/whitener"].astype(np.float64)
            threshold, shrinkage, false_alarm, n_train, n_val = arrays[f"{head}/params"].tolist()
            site_sigma = arrays[f"{head}/site_sigma"].astype(np.float64)
            parts = tuple(
                _read_part(arrays, head, part, shared)
                for part in CHANNEL_PARTS
                if f"{head}/{part}/params" in arrays
            )
        except (KeyError, ValueError, TypeError) as exc:
            raise ValueError(f"{name}: head {head!r} is incomplete: {exc}") from exc
        shapes = [(mean, whitener)] + [(p.mean, p.whitener) for p in parts]
        shapes += [(p.background.mean, p.background.whitener) for p in parts if p.background]
        if any(p.background and p.background.mean.shape != p.mean.shape for p in parts) or any(
            p.background and not p.threshold > p.center for p in parts
        ):
            raise ValueError(f"{name}: head {head!r} has an inconsistent background")
        if any(w.shape != (m.shape[0], m.shape[0]) for m, w in shapes) or not (
            threshold > 0 and all(p.threshold > 0 or p.background for p in parts)
        ):
            raise ValueError(f"{name}: head {head!r} has inconsistent shapes or threshold")
        models[head] = NoveltyModel(
            mean,
            whitener,
            float(threshold),
            float(shrinkage),
            float(false_alarm),
            site_sigma,
            int(n_train),
            int(n_val),
            parts,
        )
    return models


def _read_part(
    arrays: Mapping[str, npt.NDArray[Any]], head: str, part: str, shared: dict[str, Gaussian]
) -> ChannelPart:
    """One channel part of ``head``; a format-4 background is decoded once into ``shared``
    and the same object is given to every head that refers to it (a site's BSs share the
    backbone's background, so a 4-BS site holds one copy in memory, not four)."""
    key = f"{head}/{part}"
    threshold, shrinkage = arrays[f"{key}/params"].tolist()
    background = None
    if f"{key}/background" in arrays:  # format 4: a shared background by index
        ref = f"{SHARED}/{int(arrays[f'{key}/background'])}"
        if ref not in shared:
            shared[ref] = Gaussian(
                arrays[f"{ref}/mean"].astype(np.float64),
                arrays[f"{ref}/whitener"].astype(np.float64),
            )
        background = shared[ref]
    elif f"{key}/center" in arrays:  # format 3: the head's own copy
        background = Gaussian(
            arrays[f"{key}/background_mean"].astype(np.float64),
            arrays[f"{key}/background_whitener"].astype(np.float64),
        )
    return ChannelPart(
        part,
        arrays[f"{key}/mean"].astype(np.float64),
        arrays[f"{key}/whitener"].astype(np.float64),
        float(threshold),
        float(shrinkage),
        background,
        float(arrays[f"{key}/center"]) if background is not None else 0.0,
    )


@dataclass(frozen=True)
class Background:
    """Gaussians of the channel statistics over a backbone's pre-training corpus: what
    is common to all sites, subtracted by the relative distance (module docstring)."""

    parts: Mapping[str, Gaussian]
    n: int
    environments: int

    def part(self, name: str, dim: int) -> Gaussian | None:
        """The background of statistic ``name`` when it has ``dim`` dimensions (a site
        with another array shape gets none: its part keeps the plain distance)."""
        g = self.parts.get(name)
        return g if g is not None and g.mean.shape == (dim,) else None

    def summary(self) -> dict[str, Any]:
        return {
            "method": BACKGROUND_METHOD,
            "n": self.n,
            "environments": self.environments,
            "parts": sorted(self.parts),
        }


def fit_background(
    csi_by_env: Iterable[npt.ArrayLike], per_env: int = BACKGROUND_PER_ENV, seed: int = 0
) -> Background:
    """The corpus background from ``per_env`` fingerprints (seeded draw) of each source
    environment's CSI [N, antennas, subcarriers, 2], so no environment dominates."""
    rng = np.random.default_rng(seed)
    stats: dict[str, list[F64]] = {name: [] for name in CHANNEL_PARTS}
    environments = 0
    for csi in csi_by_env:
        c = np.asarray(csi)
        if len(c) == 0:
            continue
        rows = np.sort(rng.choice(len(c), min(per_env, len(c)), replace=False))
        for name, value in channel_statistics(c[rows]).items():
            stats[name].append(value)
        environments += 1
    if environments == 0:
        raise ValueError("no source fingerprints to fit the background on")
    parts = {}
    for name, values in stats.items():
        mean, whitener, _ = _gaussian(np.concatenate(values))
        parts[name] = Gaussian(mean, whitener)
    return Background(parts, sum(len(v) for v in stats[CHANNEL_PARTS[0]]), environments)


def background_bytes(background: Background) -> bytes:
    """``background.npz`` content: ``<part>/mean``, ``<part>/whitener`` and the counts."""
    arrays: dict[str, npt.NDArray[Any]] = {
        "format": np.array(1),
        "method": np.array(BACKGROUND_METHOD),
        "counts": np.array([background.n, background.environments]),
    }
    for name, g in background.parts.items():
        arrays[f"{name}/mean"] = g.mean
        arrays[f"{name}/whitener"] = g.whitener
    buf = io.BytesIO()
    np.savez(buf, **arrays)  # type: ignore[arg-type]
    return buf.getvalue()


def read_background(data: bytes, name: str = BACKGROUND_FILE) -> Background:
    """The `Background` in ``background.npz`` bytes; ValueError naming ``name`` if not one."""
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
        if int(arrays["format"]) != 1 or str(arrays["method"]) != BACKGROUND_METHOD:
            raise ValueError(f"unknown format (expected {BACKGROUND_METHOD} format 1)")
        n, environments = (int(v) for v in arrays["counts"])
        parts = {
            part: Gaussian(
                arrays[f"{part}/mean"].astype(np.float64),
                arrays[f"{part}/whitener"].astype(np.float64),
            )
            for part in CHANNEL_PARTS
            if f"{part}/mean" in arrays
        }
    except Exception as exc:
        raise ValueError(f"{name}: not a background file: {exc}") from exc
    d = {p: g.mean.shape[0] for p, g in parts.items()}
    if any(g.whitener.shape != (d[p], d[p]) for p, g in parts.items()):
        raise ValueError(f"{name}: inconsistent shapes")
    return Background(parts, n, environments)


def out_of_site(score: npt.ArrayLike) -> npt.NDArray[np.bool_]:
    """Where an out-of-site ``score`` (``d / threshold`` of any detector here: a head's
    `NoveltyModel`, the cross-BS check, a track's average) says *not from this site*:
    above 1, or not a number (no score is no evidence of the site). The one definition
    the service's ``in_site``, its sigma inflation and its out-of-site counts share."""
    return np.logical_not(np.asarray(score) <= 1.0)


def inflate_sigma(
    sigma: npt.ArrayLike, score: npt.ArrayLike, site_sigma: npt.ArrayLike
) -> npt.NDArray[np.float32]:
    """``sigma`` [B, 2] with out-of-site rows (score > 1) raised to at least ``site_sigma``
    per axis: what the service answers."""
    out = np.array(sigma, dtype=np.float32)
    far = out_of_site(score)
    out[far] = np.maximum(out[far], np.asarray(site_sigma, dtype=np.float32))
    return out


def inflate_cov(cov: npt.ArrayLike, score: npt.ArrayLike, site_sigma: npt.ArrayLike) -> F64:
    """``cov`` [B, 2, 2] with out-of-site rows (score > 1) widened so that each axis's
    sigma is at least ``site_sigma``: the fused answer of a multi-BS site for a UE that
    is out of site (the off-diagonal is kept)."""
    out = np.array(cov, dtype=np.float64)
    far = out_of_site(score)
    floor = np.asarray(site_sigma, dtype=np.float64) ** 2
    diag = np.diagonal(out[far], axis1=1, axis2=2)
    out[far] += np.einsum("bi,ij->bij", np.maximum(floor - diag, 0.0), np.eye(2))
    return out


def evaluate_out_of_site(
    model: SiteModel,
    novelty: NoveltyModel,
    own: Fingerprints,
    foreign: Mapping[str, Fingerprints],
) -> dict[str, Any]:
    """False alarms on ``own`` (the site's test fingerprints) and detection on each
    ``foreign`` set, with positioning metrics per set: ``model`` with the model's sigma,
    ``answered`` with the sigma the service answers (inflated where out of site)."""
    from training.metrics import evaluate

    def one(data: Fingerprints) -> dict[str, Any]:
        import torch

        model.eval()
        with torch.no_grad():
            feats = backbone_features(model.backbone, data.csi)
            pos_t, sig_t = model.head(torch.from_numpy(feats).float())
        pos = pos_t.double().numpy()
        sigma = None if sig_t is None else sig_t.double().numpy()
        score = novelty.score(feats, data.csi)
        row: dict[str, Any] = {
            "n": len(data),
            "out_of_site": float(np.mean(out_of_site(score))),
            "novelty_median": float(np.median(score)),
            "model": evaluate(pos, sigma, data.pos),
        }
        if sigma is not None and novelty.inflates:
            answered = inflate_sigma(sigma, score, novelty.site_sigma)
            row["answered"] = evaluate(pos, answered, data.pos)
        return row

    own_row = one(own)
    rows = {name: one(data) for name, data in foreign.items()}
    detection = [r["out_of_site"] for r in rows.values()]
    return {
        "method": METHOD,
        "threshold": novelty.threshold,
        "false_alarm_target": novelty.false_alarm,
        "false_alarm": own_row["out_of_site"],
        "detection_min": float(min(detection)) if detection else math.nan,
        "detection_mean": float(np.mean(detection)) if detection else math.nan,
        "own": own_row,
        "foreign": rows,
    }
