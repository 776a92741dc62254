"""Adapting a multi-BS site: one model per base station from one upload, then fusion.

Every BS gets the same target training as a single-BS site (`train_target`: same mode,
loss and options) on the same split of the *positions*: a UE sample
is in train, validation or test for every BS that heard it, so no BS validates on a
point another BS trained on, and the fused validation metrics are honest. The version
holds one model per BS (`training.checkpoint.save_multi_bs_site_model`); its manifest
keeps each BS's validation metrics under ``metrics["bs"]`` and the fused ones at the
top level, with the covariance inflation fitted on validation (`training.fusion`).
`auto` (the default) is one choice for the site: every BS trains every candidate mode
and one mode is kept for all BSs by the *fused* validation score (`_site_auto`).

The joint head. Late fusion can only average what each BS knows: a place one BS
confuses with another stays confused in its mean. A site adapted from a backbone with
the NLL loss also gets one head on every BS's features at once (the parent backbone,
frozen, on each BS's CSI: `training.nets.JointBackbone`), trained like a site head in
mode ``head`` on the samples every BS heard. Its estimate joins the fusion as one more
Gaussian whenever every BS heard the UE; at sites with 3+ BSs it is a *subset* head that
answers for any two or more BSs (`drop_stations`, `JointBackbone` ``subsets``). On three
held-out sites the every-BS head lowered the served fused error on trajectories to
0.63 / 0.61 / 0.54 x the best BS, from 0.67 / 0.69 / 0.65 x (medians of 3 seeds,
docs/results/site-trust/joint; the subset head 0.60 / 0.61 / 0.53 x); alone it was
better than the BSs' fusion on two sites and worse on one, so it is fused, not used
instead. Its
errors correlate with the BSs' (same CSI, same backbone): the inflation fitted on
validation absorbs that.

Unlabelled tracks (the walks a site's BSs saw without positions, per BS id) add the
track-consistency term (`training.unlabelled`) to each BS that saw them and, at the
instants two or more BSs saw together (`joint_tracks`), to the joint head.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import logging
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
import torch

from training.checkpoint import save_multi_bs_site_model
from training.config import TargetMode, TrainConfig
from training.consistency import fit_consistency, spatial_by_bs
from training.correlogram import spacing_metrics
from training.data.fingerprints import Fingerprints, data_fingerprint
from training.data.site import SiteFingerprints
from training.data.splits import fraction_subset, train_val_indices, train_val_test
from training.fit import ProgressFn, predict
from training.fusion import (
    JOINT,
    JOINT_MIN_HEARD,
    ROBUST,
    SET_MAX_STATIONS,
    SET_MIN_VAL,
    coverage,
    diag_cov,
    fit_inflation,
    fuse_by,
    inflation_for,
    joint_min_heard,
    set_key,
)
from training.fusion import nll as fused_nll
from training.metrics import evaluate, finish_head
from training.nets import Backbone, BackboneConfig, Head, HeadConfig, JointBackbone, SiteModel
from training.novelty import NoveltyModel, backbone_features, fit_site_novelty, out_of_site
from training.repository import ModelRepository
from training.walk_alarm import fit_walk_scale

if TYPE_CHECKING:
    from training.data.unlabelled import UnlabelledTracks
    from training.transfer import AdaptResult, TargetResult

log = logging.getLogger(__name__)

FUSION = ROBUST
"""How a new version fuses its BSs (`training.fusion`): Student-t down-weighting of a
disagreeing BS measured better than the product of Gaussians on two held-out sites
(docs/results/site-trust); recorded as ``metrics.fusion.method`` for the service."""

MIN_TRAIN_PER_BS = 2
MIN_VAL_PER_BS = 1
JOINT_MODE: TargetMode = "head"
"""How the joint head trains: on the parent backbone, frozen (its ONNX graph holds the
parent; the head file holds the rest, so another mode would leave that file without
its backbone). Fine-tuning the shared backbone measured worse
(docs/results/site-trust/joint)."""
JOINT_MIN_VAL = 10
"""Fewest validation samples a joint head answers (`joint_fingerprints`): its sigma is
calibrated on them, and they choose its checkpoint (`training.calibration.MIN_SAMPLES`)."""
JOINT_DROP = 0.25
JOINT_COPIES = 4
"""A subset joint head trains on every sample heard and 4 copies with each BS left out
with probability 0.25. Served on three held-out sites with one BS left out, it fused
lower than the BSs alone in 19 of 30 cases (median -4.3 %), and with every BS heard as
the every-BS head (median -2.2 %); 8 copies or drop 0.5 were no better on labelled
positions (docs/results/site-trust/joint, section 4)."""
JOINT_MEMBERS = 5
"""Joint heads trained (seeds ``seed + JOINT_SEED_STRIDE * i``; member 0 is the head a
one-member site trains) and averaged into one (`training.nets.Head.ensemble`), its
sigma calibrated on validation. Heads on ~400 labels differ by 10-15 % in error by
their initialisation alone; on frozen features of three held-out sites x 3 seeds, 5
heads took the fused error from 0.60 / 0.66 / 0.43 to 0.56 / 0.61 / 0.38 x the best
BS (hall / corridor / lab; 9 of 9 site-seeds lower; 3 heads gave most of it); served in
`auto` over 5 seeds, from 0.596 / 0.614 / 0.589 to 0.582 / 0.595 / 0.533 (15 of 15
lower). The joint head's training costs 5x (docs/results/site-trust/joint, section 5)."""
JOINT_SEED_STRIDE = 1000

Array = npt.NDArray[np.float64]


def split_site(
    data: SiteFingerprints, val_fraction: float, holdout: float, fraction: float, seed: int
) -> tuple[SiteFingerprints, SiteFingerprints, SiteFingerprints | None]:
    """(train, val, test or None) over the shared samples, the same for every BS.

    The same index calls as `holdout_split` + `split_train_val` of a single-BS site.
    """
    if not 0.0 <= holdout < 1.0:
        raise ValueError(f"holdout={holdout}, expected in [0, 1)")
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction={fraction}, expected in (0, 1]")
    split = train_val_test(len(data), 0.0, holdout, seed)
    pool = data.subset(fraction_subset(split.train, fraction, seed))
    train_idx, val_idx = train_val_indices(len(pool), val_fraction, seed)
    test = data.subset(split.test) if len(split.test) else None
    return pool.subset(train_idx), pool.subset(val_idx), test


def joint_rows(data: SiteFingerprints, subsets: bool = False) -> npt.NDArray[np.int64]:
    """The samples a joint head answers: those every BS heard; with ``subsets``
    (`JointBackbone`), those heard by `JOINT_MIN_HEARD` or more BSs."""
    heard_by = data.mask()
    need = joint_min_heard(heard_by.shape[1], subsets)
    return np.flatnonzero(heard_by.sum(axis=1) >= need)


def joint_fingerprints(
    data: SiteFingerprints, subsets: bool = False
) -> tuple[npt.NDArray[np.int64], Fingerprints]:
    """(sample rows, fingerprints) of the samples a joint head answers (`joint_rows`),
    each BS's CSI stacked on the antenna axis in `bs_ids` order, an absent BS's block all
    zero: the joint head's input [M, K*8, 103, 2]."""
    heard = joint_rows(data, subsets)
    parts = []
    for st in data.stations.values():
        where = np.full(len(data), -1, dtype=np.int64)
        where[st.rows] = np.arange(len(st.rows))
        block = np.zeros((len(heard), *st.data.csi.shape[1:]), dtype=np.float32)
        rows = where[heard]
        block[rows >= 0] = st.data.csi[rows[rows >= 0]]
        parts.append(block)
    csi = np.ascontiguousarray(np.concatenate(parts, axis=1), dtype=np.float32)
    return heard, Fingerprints(csi=csi, pos=data.pos[heard])


def drop_stations(joint: Fingerprints, stations: int, seed: int, *, least: int = 1) -> Fingerprints:
    """`joint` and `JOINT_COPIES` copies of it in which each BS block is zeroed with
    probability `JOINT_DROP` (a copy row keeps its BSs where fewer than ``least`` would
    remain): the training set of a subset joint head, seeded. Copies with one BS left
    teach the head each BS's own view, though it serves two or more: ``least`` 2
    lowered the fused error less (docs/results/site-trust/joint, section 4)."""
    rng = np.random.default_rng(seed)
    csi = joint.csi.reshape(len(joint), stations, -1, *joint.csi.shape[2:])
    heard = np.abs(csi).reshape(len(joint), stations, -1).max(axis=2) > 0
    copies = [joint.csi]
    for _ in range(JOINT_COPIES):
        keep = heard & (rng.random(heard.shape) >= JOINT_DROP)
        too_few = keep.sum(axis=1) < least
        keep[too_few] = heard[too_few]
        copies.append((csi * keep[:, :, None, None, None]).reshape(joint.csi.shape))
    return Fingerprints(
        csi=np.ascontiguousarray(np.concatenate(copies), dtype=np.float32),
        pos=np.tile(joint.pos, (JOINT_COPIES + 1, 1)),
    )


def joint_subsets(stations: int) -> bool:
    """Whether a site of ``stations`` BSs gets a subset joint head (any 2+ BSs heard)."""
    return stations > JOINT_MIN_HEARD


def joint_tracks(
    tracks: Mapping[str, UnlabelledTracks], bs_ids: list[str], subsets: bool
) -> UnlabelledTracks | None:
    """The joint head's unlabelled tracks: the instants (track id, time) that enough of
    the site's BSs saw (every BS, or `JOINT_MIN_HEARD` for a subset head, as
    `joint_rows`), each BS's CSI stacked on the antenna axis in ``bs_ids`` order, zeros
    where a BS did not see it; None when there are none. A recording's BSs share its
    track ids and times (`training.data.unlabelled.join_recordings`)."""
    from training.data.unlabelled import UnlabelledTracks, instants

    need = joint_min_heard(len(bs_ids), subsets)
    where = instants(_tracked(tracks))
    keys = sorted(k for k, seen in where.items() if len(seen) >= need)
    if not keys:
        return None
    shape = next(iter(tracks.values())).csi.shape[1:]
    blocks = []
    for bs in bs_ids:
        block = np.zeros((len(keys), *shape), dtype=np.float32)
        if bs in tracks:
            rows = np.array([where[k].get(bs, -1) for k in keys])
            block[rows >= 0] = tracks[bs].csi[rows[rows >= 0]]
        blocks.append(block)
    return UnlabelledTracks(
        np.ascontiguousarray(np.concatenate(blocks, axis=1)),
        np.array([k[1] for k in keys], dtype=np.float64),
        np.array([k[0] for k in keys], dtype=np.int32),
    )


def _tracked(tracks: Mapping[str, UnlabelledTracks]) -> dict[str, UnlabelledTracks]:
    """Each BS's rows of the tracks some BS saw twice or more: a track of one sample at
    every BS is a fingerprint without track (`UnlabelledTracks.untracked`), and row k of
    two BSs' untracked groups is not one UE at one instant."""
    from training.data.unlabelled import UnlabelledTracks

    parts = [t.track[~t.singletons()] for t in tracks.values()]
    walked = np.unique(np.concatenate(parts)) if parts else np.zeros(0, np.int32)
    out = {}
    for bs, t in tracks.items():
        keep = np.isin(t.track, walked)
        out[bs] = UnlabelledTracks(t.csi[keep], t.time[keep], t.track[keep])
    return out


def train_joint(
    start: Backbone,
    train: SiteFingerprints,
    val: SiteFingerprints,
    cfg: TrainConfig,
    *,
    quiet: bool,
    progress: ProgressFn | None,
    unlabelled: UnlabelledTracks | None = None,
) -> TargetResult | None:
    """The joint head on the frozen ``start`` (module docstring), or None where it does
    not apply: an MSE site (no sigma to fuse by) or too few samples it would answer.

    From 3 BSs on it is a subset head (`JointBackbone` ``subsets``): trained on
    `drop_stations` copies, its checkpoint and sigma chosen on validation as heard.
    ``unlabelled``: the instants its BSs saw together (`joint_tracks`) add the
    track-consistency term, as at each BS."""
    from training.transfer import train_target

    if cfg.loss != "nll":
        return None
    k = len(train.bs_ids)
    subsets = joint_subsets(k)
    _, jt = joint_fingerprints(train, subsets)
    _, jv = joint_fingerprints(val, subsets)
    if len(jt) < MIN_TRAIN_PER_BS or len(jv) < JOINT_MIN_VAL:
        log.info("no joint head: %d / %d train / validation samples to answer", len(jt), len(jv))
        return None
    backbone = JointBackbone(start, k, subsets=subsets)
    head = HeadConfig(loss=cfg.loss, in_features=backbone.config.features)
    members = []
    for i in range(JOINT_MEMBERS):
        member_cfg = dataclasses.replace(cfg, seed=cfg.seed + JOINT_SEED_STRIDE * i)
        members.append(
            train_target(
                backbone,
                drop_stations(jt, k, member_cfg.seed) if subsets else jt,
                jv,
                member_cfg,
                mode=JOINT_MODE,
                head_config=head,
                quiet=quiet,
                progress=progress,
                unlabelled=unlabelled,
            )
        )
    return members[0] if len(members) == 1 else _joint_ensemble(members, jv, cfg)


def _joint_ensemble(
    members: list[TargetResult], val: Fingerprints, cfg: TrainConfig
) -> TargetResult:
    """The members' heads as one (`Head.ensemble`) on the first's frozen backbone (they
    share its weights: mode ``head``), calibrated and scored on ``val``. The report is
    the first member's with the others' phases added as ``m<i>:<phase>``."""
    from training.transfer import TargetResult

    first = members[0]
    head = Head.ensemble([m.model.head for m in members])
    model = SiteModel(first.model.backbone, head).eval()
    metrics = finish_head(model.backbone, head, val, cfg)
    phases = list(first.report.phases) + [
        dataclasses.replace(p, name=f"m{i}:{p.name}")
        for i, m in enumerate(members[1:], start=1)
        for p in m.report.phases
    ]
    report = dataclasses.replace(first.report, phases=phases)
    return TargetResult(
        model,
        report,
        metrics,
        first.mode,
        cfg,
        first.chosen,
        reason=f"{len(members)} heads averaged",
        retried=any(m.retried for m in members),
    )


def _subsets(joint: SiteModel) -> bool:
    return isinstance(joint.backbone, JointBackbone) and joint.backbone.subsets


def station_estimates(
    models: dict[str, SiteModel],
    data: SiteFingerprints,
    rmse: dict[str, tuple[float, float]],
    joint: SiteModel | None = None,
) -> tuple[Array, Array, npt.NDArray[np.bool_]]:
    """Per-BS means [K,N,2], covariances [K,N,2,2] and presence [K,N] on `data`'s samples;
    with a ``joint`` head one more row, present where it answers (`joint_rows`).

    MSE models have no sigma: their validation RMSE per axis stands in (`rmse`).
    """
    if joint is not None:
        means, covs, present = station_estimates(models, data, rmse)
        jm, jc, jp = joint_estimate(joint, data)
        return (
            np.concatenate([means, jm]),
            np.concatenate([covs, jc]),
            np.concatenate([present, jp]),
        )
    n, k = len(data), len(models)
    means = np.zeros((k, n, 2))
    covs = np.tile(np.eye(2), (k, n, 1, 1))
    present = np.zeros((k, n), dtype=bool)
    for j, (bs, model) in enumerate(models.items()):
        st = data.stations[bs]
        if len(st.data) == 0:
            continue
        pos, sigma = predict(model.backbone, model.head, torch.from_numpy(st.data.csi))
        means[j, st.rows] = pos.numpy()
        sig = sigma.numpy() if sigma is not None else np.tile(rmse[bs], (len(st.rows), 1))
        covs[j, st.rows] = diag_cov(sig)
        present[j, st.rows] = True
    return means, covs, present


def joint_estimate(
    joint: SiteModel, data: SiteFingerprints
) -> tuple[Array, Array, npt.NDArray[np.bool_]]:
    """The joint head's means [1,N,2], covariances [1,N,2,2] and presence [1,N] on
    `data`'s samples, present where it answers (`joint_rows`)."""
    rows, jd = joint_fingerprints(data, _subsets(joint))
    jm, jc = np.zeros((1, len(data), 2)), np.tile(np.eye(2), (1, len(data), 1, 1))
    jp = np.zeros((1, len(data)), dtype=bool)
    if len(rows):
        pos, sigma = predict(joint.backbone, joint.head, torch.from_numpy(jd.csi))
        if sigma is None:
            raise ValueError("a joint head predicts sigma (it is trained with the NLL)")
        jm[0, rows], jc[0, rows], jp[0, rows] = pos.numpy(), diag_cov(sigma.numpy()), True
    return jm, jc, jp


def fused_metrics(
    estimate: tuple[Array, Array, Array, npt.NDArray[np.bool_]],
    stations: int,
    inflation: float | Array = 1.0,
) -> dict[str, float]:
    """ME, p90 and 1/2-sigma coverage of a `fused_estimate` of a site with ``stations``
    BSs, its covariances times ``inflation`` (one factor, or one per UE: `set_factors`):
    one estimate serves the inflation fit and the inflated and uninflated metrics."""
    mean, cov, truth, present = estimate
    cov = cov * np.reshape(inflation, (-1, 1, 1))
    out = evaluate(mean, np.sqrt(np.diagonal(cov, axis1=1, axis2=2)), truth)
    err = mean - truth
    out["within_1sigma"] = coverage(err, cov, 1.0)
    out["within_2sigma"] = coverage(err, cov, 2.0)
    out["heard_by_mean"] = float(present[:stations].sum(axis=0).mean())
    return out


def fused_estimate(
    models: dict[str, SiteModel],
    data: SiteFingerprints,
    rmse: dict[str, tuple[float, float]],
    joint: SiteModel | None = None,
    method: str = FUSION,
) -> tuple[Array, Array, Array, npt.NDArray[np.bool_]]:
    """(fused means [M, 2], covariances [M, 2, 2] uninflated, true positions [M, 2],
    presence [K(+1), M]) on the M samples of labelled `data` that some BS heard."""
    means, covs, present = station_estimates(models, data, rmse, joint)
    heard = present.any(axis=0)
    mean, cov = fuse_by(method, means[:, heard], covs[:, heard], present[:, heard])
    return mean, cov, data.pos[heard].astype(np.float64), present[:, heard]


def inflation_by_set(
    models: dict[str, SiteModel],
    val: SiteFingerprints,
    rmse: dict[str, tuple[float, float]],
    joint: SiteModel | None = None,
) -> dict[str, float]:
    """Per set of BSs (`set_key`), the inflation fitted on the validation UEs that heard
    every BS of it, fused from that set alone as the service fuses a UE it heard (the
    joint head where it answers for the set). A set with fewer than `SET_MIN_VAL` such
    UEs is left out, as is every set of a site with more than `SET_MAX_STATIONS` BSs:
    the version's one factor serves them."""
    stations = val.bs_ids
    if len(stations) > SET_MAX_STATIONS:
        return {}
    means, covs, present = station_estimates(models, val, rmse)  # once: a BS's own model
    out: dict[str, float] = {}
    for size in range(1, len(stations) + 1):
        for cols in itertools.combinations(range(len(stations)), size):
            rows = np.flatnonzero(present[list(cols)].all(axis=0))
            if len(rows) < SET_MIN_VAL:
                continue
            pick = np.ix_(np.asarray(cols), rows)
            set_means, set_covs, set_present = means[pick], covs[pick], present[pick]
            subset = [stations[c] for c in cols]
            if joint is not None:  # the joint head sees which BSs heard: run per set
                jm, jc, jp = joint_estimate(joint, val.subset(rows).only(subset))
                set_means = np.concatenate([set_means, jm])
                set_covs = np.concatenate([set_covs, jc])
                set_present = np.concatenate([set_present, jp])
            mean, cov = fuse_by(FUSION, set_means, set_covs, set_present)
            out[set_key(subset, stations)] = fit_inflation(mean - val.pos[rows], cov)
    return out


def set_factors(
    present: npt.NDArray[np.bool_], stations: list[str], by_set: dict[str, float], default: float
) -> Array:
    """Each UE's inflation [M] from the BSs that heard it (``present`` [K(+1), M], rows in
    ``stations`` order), as the service picks it (`training.fusion.inflation_for`)."""
    return np.array(
        [
            inflation_for(
                by_set, [bs for bs, p in zip(stations, heard, strict=True) if p], stations, default
            )
            for heard in present[: len(stations)].T
        ]
    )


def fused_scores(
    models: dict[str, SiteModel],
    data: SiteFingerprints,
    cfg: TrainConfig,
    joint: SiteModel | None = None,
) -> tuple[Array, float]:
    """(per-sample score, ME) of the fused estimate on labelled ``data``, as a version
    of these models would serve it: robust fusion (with ``joint``), the inflation fitted
    on ``data`` (one factor over the UEs as heard: the per-set factors a version also
    fits differ from it only for UEs some BS did not hear, and fitting them for every
    candidate mode would cost 2^K fusions each). The score is what `auto` compares by
    (`TrainConfig.select`): the error in metres, or the fused Gaussian NLL."""
    mean, cov, truth, _ = fused_estimate(models, data, _rmse(models, data), joint)
    err = mean - truth
    me = np.sqrt(np.square(err).sum(axis=1))
    if cfg.select == "me":
        return me, float(me.mean())
    return fused_nll(err, cov * fit_inflation(err, cov)), float(me.mean())


def _site_auto(
    start: Backbone,
    train: SiteFingerprints,
    val: SiteFingerprints,
    cfg: TrainConfig,
    joint: SiteModel | None,
    train_every_bs: Callable[[TargetMode, Backbone | None], dict[str, TargetResult]],
) -> tuple[dict[str, TargetResult], dict[str, Any]]:
    """`auto` at a multi-BS site: every candidate mode for every BS, then *one* mode for
    all, chosen by the fused validation score (`fused_scores`) with `choose_mode`'s rule.

    Per BS, `auto` would pick what predicts best alone; the site answers with the fusion,
    and on three held-out sites frozen-backbone heads fused better than fine-tuned models
    in 7 of 9 site-seeds, also where the fine-tuned BSs were better alone
    (docs/results/site-trust, "Which mode fuses best"). The choice uses the one
    validation split (extra folds would differ per BS); ``finetune`` stays unless beaten
    by more than one standard error.
    """
    from training.transfer import (
        AUTO_CANDIDATES,
        SCRATCH_CANDIDATE,
        choose_mode,
        large_site_candidates,
    )

    runs: dict[str, dict[str, TargetResult]] = {
        m: train_every_bs(m, start) for m in AUTO_CANDIDATES
    }
    for name in large_site_candidates(len(train) + len(val), 1, cfg):
        # `scratch` (no backbone) or `fresh-dense`: both fine-tune every layer
        fresh = None if name == SCRATCH_CANDIDATE else start.with_fresh_dense(cfg.seed)
        runs[name] = train_every_bs("finetune", fresh)
        for r in runs[name].values():
            r.chosen = name  # what each BS's manifest entry reports if this is kept
    scores: dict[str, Array] = {}
    val_me: dict[str, list[float]] = {}
    for m, results in runs.items():
        models = {bs: r.model for bs, r in results.items()}
        scores[m], me = fused_scores(models, val, cfg, joint)
        val_me[m] = [me]
    criterion = f"fused validation {'ME' if cfg.select == 'me' else 'NLL'}"
    chosen, reason, candidates = choose_mode(scores, val_me, 1, criterion)
    log.info("site auto: %s (%s)", chosen, reason)
    choice = {"rule": "fused", "chosen_mode": chosen, "reason": reason, "candidates": candidates}
    return runs[chosen], choice


def _keep_tracks(
    walks: dict[str, TargetResult],
    walks_joint: TargetResult | None,
    plain: dict[str, TargetResult],
    plain_joint: TargetResult | None,
    val: SiteFingerprints,
    cfg: TrainConfig,
) -> dict[str, Any]:
    """Whether a site trained with its unlabelled tracks keeps them: yes unless the site
    trained without them fuses better on validation (`fused_scores`, the score `auto`
    compares modes by). On three held-out sites the tracks lowered the fused error on 7
    of 9 site-seeds and raised it on two of the small-error lab's, one of which its
    validation saw (docs/results/site-trust/walks)."""

    def score(results: dict[str, TargetResult], joint: TargetResult | None) -> tuple[Array, float]:
        models = {bs: r.model for bs, r in results.items()}
        return fused_scores(models, val, cfg, None if joint is None else joint.model)

    with_tracks, me_with = score(walks, walks_joint)
    without, me_without = score(plain, plain_joint)
    kept = float(with_tracks.mean()) <= float(without.mean())
    choice = {
        "kept": kept,
        "criterion": f"fused validation {'ME' if cfg.select == 'me' else 'NLL'}",
        "val_score_with": float(with_tracks.mean()),
        "val_score_without": float(without.mean()),
        "val_me_with": me_with,
        "val_me_without": me_without,
    }
    log.info("unlabelled tracks %s: %s", "kept" if kept else "dropped", choice)
    return choice


def _rmse(models: dict[str, SiteModel], val: SiteFingerprints) -> dict[str, tuple[float, float]]:
    out: dict[str, tuple[float, float]] = {}
    for bs, model in models.items():
        d = val.station(bs)
        pos, _ = predict(model.backbone, model.head, torch.from_numpy(d.csi))
        err = pos.numpy().astype(np.float64) - d.pos
        rx, ry = np.sqrt(np.mean(err**2, axis=0))
        out[bs] = (float(rx), float(ry))
    return out


def _check_sizes(train: SiteFingerprints, val: SiteFingerprints) -> None:
    for bs in train.bs_ids:
        n_train, n_val = len(train.station(bs)), len(val.station(bs))
        if n_train < MIN_TRAIN_PER_BS or n_val < MIN_VAL_PER_BS:
            raise ValueError(
                f"base station {bs!r}: {n_train} training and {n_val} validation fingerprints "
                f"after the split; at least {MIN_TRAIN_PER_BS} and {MIN_VAL_PER_BS} are needed"
            )


def _site_fingerprint(data: SiteFingerprints) -> str:
    h = hashlib.sha256(b"csipos-multi-bs-site;")
    for bs, st in data.stations.items():
        d = st.data.subset(slice(None))
        d.sample_id = data.sample_id[st.rows]
        h.update(f"{bs}:{data_fingerprint(d)};".encode())
    return h.hexdigest()


def adapt_multi_bs_site(
    repo: ModelRepository,
    site: str,
    data: SiteFingerprints,
    *,
    cfg: TrainConfig,
    mode: TargetMode,
    backbone: str | None,
    activate: bool,
    progress: ProgressFn | None,
    quiet: bool,
    scratch: bool,
    holdout: float,
    fraction: float,
    source_repo: ModelRepository | None,
    backbone_config: BackboneConfig | None,
    extra: dict[str, Any] | None,
    unlabelled: Mapping[str, UnlabelledTracks] | None = None,
) -> AdaptResult:
    """`adapt_site` for a site of two or more base stations (see the module docstring).
    ``unlabelled``: per BS id (any of the site's), tracks it saw without positions; that
    BS's training then adds the track-consistency term (`training.unlabelled`), in every
    mode, and the joint head's the instants its BSs saw together (`joint_tracks`). The
    site is also trained without them, and they are kept unless it fuses better on
    validation without (`_keep_tracks`; ``config.unlabelled_choice`` says why)."""
    from training.transfer import AdaptResult, starting_backbone, train_target, unlabelled_summary

    t0 = time.perf_counter()
    data.validate(group=site)
    tracks = dict(unlabelled or {})
    walks = dict(tracks)  # the UE-level threshold uses them even where training drops them
    unknown = sorted(set(tracks) - set(data.bs_ids))
    if unknown:
        raise ValueError(
            f"unlabelled tracks for base stations {unknown} the site does not have; "
            f"expected some of {data.bs_ids}"
        )
    for bs, t in tracks.items():
        t.validate(group=f"unlabelled {bs}")
    train, val, test = split_site(data, cfg.val_fraction, holdout, fraction, cfg.seed)
    _check_sizes(train, val)

    parent, start, background = starting_backbone(repo, backbone, source_repo, scratch)

    def report_for(tag: str) -> ProgressFn:
        def report(info: dict[str, Any]) -> None:
            if progress is not None:
                progress({**info, "phase": f"{tag}:{info.get('phase', '')}", "bs": tag})

        return report

    def train_site(
        walks: Mapping[str, UnlabelledTracks], jtracks: UnlabelledTracks | None
    ) -> tuple[dict[str, TargetResult], dict[str, Any], TargetResult | None]:
        """Every BS's model and the joint head, with these tracks (``jtracks``: the
        joint head's, `joint_tracks`): (results, auto's choice, the joint head)."""
        # The joint head depends on the parent only, so it is trained first: a site-level
        # `auto` scores every candidate mode with it in the fusion, as the site will serve.
        joint_result = (
            None
            if start is None
            else train_joint(
                start, train, val, cfg, quiet=quiet, progress=report_for(JOINT), unlabelled=jtracks
            )
        )
        joint = None if joint_result is None else joint_result.model

        def train_every_bs(m: TargetMode, backbone: Backbone | None) -> dict[str, TargetResult]:
            return {
                bs: train_target(
                    backbone,
                    train.station(bs),
                    val.station(bs),
                    cfg,
                    mode=m,
                    backbone_config=backbone_config,
                    quiet=quiet,
                    progress=report_for(bs),
                    unlabelled=walks.get(bs),
                )
                for bs in data.bs_ids
            }

        if mode == "auto" and start is not None:
            results, choice = _site_auto(start, train, val, cfg, joint, train_every_bs)
            return results, choice, joint_result
        return train_every_bs(mode, start), {}, joint_result

    jtracks = joint_tracks(tracks, data.bs_ids, joint_subsets(len(data.bs_ids)))
    results, site_choice, joint_result = train_site(tracks, jtracks)
    track_choice: dict[str, Any] = {}
    if tracks:  # kept unless the site fuses better on validation without them
        plain = train_site({}, None)
        track_choice = _keep_tracks(results, joint_result, plain[0], plain[2], val, cfg)
        track_choice["uploaded_samples"] = sum(len(t) for t in tracks.values())
        if not track_choice["kept"]:
            results, site_choice, joint_result = plain
            tracks, jtracks = {}, None
    joint = None if joint_result is None else joint_result.model

    models: dict[str, SiteModel] = {}
    per_bs: dict[str, dict[str, Any]] = {}
    summaries: dict[str, dict[str, Any]] = {}
    epochs: dict[str, int] = {}
    steps: dict[str, int] = {}
    for bs, result in results.items():
        models[bs] = result.model
        per_bs[bs] = dict(result.metrics)
        summaries[bs] = {
            **result.summary(),
            **({"mode": "auto"} if site_choice else {}),
            "train_samples": len(train.station(bs)),
            "val_samples": len(val.station(bs)),
            **unlabelled_summary(tracks.get(bs), cfg),
        }
        epochs.update({f"{bs}:{k}": v for k, v in result.report.epochs.items()})
        steps.update({f"{bs}:{k}": v for k, v in result.report.steps.items()})

    joint_summary: dict[str, Any] = {}
    if joint_result is not None:
        joint_summary = {
            **joint_result.summary(),
            "train_samples": len(joint_rows(train, _subsets(joint_result.model))),
            "val_samples": len(joint_rows(val, _subsets(joint_result.model))),
            **unlabelled_summary(jtracks, cfg),
        }
        epochs.update({f"{JOINT}:{k}": v for k, v in joint_result.report.epochs.items()})
        steps.update({f"{JOINT}:{k}": v for k, v in joint_result.report.steps.items()})

    rmse = _rmse(models, val)
    for bs, (rx, ry) in rmse.items():
        per_bs[bs]["rmse_x"], per_bs[bs]["rmse_y"] = rx, ry
    k = len(models)
    val_estimate = fused_estimate(models, val, rmse, joint)
    mean, cov, truth, _ = val_estimate
    inflation = fit_inflation(mean - truth, cov)
    by_set = inflation_by_set(models, val, rmse, joint)
    stations = data.bs_ids
    factors = set_factors(val_estimate[3], stations, by_set, inflation)
    metrics: dict[str, Any] = fused_metrics(val_estimate, k, factors)
    metrics.update(spacing_metrics(train.pos))
    metrics["fusion"] = {
        "method": FUSION,
        "inflation": inflation,
        "inflation_by_set": by_set,
        "sigma_source": "predicted" if cfg.loss == "nll" else "validation_rmse",
        "uninflated": fused_metrics(val_estimate, k),
    }
    if joint_result is not None:
        metrics["fusion"][JOINT] = {
            **joint_result.metrics,
            "base_stations": data.bs_ids,
            "subsets": _subsets(joint_result.model),
            "without": fused_metrics(fused_estimate(models, val, rmse), k),
        }
    metrics["bs"] = per_bs
    novelty: dict[str, NoveltyModel] = {}
    for bs in data.bs_ids:  # per BS: its backbone's features of its own train/val split
        model_k = fit_site_novelty(
            models[bs].backbone, train.station(bs), val.station(bs), background=background
        )
        if model_k is not None:
            novelty[bs] = model_k
            per_bs[bs]["novelty"] = model_k.summary()
    # the UE-level cross-BS check joins the BSs' median rule only where every BS has one
    consistency = fit_consistency([train, val]) if len(novelty) == len(data.bs_ids) else None
    if consistency is not None:
        metrics["consistency"] = consistency.summary()
    ue_novelty = fit_walk_scale(models, novelty, consistency, walks, stations, seed=cfg.seed)
    if ue_novelty is not None:
        metrics["ue_novelty"] = ue_novelty
    test_metrics = None
    if test is not None:
        test_estimate = fused_estimate(models, test, rmse, joint)
        test_factors = set_factors(test_estimate[3], stations, by_set, inflation)
        test_metrics = fused_metrics(test_estimate, k, test_factors)
        metrics["test"] = test_metrics
        for bs in data.bs_ids:
            d = test.station(bs)
            if len(d):
                m = models[bs]
                pos, sigma = predict(m.backbone, m.head, torch.from_numpy(d.csi))
                sig = None if sigma is None else sigma.numpy()
                per_bs[bs]["test"] = evaluate(pos.numpy(), sig, d.pos)
                if bs in novelty:
                    scores = novelty[bs].score(backbone_features(m.backbone, d.csi), d.csi)
                    per_bs[bs]["novelty"]["test_false_alarm"] = float(np.mean(out_of_site(scores)))
        if consistency is not None:
            fired = out_of_site(consistency.score(spatial_by_bs(test)))
            metrics["consistency"]["test_false_alarm"] = float(np.mean(fired))

    chosen = ",".join(f"{bs}={s['chosen_mode']}" for bs, s in summaries.items())
    training: dict[str, Any] = {
        **cfg.to_dict(),
        "mode": "scratch" if scratch else mode,
        "chosen_mode": chosen,
        "backbone": None if parent is None else f"{parent[0]}:{parent[1]}",
        "base_stations": data.bs_ids,
        "bs": summaries,
        **({JOINT: joint_summary} if joint_summary else {}),
        **({"site_choice": site_choice} if site_choice else {}),
        "train_samples": len(train),
        "val_samples": len(val),
        "holdout": holdout,
        "fraction": fraction,
        "torch_threads": torch.get_num_threads(),
        "inputs": next(iter(models.values())).backbone.config.inputs,
        "unlabelled_samples": sum(len(t) for t in tracks.values()),
        # one walk seen by several BSs is one track (a recording's ids are shared)
        "unlabelled_tracks": len({int(k) for t in tracks.values() for k in np.unique(t.track)}),
        "track_pairs": sum(summaries[bs]["track_pairs"] for bs in data.bs_ids),
        "found_pairs": sum(summaries[bs]["found_pairs"] for bs in data.bs_ids),
        **({"unlabelled_choice": track_choice} if track_choice else {}),
        **(extra or {}),
    }
    pool_samples = len(train) + len(val)
    site_version = save_multi_bs_site_model(
        repo,
        site,
        models,
        parent=parent,
        config=training,
        data_fingerprint=_site_fingerprint(data),
        metrics=metrics,
        activate=activate,
        novelty=novelty or None,
        joint=joint,
        consistency=consistency,
    )
    wall = time.perf_counter() - t0
    log.info(
        "site %s %s: %d base stations (%s), fused val ME %.3f m in %.1f s",
        site,
        site_version,
        len(models),
        chosen,
        metrics["me"],
        wall,
    )
    return AdaptResult(
        site=site,
        version=site_version,
        parent=parent,
        metrics=metrics,
        epochs=epochs,
        samples=pool_samples,
        wall_s=wall,
        steps=steps,
        chosen_mode=chosen,
        test=test_metrics,
    )
