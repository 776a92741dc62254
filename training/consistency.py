"""Out of site by consistency across base stations: a UE whose BSs each look like the
site but do not look like it together.

Each BS's detector (`training.novelty`) asks whether its own fingerprint could come from
this site, and a UE is out of site when most of its BSs say so. A room of the same family
often passes at every BS one at a time (by that rule alone the held-out hall let 10-23 %
of the held-out lab's UEs through, the corridor 38-44 %). What no single BS can check is
geometry: a UE at one place is seen from every BS's direction at once, so its BSs'
spatial statistics (each BS's normalised antenna covariance,
`training.novelty.spatial_statistics`, invariant to the per-sample common phase and
timing offset) lie on a two-dimensional sheet in their joint space. A UE from elsewhere
combines directions that no place of this site gives.

The score is a k-nearest-neighbour local outlier ratio in that joint space, over the BSs
that heard the UE: the distance to its k-th nearest reference UE (the adaptation's
training and validation UEs, each coordinate standardised), divided by the mean of those
neighbours' own k-th neighbour distances, so that sparsely sampled parts of the site
(its edges) are not out of site for being sparse (Breunig et al. 2000, LOF, simplified).
Measured on three held-out multi-BS sites (docs/results/site-trust/consistency): a
Gaussian over the joint space detected less (it fills the sheet in), and the plain k-th
distance had a heavy tail on the site's own UEs that set the threshold.

The threshold of each set of BSs heard is the split-conformal quantile of the
references' own leave-one-out scores (each reference scored against all the others):
~400 calibration scores at a ~500-label site instead of the 82 validation UEs, and no
random folds, so the same upload gives the same thresholds. A UE heard by fewer than two
BSs, or by a set with fewer than `MIN_REFS` references, gets no score here (0).
"""

from __future__ import annotations

import io
import itertools
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from training.neighbours import k_nearest
from training.novelty import conformal_threshold, spatial_statistics

if TYPE_CHECKING:
    from training.data.site import SiteFingerprints

__all__ = [
    "FILE",
    "Consistency",
    "consistency_bytes",
    "fit_consistency",
    "read_consistency",
    "spatial_by_bs",
]

FILE = "consistency.npz"
"""The file in a multi-BS site version that holds its `Consistency` model."""
FORMAT = 1
FALSE_ALARM = 0.005
"""Target false-alarm rate of each set's threshold: half the per-BS detectors' 1 %, since a
UE is out of site when either this or the median over its BSs fires, and the two together
must stay within 2 % (the median rule alone fired on 0-3.7 % of the own UEs of the three
sites measured)."""
NEIGHBOURS = 5
MIN_HEARD = 2
"""Fewest BSs a UE needs for a consistency score: one BS has its own detector."""
MIN_REFS = 50
"""Fewest reference UEs that heard a set of BSs for that set to get a threshold."""
MAX_STATIONS = 6
"""Sites with more BSs get no consistency model (2^K thresholds; as
`training.fusion.SET_MAX_STATIONS`)."""

F64 = npt.NDArray[np.float64]
Pattern = tuple[bool, ...]


def _key(pattern: Pattern, stations: Sequence[str]) -> str:
    return "+".join(bs for bs, on in zip(stations, pattern, strict=True) if on)


@dataclass(frozen=True, eq=False)
class Consistency:
    """References and per-set thresholds of one site's consistency score.

    ``refs`` [n, K, D] float32 holds the reference UEs' spatial statistics per BS in
    ``stations`` order (NaN rows where a BS did not hear the UE); ``center`` and
    ``scale`` [K, D] standardise them; ``thresholds`` maps a set of BSs heard (ids in
    ``stations`` order joined by ``+``) to its threshold on the outlier ratio.
    """

    stations: tuple[str, ...]
    refs: npt.NDArray[np.float32]
    center: F64
    scale: F64
    thresholds: dict[str, float]
    neighbours: int = NEIGHBOURS
    false_alarm: float = FALSE_ALARM
    _cache: dict[Pattern, tuple[F64, F64]] = field(default_factory=dict, compare=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, compare=False, repr=False)

    def _reference(self, pattern: Pattern) -> tuple[F64, F64]:
        """(standardised references that heard every BS of ``pattern`` [m, d], their
        own k-th neighbour distances [m]); cached, the service asks per request."""
        with self._lock:
            got = self._cache.get(pattern)
        if got is None:
            rows = _heard(self.refs)[:, list(pattern)].all(axis=1)
            x = self._standard(self.refs[rows], pattern)
            got = (x, _kth(x, x, self.neighbours, leave_out=True)[0])
            with self._lock:
                self._cache[pattern] = got
        return got

    def _standard(self, z: npt.ArrayLike, pattern: Pattern) -> F64:
        on = list(pattern)
        sel = np.asarray(z, dtype=np.float64)[:, on]
        return np.asarray(((sel - self.center[on]) / self.scale[on]).reshape(len(sel), -1))

    def ratio(self, z: npt.ArrayLike, pattern: Pattern) -> F64:
        """The outlier ratio of UEs ``z`` [B, K, D] heard by the BSs of ``pattern``."""
        ref, ref_k = self._reference(pattern)
        x = self._standard(z, pattern)
        dist, nearest = _kth(x, ref, self.neighbours)
        return np.asarray(dist / np.maximum(ref_k[nearest].mean(axis=1), 1e-12))

    def score(self, spatial: Mapping[str, npt.ArrayLike]) -> F64:
        """Per UE ``ratio / threshold`` (above 1: out of site; 0 where not scored) from
        each heard BS's spatial statistic [B, D] (``spatial_statistics``); a BS missing
        from ``spatial``, or a row of NaN, did not hear that UE."""
        unknown = set(spatial) - set(self.stations)
        if unknown:
            raise ValueError(f"unknown base stations {sorted(unknown)}; expected {self.stations}")
        z = _stack(spatial, self.stations, self.refs.shape[2])
        out = np.zeros(len(z))
        heard = _heard(z)
        for pattern in {tuple(bool(b) for b in row) for row in heard}:
            threshold = self.thresholds.get(_key(pattern, self.stations))
            if threshold is None:
                continue
            rows = (heard == np.array(pattern)).all(axis=1)
            out[rows] = self.ratio(z[rows], pattern) / threshold
        return out

    def summary(self) -> dict[str, Any]:
        """What the manifest records about it."""
        return {
            "method": "knn-outlier-ratio",
            "neighbours": self.neighbours,
            "false_alarm": self.false_alarm,
            "references": len(self.refs),
            "sets": sorted(self.thresholds),
        }


def _stack(spatial: Mapping[str, npt.ArrayLike], stations: Sequence[str], d: int = 0) -> F64:
    """[B, K, D] in ``stations`` order from per-BS statistics [B, D], NaN where a BS is
    absent; ``d`` the width expected (0: any)."""
    arrays = {bs: np.asarray(a, dtype=np.float64) for bs, a in spatial.items()}
    d = d or next(iter(arrays.values())).shape[-1]
    rows = {a.shape[0] for a in arrays.values()}
    if len(rows) != 1 or any(a.ndim != 2 or a.shape[1] != d for a in arrays.values()):
        raise ValueError(f"each base station's statistic must be [B, {d}] with one B")
    z = np.full((rows.pop(), len(stations), d), np.nan)
    for k, bs in enumerate(stations):
        if bs in arrays:
            z[:, k] = arrays[bs]
    return z


def _heard(z: npt.ArrayLike) -> npt.NDArray[np.bool_]:
    """[B, K]: which BSs heard each UE of ``z`` [B, K, D] (no NaN in its row)."""
    return np.asarray(~np.isnan(np.asarray(z)).any(axis=2))


def _kth(x: F64, ref: F64, k: int, *, leave_out: bool = False) -> tuple[F64, npt.NDArray[np.intp]]:
    """(distance of each row of ``x`` to its k-th nearest row of ``ref``, the indices of
    its k nearest); ``leave_out``: ``x`` is ``ref``, so each row skips itself."""
    dist, index = k_nearest(x, ref, k, leave_out=leave_out)
    return np.asarray(dist[:, -1], dtype=np.float64), index


def fit_consistency(
    sites: Sequence[SiteFingerprints],
    *,
    false_alarm: float = FALSE_ALARM,
    neighbours: int = NEIGHBOURS,
) -> Consistency | None:
    """The consistency model of the UEs of ``sites`` (parts of one site with the same BSs:
    the adaptation's training and validation splits); None for one BS, more than
    `MAX_STATIONS`, or no set of BSs with `MIN_REFS` UEs."""
    stations = tuple(sites[0].bs_ids)
    if any(tuple(s.bs_ids) != stations for s in sites):
        raise ValueError("the parts of a site must have the same base stations in one order")
    if not MIN_HEARD <= len(stations) <= MAX_STATIONS:
        return None
    refs = np.concatenate([_stack(spatial_by_bs(s), stations) for s in sites]).astype(np.float32)
    d = refs.shape[2]
    center = np.zeros((len(stations), d))
    scale = np.ones((len(stations), d))
    heard = _heard(refs)
    for k in range(len(stations)):
        own = refs[heard[:, k], k].astype(np.float64)
        if len(own):
            center[k], scale[k] = own.mean(axis=0), own.std(axis=0) + 1e-6
    model = Consistency(stations, refs, center, scale, {}, neighbours, false_alarm)
    thresholds: dict[str, float] = {}
    for pattern in _patterns(len(stations)):
        rows = heard[:, list(pattern)].all(axis=1)
        if rows.sum() < max(MIN_REFS, neighbours + 2):
            continue
        x = model._standard(refs[rows], pattern)
        own, nearest = _kth(x, x, neighbours, leave_out=True)
        calibration = own / np.maximum(own[nearest].mean(axis=1), 1e-12)
        thresholds[_key(pattern, stations)] = conformal_threshold(calibration, false_alarm)
    if not thresholds:
        return None
    return Consistency(stations, refs, center, scale, thresholds, neighbours, false_alarm)


def spatial_by_bs(site: SiteFingerprints) -> dict[str, F64]:
    """Each BS's spatial statistics on every UE of ``site`` [n, D], NaN rows where it did
    not hear the UE: what `Consistency.score` takes."""
    out = {}
    for bs, st in site.stations.items():
        stats = spatial_statistics(st.data.csi)
        z = np.full((len(site), stats.shape[1]), np.nan)
        z[st.rows] = stats
        out[bs] = z
    return out


def _patterns(k: int) -> list[Pattern]:
    """Every set of at least `MIN_HEARD` of ``k`` BSs, as a mask."""
    return [p for p in itertools.product((False, True), repeat=k) if sum(p) >= MIN_HEARD]


def consistency_bytes(model: Consistency) -> bytes:
    """``consistency.npz`` content."""
    keys = sorted(model.thresholds)
    buf = io.BytesIO()
    np.savez(
        buf,
        format=np.array(FORMAT),
        stations=np.array(model.stations),
        refs=model.refs.astype(np.float32),
        center=model.center,
        scale=model.scale,
        sets=np.array(keys),
        thresholds=np.array([model.thresholds[k] for k in keys], dtype=np.float64),
        params=np.array([model.neighbours, model.false_alarm], dtype=np.float64),
    )
    return buf.getvalue()


def read_consistency(data: bytes, name: str = FILE) -> Consistency:
    """The model in ``consistency.npz`` bytes; ValueError naming ``name`` when the file is
    not one or is inconsistent."""
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            a = {k: npz[k] for k in npz.files}
        if int(a["format"]) != FORMAT:
            raise ValueError(f"format {int(a['format'])}, expected {FORMAT}")
        stations = tuple(str(s) for s in a["stations"].tolist())
        refs = a["refs"].astype(np.float32)
        center, scale = a["center"].astype(np.float64), a["scale"].astype(np.float64)
        sets = [str(s) for s in a["sets"].tolist()]
        values = [float(t) for t in a["thresholds"].tolist()]
        neighbours, false_alarm = a["params"].tolist()
    except Exception as exc:
        raise ValueError(f"{name}: not a consistency file: {exc}") from exc
    k = len(stations)
    if not MIN_HEARD <= k <= MAX_STATIONS or len(set(stations)) != k:  # before 2^k sets
        raise ValueError(f"{name}: {k} base stations, expected {MIN_HEARD}-{MAX_STATIONS}")
    known = {_key(p, stations) for p in _patterns(k)}
    if (
        refs.ndim != 3
        or refs.shape[1] != k
        or np.isinf(refs).any()
        or center.shape != (k, refs.shape[2])
        or scale.shape != center.shape
        or not np.isfinite(center).all()
        or not (np.isfinite(scale) & (scale > 0)).all()
        or len(sets) != len(values)
        or not set(sets) <= known
        or not all(np.isfinite(t) and t > 0 for t in values)
        or not 1 <= int(neighbours) < len(refs)
    ):
        raise ValueError(f"{name}: inconsistent consistency model")
    return Consistency(
        stations,
        refs,
        center,
        scale,
        dict(zip(sets, values, strict=True)),
        int(neighbours),
        float(false_alarm),
    )
