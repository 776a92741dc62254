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

One novelty model per head, keyed by head name in one ``novelty.npz`` per site
version, so a site with one head per base station gets one per base station.

Several base stations (`combine_scores`). Each BS that heard a UE scores its own
fingerprint; the UE's score is the *median* of those scores, so it is in site when at
least half of the BSs that heard it (by score) say so: one BS whose view changed (a
moved machine, a fault) neither throws every UE out of the site nor lets a foreign
fingerprint in, and with one BS it is that BS's score. With two BSs the median is their
mean.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:  # the API process scores features with numpy alone: no torch import
    from training.data.fingerprints import Fingerprints
    from training.nets import Backbone, SiteModel

METHOD = "mahalanobis-lw"
FILE = "novelty.npz"
"""The file in a site version that holds its novelty models."""
FORMAT = 1
SINGLE_HEAD = "site"
"""The head name of a single-BS site."""
DEFAULT_FALSE_ALARM = 0.01
"""Target false-alarm rate of the threshold on the site's own fingerprints."""
MIN_VAL = 20
"""Fewer validation points than this: no novelty model (the threshold would be noise)."""

F64 = npt.NDArray[np.float64]


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

    @property
    def features(self) -> int:
        return int(self.mean.shape[0])

    @property
    def inflates(self) -> bool:
        """Whether out-of-site answers get ``site_sigma`` as their least sigma."""
        return bool(np.isfinite(self.site_sigma).all() and self.site_sigma.shape == (2,))

    def distance(self, features: npt.ArrayLike) -> F64:
        """Mahalanobis distance of each row of ``features`` [B, D]."""
        f = np.asarray(features, dtype=np.float64)
        if f.ndim != 2 or f.shape[1] != self.features:
            raise ValueError(f"features must be [B, {self.features}], got {list(f.shape)}")
        z = (f - self.mean) @ self.whitener
        return np.asarray(np.sqrt(np.einsum("ij,ij->i", z, z)))

    def score(self, features: npt.ArrayLike) -> F64:
        """``distance / threshold``: above 1 means out of site."""
        return self.distance(features) / self.threshold

    def summary(self) -> dict[str, Any]:
        """What the manifest records about this head's novelty model."""
        return {
            "method": METHOD,
            "threshold": self.threshold,
            "shrinkage": self.shrinkage,
            "false_alarm": self.false_alarm,
            "features": self.features,
            "n_train": self.n_train,
            "n_val": self.n_val,
            "site_sigma": [float(s) for s in self.site_sigma],
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


def conformal_threshold(scores: npt.ArrayLike, false_alarm: float) -> float:
    """The ``ceil((n + 1)(1 - a))``-th smallest score (the largest when n is too small):
    a new score from the same distribution exceeds it with probability <= ``a``."""
    if not 0.0 < false_alarm < 1.0:
        raise ValueError(f"false_alarm={false_alarm}, expected in (0, 1)")
    s = np.sort(np.asarray(scores, dtype=np.float64))
    if s.size == 0:
        raise ValueError("no validation scores to calibrate the threshold on")
    k = min(math.ceil((s.size + 1) * (1.0 - false_alarm)), s.size)
    return float(s[k - 1])


def fit_novelty(
    train_features: npt.ArrayLike,
    val_features: npt.ArrayLike,
    *,
    false_alarm: float = DEFAULT_FALSE_ALARM,
    site_sigma: npt.ArrayLike = (math.nan, math.nan),
) -> NoveltyModel:
    """Fit mean and Ledoit-Wolf covariance on the training features, the threshold on
    the validation features."""
    train = np.asarray(train_features, dtype=np.float64)
    val = np.asarray(val_features, dtype=np.float64)
    mean, cov, shrinkage = ledoit_wolf(train)
    vals, vecs = np.linalg.eigh(cov)
    vals = np.maximum(vals, vals.max() * 1e-12)
    whitener = vecs / np.sqrt(vals)
    partial = NoveltyModel(
        mean,
        whitener,
        1.0,
        shrinkage,
        false_alarm,
        np.asarray(site_sigma, dtype=np.float64),
        len(train),
        len(val),
    )
    threshold = conformal_threshold(partial.distance(val), false_alarm)
    return NoveltyModel(
        mean,
        whitener,
        max(threshold, 1e-12),
        shrinkage,
        false_alarm,
        partial.site_sigma,
        len(train),
        len(val),
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
) -> NoveltyModel | None:
    """The novelty model of one head trained on ``train`` (None below `MIN_VAL` validation
    points)."""
    if len(val) < MIN_VAL or len(train) < 2:
        return None
    return fit_novelty(
        backbone_features(backbone, train.csi),
        backbone_features(backbone, val.csi),
        false_alarm=false_alarm,
        site_sigma=np.asarray(train.pos, dtype=np.float64).std(axis=0),
    )


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
    for head, m in models.items():
        if not head or "/" in head:
            raise ValueError(f"invalid head name {head!r}")
        arrays[f"{head}/mean"] = m.mean
        arrays[f"{head}/whitener"] = m.whitener
        arrays[f"{head}/site_sigma"] = m.site_sigma
        arrays[f"{head}/params"] = np.array(
            [m.threshold, m.shrinkage, m.false_alarm, m.n_train, m.n_val], dtype=np.float64
        )
    buf = io.BytesIO()
    np.savez(buf, **arrays)  # type: ignore[arg-type]
    return buf.getvalue()


def read_novelty(data: bytes, name: str = FILE) -> dict[str, NoveltyModel]:
    """The novelty models in ``novelty.npz`` bytes, by head. Raises ValueError naming
    ``name`` when the file is not one."""
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except Exception as exc:
        raise ValueError(f"{name}: not a novelty file: {exc}") from exc
    if int(arrays.get("format", -1)) != FORMAT or str(arrays.get("method")) != METHOD:
        raise ValueError(f"{name}: unknown novelty format (expected {METHOD} format {FORMAT})")
    heads = sorted({k.split("/")[0] for k in arrays if "/" in k})
    models: dict[str, NoveltyModel] = {}
    for head in heads:
        try:
            mean = arrays[f"{head}/mean"].astype(np.float64)
            whitener = arrays[f"{head}/whitener"].astype(np.float64)
            threshold, shrinkage, false_alarm, n_train, n_val = arrays[f"{head}/params"].tolist()
            site_sigma = arrays[f"{head}/site_sigma"].astype(np.float64)
        except (KeyError, ValueError) as exc:
            raise ValueError(f"{name}: head {head!r} is incomplete: {exc}") from exc
        if whitener.shape != (mean.shape[0], mean.shape[0]) or not threshold > 0:
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
        )
    return models


def inflate_sigma(
    sigma: npt.ArrayLike, score: npt.ArrayLike, site_sigma: npt.ArrayLike
) -> npt.NDArray[np.float32]:
    """``sigma`` [B, 2] with out-of-site rows (score > 1) raised to at least ``site_sigma``
    per axis: what the service answers."""
    out = np.array(sigma, dtype=np.float32)
    far = np.asarray(score) > 1.0
    out[far] = np.maximum(out[far], np.asarray(site_sigma, dtype=np.float32))
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
        score = novelty.score(feats)
        row: dict[str, Any] = {
            "n": len(data),
            "out_of_site": float(np.mean(score > 1.0)),
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
