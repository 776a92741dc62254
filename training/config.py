"""The one training configuration and the names that training, experiments and the
service share.

`TrainConfig` is what `training.fit` and everything above it take: the loss,
the optimiser, the budget *in optimizer steps*, the gradual-unfreezing recipe,
beta-NLL and the `auto` target mode. The experiment presets, the service's
adaptation settings and the CLI options all derive from it, so a default
changes in one place.

Why steps, not epochs: at 20 % of an 800-sample pool an epoch is two steps,
so an epoch-counted patience stopped runs after a handful of noisy updates at
the room-centroid error. A phase now runs at least ``min_steps`` steps,
evaluates every ``eval_every`` steps (about an epoch on large data, never
less than `MIN_EVAL_EVERY` steps on small data) and stops after ``patience``
evaluations without a better validation score.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass
from typing import Any, Literal

LossName = Literal["mse", "nll"]
Selection = Literal["me", "loss", "calibrated"]
SELECTIONS: tuple[Selection, ...] = ("me", "loss", "calibrated")
Schedule = Literal["cosine", "plateau"]
SCHEDULES: tuple[Schedule, ...] = ("cosine", "plateau")
LOSSES: tuple[LossName, ...] = ("mse", "nll")

TargetMode = Literal["auto", "finetune", "gradual", "gradual-paper", "head"]
TARGET_MODES: tuple[TargetMode, ...] = ("auto", "finetune", "gradual", "gradual-paper", "head")
"""Target training modes; ``auto`` (the default) trains several and keeps the best."""
DEFAULT_TARGET_MODE: TargetMode = "auto"

NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
"""Site ids and backbone names: no path traversal, safe as folder names and metric labels."""
REF_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}(:v[1-9][0-9]{0,8})?$")
"""A backbone reference: ``name`` (its active version) or ``name:vN``."""

MIN_EVAL_EVERY = 10
"""Fewest steps between two validations when ``eval_every`` is automatic."""
MAX_EVAL_EVERY = 500
"""Most steps between two validations when ``eval_every`` is automatic (huge corpora)."""
DEGENERATE_RATIO = 0.95
"""A run whose validation ME is at least this share of the centroid predictor's is degenerate."""


def check_loss_name(loss: str) -> LossName:
    """Return ``loss`` as a `LossName`, or raise a ValueError that lists the choices."""
    for name in LOSSES:
        if loss == name:
            return name
    raise ValueError(f"unknown loss {loss!r}: expected one of {', '.join(LOSSES)}")


def check_mode(mode: str) -> TargetMode:
    """Return ``mode`` as a `TargetMode`, or raise a ValueError listing the choices."""
    for m in TARGET_MODES:
        if mode == m:
            return m
    raise ValueError(
        f"unknown target training mode {mode!r}: expected one of {', '.join(TARGET_MODES)}"
    )


@dataclass(frozen=True)
class StepBudget:
    """How long one phase may train, resolved for its data size (all counts in steps)."""

    min_steps: int
    """No early stop before this many steps."""
    max_steps: int
    eval_every: int
    patience: int
    """Evaluations without a better validation score before the phase stops."""

    def __post_init__(self) -> None:
        if self.min_steps < 0 or self.max_steps < 0:
            raise ValueError(f"budget {self}: step counts must be >= 0")
        if self.eval_every < 1 or self.patience < 1:
            raise ValueError(f"budget {self}: eval_every and patience must be >= 1")


AUGMENT_MAX_COPIES = 16
"""Most perturbed copies of each labelled fingerprint (`TrainConfig.augment_copies`):
each multiplies the site's training set in memory."""


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of one training run; stored in manifests as ``to_dict()``."""

    loss: LossName = "mse"
    batch_size: int = 64
    """Samples per environment and step."""
    lr: float = 1e-3
    weight_decay: float = 0.0
    val_fraction: float = 0.1
    """Share of each environment held out for validation when no split is given."""
    seed: int = 0

    # --- budget, in optimizer steps (see the module docstring) ---
    min_steps: int = 500
    """Fewest steps of a phase before it may stop early: a 100-sample site still trains."""
    epochs: int = 100
    """Most passes over the largest environment per phase (but at least ``min_steps`` steps)."""
    max_steps: int | None = None
    """Hard cap on steps per phase (None: only ``epochs`` caps)."""
    eval_every: int | None = None
    """Steps between validations; None: one epoch, within [10, 500] steps."""
    patience: int = 15
    """Validations without a better validation score before a phase stops."""
    lr_patience: int = 4
    """Validations without improvement the plateau schedule tolerates: it halves the rate on
    the next (>= 3, so noise on a small validation set cannot collapse it). 9 helped a
    clean LOS site and cost a cluttered one (docs/results/transfer/augment)."""

    # --- many environments (MEML over a corpus) ---
    envs_per_step: int = 0
    """Environments a step takes a batch from, drawn uniformly without replacement (every
    environment weighs the same in expectation); 0: all of them every step (the paper)."""
    batched_heads: bool | None = None
    """Train the heads as one `training.nets.BatchedHeads` (gather + bmm); None: when there
    are more than 8 environments or ``envs_per_step`` samples them."""

    # --- target training recipes ---
    select: Selection = "loss"
    """Target training (a site's modes, scratch at a site): the validation score that
    keeps a checkpoint, stops a phase and lets ``auto`` choose a mode: ``loss`` (the
    plain validation loss), ``calibrated`` (the validation NLL after sigma's per-axis
    calibration factor, the sigma the service serves: the plain NLL peaks while the
    positions still improve, ``training.fit``) or ``me`` (mean error, metres).
    ``calibrated`` cut the test ME to 0.77-0.92x at 500 and 1,000 labels (labs and 8
    held-out scenes), ``me`` with the cosine schedule to 0.83-0.86x at 500, but their
    later checkpoints have heavy-tailed errors that no Gaussian sigma fits (1-sigma
    coverage 47-54 %, and 58-76 % on the demo sites with ``me``), so neither is the
    default yet (docs/results/transfer, "The target recipe in the product",
    "Checkpoints by the calibrated NLL"). Source training always selects by its loss
    (or a transfer probe)."""
    schedule: Schedule = "plateau"
    """Target training: ``plateau`` halves the rate after ``lr_patience`` validations
    without improvement; ``cosine`` decays it to 0 over each phase's ``max_steps``.
    Source training always uses the plateau schedule."""
    head_warmup_steps: int = 150
    """``gradual``: steps of the head-only warm-up before every layer trains."""
    unfreeze_lr_factor: float = 1.0
    """``gradual``: the all-layer phase runs at ``lr * unfreeze_lr_factor`` (the ablation in
    docs/results chose 1.0; ``gradual-paper`` always uses 0.1)."""
    augment_copies: int = 3
    """Target training (every mode and scratch): each labelled training fingerprint also
    enters as this many perturbed copies (`training.augment`: noise at 10-30 dB SNR, a gain
    and phase error per antenna); 0: off, the paper's recipe. At 500 labels 3 copies cut the
    shipped backbone's error in the default mode `auto` to 0.88x on the labs and 0.89x on 8
    held-out scenes (fine-tuning 0.86-0.87x; scratch gains more, 0.75-0.78x). The step
    budget counts passes over the labelled fingerprints, not the copies: counted over
    the copies it took 3.3x the time for the same error (1.00x / 0.99x,
    docs/results/transfer/augment). Only below `augment_max_labels`."""
    augment_max_labels: int | None = 1000
    """`augment_copies` apply only to sites with fewer labelled fingerprints (training +
    validation) than this; None: to every site. Fine-tuned with 3 copies, the error was
    0.87x / 0.83x at 50 / 100 labels (labs), 0.90x (labs) but 0.975x (scenes) at 1,000,
    and 1.03x at 3,000 (lab-los 1.11-1.31x, lab-nlos 0.82-0.95x), for 2-3x the time: a
    pre-registered rule put the limit at 1,000 (docs/results/transfer/augment, "Other
    label budgets")."""
    auto_folds: int = 3
    """``auto``: validation splits the choice is judged on when the validation set is small."""
    auto_min_val: int = 100
    """``auto``: below this many validation samples the choice uses ``auto_folds`` splits."""
    auto_gradual_max: int | None = 500
    """``auto`` trains its ``gradual`` candidate only at sites with fewer labelled samples
    (train + validation) than this; None: at every size. ``gradual`` costs as much as
    ``finetune`` and was rarely kept from 500 labels up: without it the error was 0.997x
    / 1.000x at 500 labels and 1.000x / 1.000x at 1,000 (labs x 5 seeds / 8 held-out
    scenes; no target-seed above 1.03x) for 0.51-0.53x the candidates' time, and a
    500-label adaptation of a ray-traced lab took 44-48 s instead of 92-96 s on 2 cores
    (both with `training.allocator`; pre-registered, docs/results/transfer/candidates).
    Below 500 labels it was kept more often and was not measured without it. Single-BS
    sites; a multi-BS site's `auto` keeps every mode (chosen by the fused score)."""
    auto_scratch_min: int | None = 2000
    """``auto``: from this many labelled samples (train + validation) it also trains a
    candidate from random initialisation (``scratch``) and one with the backbone's
    ``dense`` layer drawn afresh (``fresh-dense``), and weighs them like the modes; None:
    never. With thousands of labels a pre-trained backbone can lose to scratch (lab-nlos at
    3,000 labels, docs/results/transfer). From 1,000 instead, the candidates changed the
    chosen model on 4 of 18 held-out target-seeds and the median error not at all, for
    1.5x the time (docs/results/transfer/every-budget); the 500-label adaptation target
    is 60 s."""

    # --- the NLL ---
    beta: float = 0.5
    """beta-NLL (Seitzer et al., 2022): weights each point's NLL by sigma^(2 beta)
    (no gradient), so hard points cannot be given up by inflating sigma; 0 is the plain NLL."""
    mse_warmup_steps: int = 0
    """NLL: train the positions with the MSE for this many steps first (sigma untrained)."""
    calibrate_sigma: bool = True
    """NLL heads: after training, scale sigma per axis to fit the validation errors
    (`training.calibration`); the metrics then report ``sigma_scale_x``/``_y`` (and
    ``neighbour_*`` where the head's neighbour terms are on)."""
    retry_degenerate: bool = True
    """A run that ends degenerate (validation ME near the centroid predictor's) is trained
    once more from another initialisation; the better of the two is kept and still flagged."""

    episode_weight: float = 0.0
    """Source training: weight of the episodic ridge term (`training.fit.episode_loss`):
    every step, a linear head fitted in closed form on part of each drawn environment's
    batch is scored on the rest, so the backbone is trained for what a new site does with
    few labels (0: off). Measured in docs/results/transfer ("Episodes")."""

    # --- meta-learned sources (MAML, TB-MAML: `training.meta`) ---
    inner_lr: float = 0.01
    """MAML inner loop: plain gradient-descent rate of the per-environment adaptation
    (Finn et al.'s regression value); ``lr`` is the outer (Adam) rate."""
    inner_steps: int = 1
    """MAML inner loop: gradient steps on the support batch before the query loss."""
    first_order: bool = False
    """MAML outer gradient: False differentiates through the inner steps (second order,
    Hessian-vector products); True drops that term (FOMAML: cheaper, biased)."""

    # --- unlabelled tracks at adaptation (`training.unlabelled`) ---
    track_weight: float = 1.0
    """Weight of the track-consistency hinge when unlabelled tracks are given (0: off; the
    labelled loss has weight 1). Measured in docs/results/transfer ("Unlabelled tracks")."""
    track_vmax: float = 3.0
    """Fastest UE (m/s): consecutive samples dt apart must be within ``track_vmax * dt``."""
    track_max_gap_s: float = 0.5
    """Consecutive samples of a track further apart in time than this are not paired."""
    track_slack_m: float = 0.05
    """Added to every pair's bound (m): timing jitter, a UE a little faster than v_max."""
    found_bound_m: float = 1.0
    """Bound (m) of the pairs found among fingerprints without tracks (mutual nearest
    neighbours of their channels, `training.unlabelled.found_pairs`): near, not 0.3 m."""
    anchor_weight: float = 0.0
    """Target training from a backbone: weight of the L2-SP term (Li et al., 2018), the
    squared distance of the backbone's weights from the pre-trained ones, added while the
    backbone trains, so a few hundred labels move the features only where they must (0:
    plain fine-tuning; scratch has nothing to anchor to and ignores it)."""

    def __post_init__(self) -> None:
        check_loss_name(self.loss)
        if self.select not in SELECTIONS:
            raise ValueError(f"select={self.select!r}, expected one of {', '.join(SELECTIONS)}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule={self.schedule!r}, expected one of {', '.join(SCHEDULES)}")
        for name in (
            "epochs",
            "patience",
            "batch_size",
            "auto_folds",
            "auto_min_val",
            "inner_steps",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)}, expected >= 1")
        for name in ("min_steps", "head_warmup_steps", "mse_warmup_steps", "envs_per_step"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}={getattr(self, name)}, expected >= 0")
        if not (math.isfinite(self.anchor_weight) and self.anchor_weight >= 0):
            raise ValueError(f"anchor_weight={self.anchor_weight}, expected a finite number >= 0")
        if not 0 <= self.augment_copies <= AUGMENT_MAX_COPIES:
            raise ValueError(
                f"augment_copies={self.augment_copies}, expected 0-{AUGMENT_MAX_COPIES}"
            )
        if self.augment_max_labels is not None and self.augment_max_labels < 1:
            raise ValueError(f"augment_max_labels={self.augment_max_labels}, expected >= 1 or None")
        if self.auto_scratch_min is not None and self.auto_scratch_min < 2:
            raise ValueError(f"auto_scratch_min={self.auto_scratch_min}, expected >= 2 or None")
        if self.auto_gradual_max is not None and self.auto_gradual_max < 2:
            raise ValueError(f"auto_gradual_max={self.auto_gradual_max}, expected >= 2 or None")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"max_steps={self.max_steps}, expected >= 1 or None")
        if self.eval_every is not None and self.eval_every < 1:
            raise ValueError(f"eval_every={self.eval_every}, expected >= 1 or None")
        if self.lr_patience < 3:
            raise ValueError(f"lr_patience={self.lr_patience}, expected >= 3 validations")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr={self.lr}, expected > 0")
        if not (math.isfinite(self.inner_lr) and self.inner_lr > 0):
            raise ValueError(f"inner_lr={self.inner_lr}, expected > 0")
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError(f"val_fraction={self.val_fraction}, expected in (0, 1)")
        if not 0.0 < self.unfreeze_lr_factor <= 1.0:
            raise ValueError(f"unfreeze_lr_factor={self.unfreeze_lr_factor}, expected in (0, 1]")
        if not 0.0 <= self.beta <= 1.0:
            raise ValueError(f"beta={self.beta}, expected in [0, 1]")
        if self.seed < 0:
            raise ValueError(f"seed={self.seed}, expected >= 0")
        for name in ("track_weight", "track_slack_m", "found_bound_m", "episode_weight"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name}={value}, expected a finite number >= 0")
        for name in ("track_vmax", "track_max_gap_s"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name}={value}, expected > 0")

    def budget(self, n_train: int, *, patience: int | None = None) -> StepBudget:
        """The step budget of a phase whose largest environment has ``n_train`` samples."""
        per_epoch = max(1, math.ceil(n_train / self.batch_size))
        max_steps = max(self.min_steps, self.epochs * per_epoch)
        if self.max_steps is not None:
            max_steps = min(max_steps, self.max_steps)
        every = self.eval_every or min(max(per_epoch, MIN_EVAL_EVERY), MAX_EVAL_EVERY)
        return StepBudget(
            min_steps=min(self.min_steps, max_steps),
            max_steps=max_steps,
            eval_every=every,
            patience=patience or self.patience,
        )

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with ``changes`` (validated like a new config)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        """The config stored by ``to_dict`` (unknown keys, e.g. from older manifests, ignored)."""
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})
