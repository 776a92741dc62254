"""Target training: a pre-trained backbone plus a fresh head on a new site (paper eq. 6).

The modes are phase lists for the one loop in `training.fit`:

- ``finetune``: every parameter from the start, at ``lr``;
- ``gradual``: a short head-only warm-up (``head_warmup_steps``), then every
  parameter at ``lr * unfreeze_lr_factor`` with its own patience; the final
  model is the better of the two phases on validation (nothing gates the
  unfrozen phase away);
- ``gradual-paper``: the paper's literal recipe, kept for the reproduction:
  head only until the validation loss stops improving, then everything at
  ``lr * 0.1``;
- ``head``: head only throughout (backbone bit-identical);
- ``auto`` (the default): trains ``finetune``, ``head`` and, below
  ``auto_gradual_max`` labelled samples (500), ``gradual`` (and, from
  ``auto_scratch_min`` labelled samples, ``scratch``: every layer from random
  initialisation, and ``fresh-dense``: fine-tuning with the backbone's ``dense`` layer
  drawn afresh, so a site with thousands of labels is not held back by a backbone, or
  by the part of it, that does not suit it) and keeps the one with the best validation
  score (``select``: the plain loss by default, NLL, or MSE for MSE sites; or the ME).
  The candidates share work: one head warm-up starts both ``gradual`` and ``head``,
  and head-only steps run on cached backbone features. With fewer than
  ``auto_min_val`` validation samples the score is pooled over ``auto_folds``
  disjoint validation splits so the choice is not noise; ``finetune`` (the mode
  that measured best on held-out sites) is kept unless another mode beats it
  by more than one standard error of the paired per-sample difference.

Every phase of target training keeps the checkpoint with the best validation
score of `TrainConfig.select` and decays its rate by `TrainConfig.schedule`. The
defaults (the loss, plateau) keep sigma calibrated; ``select="me"`` with the
cosine schedule gives 13-17 % less error at 500 labels but heavy-tailed errors
that over-cover at 1 sigma (docs/results/transfer, "The target recipe in the
product"); ``select="calibrated"`` (the NLL after sigma's calibration factor)
0.77-0.92x at 500 and 1,000 labels, with the same over-coverage ("Checkpoints by
the calibrated NLL").

`adapt_site` is the one site pipeline: what the service runs in a worker
process and what `csipos train site|scratch` call: split (optional test
holdout and data fraction), train, evaluate, publish, activate.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from training.augment import site_training_set
from training.calibration import nll_factor
from training.checkpoint import load_backbone, load_background, save_site_model
from training.config import (
    DEFAULT_TARGET_MODE,
    LossName,
    StepBudget,
    TargetMode,
    TrainConfig,
    check_loss_name,
    check_mode,
)
from training.correlogram import spacing_metrics
from training.data.fingerprints import Fingerprints, data_fingerprint
from training.data.site import SiteFingerprints
from training.data.splits import fraction_subset, split_train_val, train_val_test
from training.data.unlabelled import UnlabelledTracks
from training.fit import FitReport, Phase, PhaseReport, ProgressFn, Task, fit, predict
from training.meml import RETRY_SEED_OFFSET, SourceData, train_sources
from training.metrics import evaluate_model, finish_head, nll_per_point
from training.nets import Backbone, BackboneConfig, Head, HeadConfig, SiteModel
from training.novelty import (
    DEFAULT_FALSE_ALARM,
    SINGLE_HEAD,
    Background,
    backbone_features,
    fit_site_novelty,
    out_of_site,
)
from training.repository import ModelRepository, check_name, parse_ref
from training.unlabelled import TrackPairs
from training.walk_alarm import fit_walk_scale

__all__ = [
    "AUTO_CANDIDATES",
    "FRESH_DENSE_CANDIDATE",
    "PAPER_UNFREEZE_LR_FACTOR",
    "SCRATCH_CANDIDATE",
    "AdaptResult",
    "AutoRuns",
    "TargetResult",
    "adapt_site",
    "auto_candidates",
    "auto_modes",
    "check_mode",
    "choose_mode",
    "holdout_split",
    "large_site_candidates",
    "starting_backbone",
    "target_phases",
    "train_target",
]

log = logging.getLogger(__name__)

PAPER_UNFREEZE_LR_FACTOR = 0.1
"""``gradual-paper``: the paper lowers the rate tenfold when the backbone unfreezes."""
AUTO_CANDIDATES: tuple[TargetMode, ...] = ("finetune", "gradual", "head")
"""What ``auto`` trains on every split (`auto_modes` leaves ``gradual`` out from
``TrainConfig.auto_gradual_max`` labels): ``head`` costs almost nothing on cached
features, and which one wins depends on the site, not only on its size."""
SCRATCH_CANDIDATE = "scratch"
"""``auto``'s candidate from random initialisation, from ``TrainConfig.auto_scratch_min``
labelled samples on."""
FRESH_DENSE_CANDIDATE = "fresh-dense"
"""``auto``'s candidate that fine-tunes the backbone with its ``dense`` layer drawn afresh
(`Backbone.with_fresh_dense`), from ``TrainConfig.auto_scratch_min`` labelled samples on:
the convolutions transfer at every label budget, the source ``dense`` layer only while
labels are few (docs/results/transfer, "Which layers transfer")."""


def target_phases(mode: TargetMode, config: TrainConfig, n_train: int) -> list[Phase]:
    """The phase list of a single target-training mode (see the module docstring)."""
    mode = check_mode(mode)
    if mode == "auto":
        raise ValueError("auto is a choice between modes, not a phase list; use train_target")
    budget = config.budget(n_train)

    def phase(name: str, train: str, lr: float, b: StepBudget = budget) -> Phase:
        return Phase(
            name,
            "all" if train == "all" else "head",
            lr,
            b,
            0.5,
            config.lr_patience,
            select=config.select,
            schedule=config.schedule,
        )

    if mode == "finetune":
        return [phase("finetune", "all", config.lr)]
    if mode == "head":
        return [phase("head", "head", config.lr)]
    if mode == "gradual-paper":
        return [
            phase("head", "head", config.lr),
            phase("unfrozen", "all", config.lr * PAPER_UNFREEZE_LR_FACTOR),
        ]
    return [
        phase("warmup", "head", config.lr, _warmup_budget(config, budget)),
        phase("unfrozen", "all", config.lr * config.unfreeze_lr_factor),
    ]


def _warmup_budget(config: TrainConfig, budget: StepBudget) -> StepBudget:
    steps = min(config.head_warmup_steps, budget.max_steps)
    return StepBudget(steps, steps, min(budget.eval_every, max(1, steps)), budget.patience)


@dataclass
class TargetResult:
    """A trained site model with its fit report and validation metrics (metres).

    ``mode`` is what was asked for, ``chosen`` the mode the model was trained with
    (they differ for ``auto``); ``candidates`` holds every candidate's validation
    score for ``auto``, and ``reason`` says why the choice fell as it did.
    """

    model: SiteModel
    report: FitReport
    metrics: dict[str, float]
    mode: TargetMode
    config: TrainConfig
    chosen: str
    """A `TargetMode`, or the name of one of ``auto``'s large-site candidates
    (`SCRATCH_CANDIDATE`, `FRESH_DENSE_CANDIDATE`) when it kept one."""
    candidates: dict[str, dict[str, float]] = field(default_factory=dict)
    reason: str = ""
    retried: bool = False

    @property
    def degenerate(self) -> bool:
        return bool(self.report.degenerate_tasks)

    def summary(self) -> dict[str, Any]:
        """What manifests and reports record about the choice and the run's health."""
        return {
            "mode": self.mode,
            "chosen_mode": self.chosen,
            "candidates": self.candidates,
            "choice_reason": self.reason,
            "degenerate": self.degenerate,
            "retried": self.retried,
            "epochs_run": self.report.epochs,
            "steps_run": self.report.steps,
            "final_phase": self.report.final_phase,
        }


def train_target(
    backbone: Backbone | None,
    train: Fingerprints,
    val: Fingerprints,
    config: TrainConfig,
    *,
    mode: TargetMode = DEFAULT_TARGET_MODE,
    head_config: HeadConfig | None = None,
    backbone_config: BackboneConfig | None = None,
    quiet: bool = False,
    progress: ProgressFn | None = None,
    device: torch.device | str = "cpu",
    head_init: Head | None = None,
    unlabelled: UnlabelledTracks | None = None,
) -> TargetResult:
    """Train a fresh head (and, by mode, the backbone) on the target's train split.

    ``backbone`` is copied, never changed, so one loaded backbone can serve many
    runs. ``backbone=None`` trains from scratch: a random ``backbone_config``
    backbone, all layers (``mode`` must be ``finetune`` or ``auto``). A run that
    ends degenerate is retried once from another head initialisation
    (``config.retry_degenerate``).

    ``head_init`` (a meta-learned head, `training.meta`) replaces the random head
    initialisation: its weights are copied, the target's own position normalisation
    fitted, its sigma scale reset. A degenerate run's retry starts from a random head.

    ``unlabelled``: tracks of the same site without positions; every mode (and scratch)
    then adds the track-consistency term (`training.unlabelled`, ``config.track_weight``).
    """
    mode = check_mode(mode)
    # built once: `auto` trains several candidates (and folds) on the same pairs
    pairs = None if unlabelled is None else TrackPairs.for_config(unlabelled, config)
    if head_init is not None and head_init.loss != config.loss:
        raise ValueError(f"head_init is a {head_init.loss} head; the config trains {config.loss}")
    if backbone is None:
        if mode not in ("finetune", "auto"):
            raise ValueError(f"mode {mode!r} needs a pre-trained backbone; scratch trains all")
        return _scratch(
            train, val, config, backbone_config, head_config, quiet, progress, device, pairs
        )
    if mode == "auto":
        runs = auto_candidates(
            backbone,
            train,
            val,
            config,
            head_config=head_config,
            quiet=quiet,
            progress=progress,
            device=device,
            head_init=head_init,
            pairs=pairs,
        )
        chosen, why, candidates = choose_mode(
            runs.scores, runs.val_me, runs.folds, _criterion(config)
        )
        model, report = runs.runs[chosen]
        metrics = _finish(model, report, train, val, config)
        return TargetResult(model, report, metrics, "auto", config, chosen, candidates, why)
    run = _Trainer(
        backbone, train, val, config, head_config, quiet, progress, device, head_init, pairs
    )
    model, report = run.mode(mode, config.seed)
    retried = False
    if report.degenerate_tasks and config.retry_degenerate:
        again = run.mode(mode, config.seed + RETRY_SEED_OFFSET)
        if again[1].best_score < report.best_score:
            model, report = again
        retried = True
    metrics = _finish(model, report, train, val, config)
    return TargetResult(model, report, metrics, mode, config, mode, retried=retried)


def _finish(
    model: SiteModel,
    report: FitReport,
    train: Fingerprints,
    val: Fingerprints,
    config: TrainConfig,
) -> dict[str, float]:
    metrics = finish_head(model.backbone, model.head, val, config, reference=train)
    if report.degenerate_tasks:
        metrics["degenerate"] = 1.0
    return metrics


def _scratch(
    train: Fingerprints,
    val: Fingerprints,
    config: TrainConfig,
    backbone_config: BackboneConfig | None,
    head_config: HeadConfig | None,
    quiet: bool,
    progress: ProgressFn | None,
    device: torch.device | str,
    pairs: TrackPairs | None = None,
) -> TargetResult:
    source = SourceData.in_memory(site_training_set(train, val, config), val)
    source.tracks = pairs
    source.reference = train  # the neighbour terms on the labelled fingerprints alone
    result = train_sources(
        {"target": source},
        config,
        backbone_config=backbone_config,
        head_config=head_config,
        quiet=quiet,
        progress=progress,
        device=device,
        target_recipe=True,
    )
    return TargetResult(
        result.site_model("target").eval(),
        result.report,
        result.metrics["target"],
        "finetune",
        config,
        "finetune",
        reason="no backbone: every layer from random initialisation",
        retried=result.retried,
    )


class _Trainer:
    """Trains candidate modes on one (train, val) split from one backbone, sharing the
    head warm-up between ``gradual`` and ``head``."""

    def __init__(
        self,
        backbone: Backbone,
        train: Fingerprints,
        val: Fingerprints,
        config: TrainConfig,
        head_config: HeadConfig | None,
        quiet: bool,
        progress: ProgressFn | None,
        device: torch.device | str,
        head_init: Head | None = None,
        pairs: TrackPairs | None = None,
    ) -> None:
        # `augment_copies`: the copies join each split's training part, never its validation
        self.train = site_training_set(train, val, config)
        # ... and the budget counts passes over the labelled fingerprints, not the copies:
        # over the copies, the same error for 3.3x the time (docs/results/transfer/augment)
        self.labelled = len(train)
        self.backbone, self.val, self.config = backbone, val, config
        self.tracks = pairs
        self.head_init = head_init
        self.head_config, self.quiet, self.device = head_config, quiet, device
        self.progress = progress
        self._warm: dict[int, tuple[SiteModel, FitReport]] = {}

    def _fit(
        self,
        model: SiteModel,
        phases: list[Phase],
        start: PhaseReport | None = None,
        label: str = "",
    ) -> FitReport:
        cfg = self.config
        progress = self.progress
        if progress is not None and label:
            outer = progress

            def progress(info: dict[str, Any]) -> None:
                outer({**info, "candidate": label})

        task = Task.from_fingerprints("target", model.head, self.train, self.val)
        task.tracks = self.tracks
        report = fit(
            model.backbone,
            [task],
            phases,
            loss=cfg.loss,
            beta=cfg.beta,
            batch_size=cfg.batch_size,
            seed=cfg.seed,
            weight_decay=cfg.weight_decay,
            quiet=self.quiet,
            progress=progress,
            device=self.device,
            start=start,
            track_weight=cfg.track_weight,
            anchor_weight=cfg.anchor_weight,
        )
        model.cpu()
        return report

    def fresh(self, init_seed: int) -> SiteModel:
        """A copy of the backbone with a new head: ``head_init``'s weights for the first
        initialisation (``config.seed``) when given, else random ones from ``init_seed``."""
        if self.head_init is not None and init_seed == self.config.seed:
            head = copy.deepcopy(self.head_init)
            head.reset_calibration()
        else:
            head = Head(self.head_config, loss=self.config.loss, seed=init_seed + 1)
        head.fit_position_normalisation(self.train.pos)
        return SiteModel(copy.deepcopy(self.backbone), head)

    def mode(
        self, mode: TargetMode, init_seed: int, label: str = ""
    ) -> tuple[SiteModel, FitReport]:
        """Train one mode from a fresh head; ``gradual`` and ``head`` reuse the warm-up."""
        phases = target_phases(mode, self.config, self.labelled)
        if mode not in ("gradual", "head"):
            model = self.fresh(init_seed)
            return model, self._fit(model, phases, label=label or mode)
        warm_model, warm_report = self.warm_up(init_seed)
        model = copy.deepcopy(warm_model)
        rest = phases[1:] if mode == "gradual" else phases
        report = self._fit(model, rest, start=warm_report.phases[0], label=label or mode)
        report.samples += warm_report.samples
        report.wall_s += warm_report.wall_s
        return model, report

    def warm_up(self, init_seed: int) -> tuple[SiteModel, FitReport]:
        """The head-only warm-up of ``gradual`` (also where ``head`` continues from), once."""
        if init_seed not in self._warm:
            model = self.fresh(init_seed)
            warmup = target_phases("gradual", self.config, self.labelled)[0]
            report = self._fit(model, [warmup], label="warmup")
            self._warm[init_seed] = (model, report)
        return self._warm[init_seed]


def _auto_splits(
    train: Fingerprints, val: Fingerprints, config: TrainConfig
) -> list[tuple[Fingerprints, Fingerprints]]:
    """Fold 0 is the given split; with a small validation set, up to ``auto_folds - 1`` more
    disjoint validation sets of the same size are carved from the training part."""
    splits = [(train, val)]
    if len(val) >= config.auto_min_val:
        return splits
    n_val = len(val)
    extra = min(config.auto_folds - 1, len(train) // max(1, n_val) - 1)
    if extra < 1:
        return splits
    pool = Fingerprints.concat([train, val])
    order = np.random.default_rng(config.seed).permutation(len(train))
    for j in range(extra):
        held = np.sort(order[j * n_val : (j + 1) * n_val])
        rest = np.setdiff1d(np.arange(len(pool)), held)
        splits.append((pool.subset(rest), pool.subset(held)))
    return splits


def _per_sample_score(
    model: SiteModel, data: Fingerprints, config: TrainConfig
) -> npt.NDArray[np.float64]:
    """What ``auto`` compares candidates by, per validation sample, in metres: the error
    (``select="me"``), else the loss (NLL summed over x and y, after sigma's per-axis
    factor with ``select="calibrated"``, or squared error)."""
    pos_t, sigma_t = predict(model.backbone, model.head, torch.from_numpy(data.csi))
    err = pos_t.double().numpy() - data.pos.astype(np.float64)
    if config.select == "me":
        return np.asarray(np.sqrt(np.square(err).sum(axis=1)))
    if config.loss == "mse" or sigma_t is None:
        return np.asarray(np.square(err).sum(axis=1))
    sigma = sigma_t.double().numpy()
    if config.select == "calibrated":  # the factor `training.fit`'s score assumes
        sigma = sigma * nll_factor(err, sigma)
    return nll_per_point(pos_t, sigma, data.pos)


@dataclass
class AutoRuns:
    """Every candidate ``auto`` trained, before the choice: per-sample validation scores
    pooled over the splits (`_per_sample_score`), validation ME per split, and each
    candidate's model and report on the first split (the one kept if it is chosen)."""

    scores: dict[str, npt.NDArray[np.float64]]
    val_me: dict[str, list[float]]
    runs: dict[str, tuple[SiteModel, FitReport]]
    folds: int


def auto_candidates(
    backbone: Backbone,
    train: Fingerprints,
    val: Fingerprints,
    config: TrainConfig,
    *,
    head_config: HeadConfig | None = None,
    quiet: bool = True,
    progress: ProgressFn | None = None,
    device: torch.device | str = "cpu",
    head_init: Head | None = None,
    pairs: TrackPairs | None = None,
) -> AutoRuns:
    """Train what ``auto`` chooses between (`auto_modes` on every split, and the
    `large_site_candidates` on the one split they run on) and score each on validation."""
    splits = _auto_splits(train, val, config)
    modes = auto_modes(len(train) + len(val), config)
    losses: dict[str, list[npt.NDArray[np.float64]]] = {m: [] for m in modes}
    val_me: dict[str, list[float]] = {}
    runs: dict[str, tuple[SiteModel, FitReport]] = {}

    def keep(name: str, model: SiteModel, report: FitReport, va: Fingerprints) -> None:
        losses.setdefault(name, []).append(_per_sample_score(model, va, config))
        val_me.setdefault(name, []).append(report.best_val_me)
        runs.setdefault(name, (model, report))  # the first split's

    large = large_site_candidates(len(train) + len(val), len(splits), config)
    if SCRATCH_CANDIDATE in large:
        # One split (validation alone is large enough), so it is scored on the same
        # samples as the modes; the same recipe as `train_target(None, ...)`.
        alone = _scratch(
            train, val, config, backbone.config, head_config, quiet, progress, device, pairs
        )
        keep(SCRATCH_CANDIDATE, alone.model, alone.report, val)
    for k, (tr, va) in enumerate(splits):
        trainer = _Trainer(
            backbone, tr, va, config, head_config, quiet, progress, device, head_init, pairs
        )
        for mode in modes:
            label = mode if len(splits) == 1 else f"{mode}[{k + 1}/{len(splits)}]"
            keep(mode, *trainer.mode(mode, config.seed, label), va)
    if FRESH_DENSE_CANDIDATE in large:
        # a meta-learned head was learned on the old `dense` features: a random head here
        fresh = _Trainer(
            backbone.with_fresh_dense(config.seed),
            train,
            val,
            config,
            head_config,
            quiet,
            progress,
            device,
            None,
            pairs,
        )
        model, report = fresh.mode("finetune", config.seed, FRESH_DENSE_CANDIDATE)
        keep(FRESH_DENSE_CANDIDATE, model, report, val)
    scores = {m: np.concatenate(v) for m, v in losses.items()}
    return AutoRuns(scores, val_me, runs, len(splits))


def auto_modes(labelled: int, config: TrainConfig) -> tuple[TargetMode, ...]:
    """The modes ``auto`` trains on every split: `AUTO_CANDIDATES`, without ``gradual``
    from ``config.auto_gradual_max`` labelled samples (train + validation) on."""
    if config.auto_gradual_max is not None and labelled >= config.auto_gradual_max:
        return tuple(m for m in AUTO_CANDIDATES if m != "gradual")
    return AUTO_CANDIDATES


def large_site_candidates(labelled: int, splits: int, config: TrainConfig) -> tuple[str, ...]:
    """What ``auto`` also trains once a site has ``auto_scratch_min`` labelled samples and
    one validation split: `SCRATCH_CANDIDATE` and `FRESH_DENSE_CANDIDATE` (else none)."""
    enough = config.auto_scratch_min is not None and labelled >= config.auto_scratch_min
    return (SCRATCH_CANDIDATE, FRESH_DENSE_CANDIDATE) if enough and splits == 1 else ()


def _criterion(config: TrainConfig) -> str:
    """How ``auto``'s reason names its score."""
    if config.select == "me":
        return "validation ME"
    if config.loss == "mse":
        return "validation MSE"
    return "calibrated validation NLL" if config.select == "calibrated" else "validation NLL"


def choose_mode(
    pooled: dict[str, npt.NDArray[np.float64]],
    val_me: dict[str, list[float]],
    folds: int,
    criterion: str = "validation score",
) -> tuple[str, str, dict[str, dict[str, float]]]:
    """Lowest mean validation score (``val_score``: per-sample error or loss) wins, but
    ``finetune`` stays unless beaten by more than one standard error of the paired
    per-sample difference."""
    base = pooled["finetune"]
    candidates: dict[str, dict[str, float]] = {}
    for mode, values in pooled.items():
        diff = values - base
        se = float(diff.std(ddof=1) / math.sqrt(len(diff))) if len(diff) > 1 else math.inf
        candidates[mode] = {
            "val_score": float(values.mean()),
            "val_me": float(np.mean(val_me[mode])),
            "diff_vs_finetune": float(diff.mean()),
            "se_vs_finetune": se if mode != "finetune" else 0.0,
            "folds": float(folds),
            "n_val": float(len(values)),
        }
    best = min(pooled, key=lambda m: (candidates[m]["val_score"], m != "finetune"))
    if best == "finetune":
        return (
            "finetune",
            f"finetune has the lowest {criterion} over {folds} split(s)",
            candidates,
        )
    c = candidates[best]
    if -c["diff_vs_finetune"] > c["se_vs_finetune"]:
        why = (
            f"{best} beats finetune on {criterion} by {-c['diff_vs_finetune']:.3f} per sample "
            f"(> 1 SE = {c['se_vs_finetune']:.3f}) over {folds} split(s)"
        )
        return best, why, candidates
    why = (
        f"{best} was lowest but within 1 SE ({c['se_vs_finetune']:.3f}) of finetune over "
        f"{folds} split(s): finetune kept"
    )
    return "finetune", why, candidates


def holdout_split(
    data: Fingerprints, holdout: float, fraction: float, seed: int
) -> tuple[Fingerprints, Fingerprints | None]:
    """(the labelled pool to train on, the held-out test set or None).

    ``holdout`` of the data (split by ``seed``) is set aside for testing; ``fraction`` of
    the rest is kept (nested across fractions). `csipos evaluate --holdout H --seed S`
    tests on exactly the same points.
    """
    if not 0.0 <= holdout < 1.0:
        raise ValueError(f"holdout={holdout}, expected in [0, 1)")
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction={fraction}, expected in (0, 1]")
    split = train_val_test(len(data), 0.0, holdout, seed)
    chosen = fraction_subset(split.train, fraction, seed)
    return data.subset(chosen), data.subset(split.test) if len(split.test) else None


@dataclass
class AdaptResult:
    """What `adapt_site` made: the site version, validation metrics, epochs per phase."""

    site: str
    version: str
    parent: tuple[str, str] | None
    metrics: dict[str, Any]
    epochs: dict[str, int]
    samples: int
    wall_s: float
    steps: dict[str, int] = field(default_factory=dict)
    chosen_mode: str = ""
    test: dict[str, float] | None = None


def unlabelled_summary(tracks: UnlabelledTracks | None, cfg: TrainConfig) -> dict[str, int]:
    """What a manifest records about the unlabelled tracks a version was trained with."""
    if tracks is None:
        return {"unlabelled_samples": 0, "unlabelled_tracks": 0, "track_pairs": 0, "found_pairs": 0}
    pairs = TrackPairs.for_config(tracks, cfg)
    return {
        "unlabelled_samples": len(tracks),
        "unlabelled_tracks": tracks.tracks,
        "track_pairs": len(pairs),
        "found_pairs": pairs.found,
    }


def starting_backbone(
    repo: ModelRepository,
    backbone: str | None,
    source_repo: ModelRepository | None = None,
    scratch: bool = False,
) -> tuple[tuple[str, str] | None, Backbone | None, Background | None]:
    """The (name, version), loaded backbone and corpus background (for the out-of-site
    detector, `training.novelty`) a site adapts from: ``backbone`` (``name`` or ``name:vN``)
    in ``source_repo`` (default ``repo``), the default backbone when None, nothing with
    ``scratch``."""
    if scratch:
        return None, None, None
    source = source_repo or repo
    name, version = (
        parse_ref(backbone) if backbone is not None else (source.default_backbone(), None)
    )
    version = source.resolve("backbone", name, version)
    return (
        (name, version),
        load_backbone(source, name, version),
        load_background(source, name, version),
    )


def adapt_site(
    repo: ModelRepository,
    site: str,
    data: Fingerprints | SiteFingerprints,
    *,
    backbone: str | None = None,
    mode: TargetMode = DEFAULT_TARGET_MODE,
    loss: LossName = "nll",
    val_fraction: float = 0.2,
    seed: int = 0,
    activate: bool = True,
    progress: ProgressFn | None = None,
    config: TrainConfig | None = None,
    quiet: bool = True,
    scratch: bool = False,
    holdout: float = 0.0,
    fraction: float = 1.0,
    source_repo: ModelRepository | None = None,
    backbone_config: BackboneConfig | None = None,
    extra: dict[str, Any] | None = None,
    novelty_false_alarm: float = DEFAULT_FALSE_ALARM,
    unlabelled: UnlabelledTracks | Mapping[str, UnlabelledTracks] | None = None,
) -> AdaptResult:
    """Train, publish and (unless ``activate=False``) activate a new version of ``site``.

    ``backbone`` is ``"name"`` (its active version) or ``"name:vN"`` in
    ``source_repo`` (default ``repo``); None takes the repository's default
    backbone; ``scratch=True`` uses none (a random ``backbone_config`` backbone). ``holdout``
    of ``data`` is first set aside as a test set and ``fraction`` of the rest
    kept (`holdout_split`); ``val_fraction`` of that (split by ``seed``) is held
    out for early stopping, the mode choice and the reported metrics.
    ``config`` sets the other hyper-parameters; its loss, seed and val_fraction
    are replaced by the arguments here. ``extra`` goes into the manifest's
    training config (e.g. where the data came from). The site's out-of-site detector
    (`training.novelty`: feature mean and covariance on the train split, threshold at
    ``novelty_false_alarm`` on the validation split) is published with the model;
    ``metrics["novelty"]`` summarises it (and its false-alarm rate on the test set).

    ``data`` may be a `SiteFingerprints` (a multi-BS upload): with two or more base
    stations each gets its own model, trained the same way on one split of the
    positions (`training.multibs`); with one it is that BS's fingerprints.

    ``unlabelled``: tracks the site's BS saw without positions (`training.data.unlabelled`),
    used by the track-consistency term (`training.unlabelled`, ``config.track_weight``);
    at a multi-BS site a mapping from BS id to that BS's tracks. The manifest's training
    config records ``unlabelled_samples``, ``unlabelled_tracks`` and ``track_pairs`` (0
    without tracks; per BS too at a multi-BS site).
    """
    t0 = time.perf_counter()
    check_name(site, "site id")
    mode = check_mode(mode)
    loss = check_loss_name(loss)
    cfg = (config or TrainConfig()).replace(loss=loss, seed=seed, val_fraction=val_fraction)
    if isinstance(data, SiteFingerprints) and len(data.stations) > 1:
        from training.multibs import adapt_multi_bs_site

        if isinstance(unlabelled, UnlabelledTracks):
            raise ValueError(
                "a multi-BS site takes unlabelled tracks per base station (a mapping from BS "
                "id to tracks), got one set of tracks"
            )
        return adapt_multi_bs_site(
            repo,
            site,
            data,
            cfg=cfg,
            mode=mode,
            backbone=backbone,
            activate=activate,
            progress=progress,
            quiet=quiet,
            scratch=scratch,
            holdout=holdout,
            fraction=fraction,
            source_repo=source_repo,
            backbone_config=backbone_config,
            extra=extra,
            unlabelled=unlabelled,
        )
    ids = list(data.stations) if isinstance(data, SiteFingerprints) else None
    if isinstance(data, SiteFingerprints):
        data = next(iter(data.stations.values())).data
    if isinstance(unlabelled, Mapping):  # one BS: its tracks, if any
        if len(unlabelled) > 1 or (ids is not None and set(unlabelled) - set(ids)):
            raise ValueError(
                f"unlabelled tracks for base stations {sorted(unlabelled)}; this site has "
                f"one base station ({ids or 'unnamed'})"
            )
        unlabelled = next(iter(unlabelled.values()), None)
    if unlabelled is not None:
        unlabelled.validate(group="unlabelled")
    data.validate(group=site)
    pool, test_data = holdout_split(data, holdout, fraction, seed)
    train, val = split_train_val(pool, cfg.val_fraction, cfg.seed)

    parent, start, background = starting_backbone(repo, backbone, source_repo, scratch)
    result = train_target(
        start,
        train,
        val,
        cfg,
        mode=mode,
        backbone_config=backbone_config,
        quiet=quiet,
        progress=progress,
        unlabelled=unlabelled,
    )
    metrics: dict[str, Any] = dict(result.metrics)
    metrics.update(spacing_metrics(train.pos))
    novelty = fit_site_novelty(
        result.model.backbone, train, val, false_alarm=novelty_false_alarm, background=background
    )
    if novelty is not None:
        metrics["novelty"] = novelty.summary()
        walks = {SINGLE_HEAD: unlabelled} if unlabelled is not None else {}
        ue_novelty = fit_walk_scale(
            {SINGLE_HEAD: result.model},
            {SINGLE_HEAD: novelty},
            None,
            walks,
            [SINGLE_HEAD],
            false_alarm=novelty_false_alarm,
            seed=cfg.seed,
        )
        if ue_novelty is not None:
            metrics["ue_novelty"] = ue_novelty
    test = None
    if test_data is not None:
        test = evaluate_model(result.model.backbone, result.model.head, test_data)
        metrics["test"] = test
        if novelty is not None:
            feats = backbone_features(result.model.backbone, test_data.csi)
            scores = novelty.score(feats, test_data.csi)
            metrics["novelty"]["test_false_alarm"] = float(np.mean(out_of_site(scores)))
            if "ue_novelty" in metrics:  # as served: over the walks' scale
                scale = metrics["ue_novelty"]["scale"]
                fired = out_of_site(scores / scale)
                metrics["ue_novelty"]["test_false_alarm"] = float(np.mean(fired))
    training: dict[str, Any] = {
        **cfg.to_dict(),
        **result.summary(),
        "mode": "scratch" if scratch else mode,
        "backbone": None if parent is None else f"{parent[0]}:{parent[1]}",
        "train_samples": len(train),
        "val_samples": len(val),
        "holdout": holdout,
        "fraction": fraction,
        "torch_threads": torch.get_num_threads(),
        "inputs": result.model.backbone.config.inputs,
        **unlabelled_summary(unlabelled, cfg),
        **(extra or {}),
    }
    site_version = save_site_model(
        repo,
        site,
        result.model,
        parent=parent,
        config=training,
        data_fingerprint=data_fingerprint(pool),
        metrics=metrics,
        activate=activate,
        novelty=None if novelty is None else {SINGLE_HEAD: novelty},
    )
    wall = time.perf_counter() - t0
    log.info(
        "site %s %s: %s, val ME %.3f m in %.1f s",
        site,
        site_version,
        result.chosen,
        result.metrics["me"],
        wall,
    )
    return AdaptResult(
        site=site,
        version=site_version,
        parent=parent,
        metrics=metrics,
        epochs=result.report.epochs,
        samples=len(pool),
        wall_s=wall,
        steps=result.report.steps,
        chosen_mode=result.chosen,
        test=test,
    )
