"""A site's UE-level out-of-site threshold, from its own unlabelled walks.

Each BS's detector holds its false-alarm target on its own fingerprints
(`training.novelty`), but a multi-BS UE is out of site when the *median* of its BSs'
scores passes 1, and how often that happens to the site's own UEs depends on how the
BSs' alarms co-occur: on a 4-BS hall 0.0-0.1 % (the budget unused), on a small 3-BS lab
up to 3.7 % (over the 2 % goal; docs/results/site-trust/consistency). The ~80
validation UEs cannot pin a 1 % tail down. A site's walks can: thousands of instants
the site's BSs saw, no labels needed.

So when walks come with the adaptation, each part of the UE's rule is re-calibrated on
them: the median is divided by a *scale*, the split-conformal ``1 - a`` quantile of the
median on the walks, and the cross-BS check (`training.consistency`, OR-ed with the
median) by its own, over the instants it scores; ``a`` is the part's share of the
UE-level 1 % (0.5 % each, a union bound, as the per-BS parts share theirs). The check
needs it as much: calibrated at 0.5 % on leave-one-out labelled references, it fired
alone on 0.0-1.9 % of three sites' walks, whose UEs pass between the labelled positions.
The walks come as a few long trajectories whose instants are far from independent (two
sets of ten 30-s walks of one site gave 1 % and 3.3 % at one threshold), so each
quantile is hedged by a bootstrap over whole tracks: the scale is the ``confidence``
quantile of the thresholds of resampled track sets, one that most draws of walks like
these would not find too low. A scale moves both ways: below 1 where a part leaves its
budget unused, above 1 where the site's own UEs alarm too often. Measured against
scaling the whole score, the median alone and no bootstrap
(docs/results/site-trust/walk-alarm). A single-BS site's UE score is its head's score,
scaled the same way at the site's whole target. Each BS's own answer is not scaled.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from training.consistency import Consistency
from training.data.unlabelled import instants
from training.novelty import (
    DEFAULT_FALSE_ALARM,
    NoveltyModel,
    backbone_features,
    channel_statistics,
    combine_scores,
    conformal_threshold,
    out_of_site,
)

if TYPE_CHECKING:
    from training.data.unlabelled import UnlabelledTracks
    from training.nets import SiteModel

F64 = npt.NDArray[np.float64]

CONFIDENCE = 0.9
"""Share of bootstrap draws of the walks whose threshold the scale is at least."""
RESAMPLES = 200
MIN_TRACKS = 5
"""Fewer distinct walks than this: no scale (a bootstrap over 2-4 tracks is noise)."""


def walk_ue_scores(
    models: Mapping[str, SiteModel],
    novelty: Mapping[str, NoveltyModel],
    consistency: Consistency | None,
    walks: Mapping[str, UnlabelledTracks],
    stations: list[str],
) -> tuple[F64, F64, npt.NDArray[np.int64]]:
    """For every walk instant (track id, time) any BS saw, as the service scores a UE
    (`ServedSite.ue_novelty`, before any scale): the median over the BSs that saw it, the
    cross-BS check's score (0 without one, or where it does not apply), and its track id.
    A recording's BSs share track ids and times (`join_recordings`)."""
    where = instants(walks)
    keys = sorted(where)
    scores = np.full((len(stations), len(keys)), np.nan)
    spatial: dict[str, F64] = {}
    for k, bs in enumerate(stations):
        if bs not in walks:
            continue
        rows = np.array([where[key].get(bs, -1) for key in keys])
        seen = rows >= 0
        csi = walks[bs].csi[rows[seen]]
        stats = channel_statistics(csi)
        feats = backbone_features(models[bs].backbone, csi)
        scores[k, seen] = novelty[bs].score(feats, stats=stats)
        spatial[bs] = np.full((len(keys), stats["spatial"].shape[1]), np.nan)
        spatial[bs][seen] = stats["spatial"]
    median = combine_scores(np.nan_to_num(scores), ~np.isnan(scores))
    check = np.zeros(len(keys)) if consistency is None else consistency.score(spatial)
    return median, check, np.array([key[0] for key in keys], dtype=np.int64)


def walk_scale(
    scores: npt.ArrayLike,
    track: npt.ArrayLike,
    *,
    false_alarm: float = DEFAULT_FALSE_ALARM,
    confidence: float = CONFIDENCE,
    resamples: int = RESAMPLES,
    seed: int = 0,
) -> float | None:
    """The scale (module docstring) from walk ``scores`` [U] and their ``track`` ids [U];
    None with fewer than `MIN_TRACKS` tracks."""
    s = np.asarray(scores, dtype=np.float64)
    tr = np.asarray(track)
    ids, inverse = np.unique(tr, return_inverse=True)
    if len(ids) < MIN_TRACKS:
        return None
    by_track = [s[inverse == i] for i in range(len(ids))]
    rng = np.random.default_rng(seed)
    thresholds = [
        conformal_threshold(
            np.concatenate([by_track[i] for i in rng.integers(0, len(ids), len(ids))]),
            false_alarm,
        )
        for _ in range(resamples)
    ]
    return max(float(np.quantile(thresholds, confidence)), 1e-12)


def part_scales(
    median: F64,
    check: F64,
    track: npt.NDArray[np.int64],
    false_alarm: float,
    check_false_alarm: float | None,
    *,
    seed: int = 0,
) -> tuple[float | None, float | None]:
    """The median's scale at ``false_alarm`` and, with a ``check_false_alarm``, the
    check's over the instants it scores (``check > 0``: heard by a set of BSs it has a
    threshold for), from the walks' parts (`walk_ue_scores`); None where too few tracks."""
    scale = walk_scale(median, track, false_alarm=false_alarm, seed=seed)
    if check_false_alarm is None:
        return scale, None
    scored = check > 0.0
    return scale, walk_scale(check[scored], track[scored], false_alarm=check_false_alarm, seed=seed)


def fit_walk_scale(
    models: Mapping[str, SiteModel],
    novelty: Mapping[str, NoveltyModel],
    consistency: Consistency | None,
    walks: Mapping[str, UnlabelledTracks],
    stations: list[str],
    *,
    false_alarm: float = DEFAULT_FALSE_ALARM,
    seed: int = 0,
) -> dict[str, Any] | None:
    """The manifest's ``metrics.ue_novelty`` (the scales, what they were fitted on, and
    the walks' false alarms as served before and after), or None without enough walks.
    ``false_alarm``: the UE-level target, shared with the check when there is one."""
    if not walks or set(novelty) != set(stations):
        return None
    median, check, track = walk_ue_scores(models, novelty, consistency, walks, stations)
    share = 0.0 if consistency is None else consistency.false_alarm
    target = false_alarm - share
    if target <= 0.0:
        return None
    scale, check_scale = part_scales(median, check, track, target, share or None, seed=seed)
    if scale is None:
        return None
    after = np.maximum(median / scale, check / (check_scale or 1.0))
    return {
        "scale": scale,
        "check_scale": check_scale,
        "method": "walks-track-bootstrap",
        "false_alarm": target,
        "check_false_alarm": share if check_scale is not None else None,
        "confidence": CONFIDENCE,
        "walk_instants": len(median),
        "walk_tracks": len(np.unique(track)),
        "walk_check_instants": int((check > 0.0).sum()),
        "walk_false_alarm_unscaled": float(np.mean(out_of_site(np.maximum(median, check)))),
        "walk_false_alarm": float(np.mean(out_of_site(after))),
    }
