"""The one training loop. MEML, DTL, scratch, fine-tuning, gradual unfreezing and
site adaptation all call `fit`; what differs between them is data:

- the `Task` list: one task (environment: its head, train and validation
  tensors) for DTL, scratch and target training, several for MEML, all
  sharing the one backbone;
- the `Phase` list: which parameters train, at which learning rate, for how
  many optimizer steps (`training.config.StepBudget`). Fine-tuning is one
  all-parameter phase; gradual unfreezing is a head-only phase followed by an
  all-parameter phase.

Each step takes one batch from *every* task, runs the backbone once on their
concatenation, each head on its slice, and minimises the sum of the per-task
losses (paper eq. 5). Each task draws its batches from its own endless stream
of reshuffled permutations, so a smaller environment is cycled rather than
dropping out of the sum, and every environment weighs the same in every step.

With hundreds of environments (``envs_per_step`` = k > 0) a step instead takes
a batch from each of k environments drawn uniformly without replacement (a
generator seeded from ``seed`` alone, so every rank draws the same ones): every
environment weighs the same in expectation, and its stream only advances when
it is drawn. Validation still covers every environment. Many heads are trained
as one `training.nets.BatchedHeads` (a gather plus one bmm per layer; by
default when there are more than `BATCH_HEADS_ABOVE` tasks or environments are
sampled) with a row-wise Adam (`_RowAdam`) whose state advances only for the
environments of the step, exactly as separate Adams on separate heads that get
no gradient. The heads are written back to the tasks' `Head`s at the end.
Tasks may hold their training rows on disk (`training.data.lazy.LazyRows`).

Budgets count steps, not epochs (see `training.config`): every ``eval_every``
steps the loop validates; a phase stops after ``patience`` validations without
a better score, but never before ``min_steps``. The schedule is per phase: a
plateau schedule halves the rate after ``lr_patience`` (>= 3) validations
without a better validation loss, or a cosine schedule decays it to 0 over the
phase's ``max_steps``. The score is per phase too: the plain validation loss
(NLL with beta = 0, or MSE; never the beta-weighted training loss) or the
validation ME (target training: the NLL of a few hundred labels peaks long
before the error stops falling), or, when a ``selector`` is given (MEML with a
`training.probe.TransferProbe`), the selector's score of the backbone: then
early stopping and the restored state follow transfer to held-out scenes, and
the plateau schedule still follows the source validation loss. Each phase is
judged on its own from its start, and when the last phase ends the best state
seen in *any* phase is restored: an unfrozen phase that needs a while to
overtake its head-only warm-up is not thrown away, and one that never does is.

Head-only phases run the frozen backbone once over the data and train the
heads on the cached features (bit-identical backbone, far fewer FLOPs).

Data are in-memory tensors indexed with seeded permutations: a DataLoader's
per-item collation costs more than this small CNN. Lazy tasks read shuffled
windows of chunks from the HDF5 file instead (see `training.data.lazy`). Under torchrun each rank
passes its own shard of every task (see `training.meml`), the model is
wrapped in DistributedDataParallel, and validation sums are all-reduced so
every rank takes the same early-stopping decisions.
"""

from __future__ import annotations

import functools
import logging
import math
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from training.config import DEGENERATE_RATIO, LossName, Schedule, Selection, StepBudget
from training.data.fingerprints import Fingerprints
from training.data.lazy import LazyRows
from training.losses import batched_position_loss, position_loss
from training.nets import BatchedHeads, Head
from training.unlabelled import TrackPairs, track_hinge

log = logging.getLogger(__name__)

ProgressFn = Callable[[dict[str, Any]], None]
HeadOutput = tuple[torch.Tensor, torch.Tensor | None]
"""What a head returns: position [B, 2] and sigma [B, 2] (nll) or None (mse), in metres."""
Trainable = Literal["all", "head"]
HeadFn = Callable[[torch.Tensor], HeadOutput]
Selector = Callable[[nn.Module], float]
"""A score of a backbone for model selection, lower is better (e.g. held-out transfer ME)."""

BATCH_HEADS_ABOVE = 8
"""By default heads are batched (`BatchedHeads`) when there are more tasks than this."""
ENV_SEED_OFFSET = 613
"""Seed offset of the environment-sampling generator (``seed * 1000 + offset``, every rank)."""
TRACK_SEED_OFFSET = 617
"""Seed offset of the generator drawing unlabelled track pairs (``seed * 1000 + offset``): its
own stream, so the labelled batches are the same with and without tracks."""


@dataclass(frozen=True)
class Phase:
    """One stage of a training strategy.

    ``train="head"`` freezes the backbone (requires_grad off, left out of the
    optimizer, kept in eval mode) so its weights stay bit-identical.
    ``mse_warmup_steps``: an NLL phase first trains the positions with the MSE
    for that many steps and validates only after them.
    """

    name: str
    train: Trainable
    lr: float
    budget: StepBudget
    lr_factor: float = 0.5
    """The plateau schedule multiplies the learning rate by this."""
    lr_patience: int = 4
    """Validations without improvement before the rate drops."""
    mse_warmup_steps: int = 0
    select: Selection = "loss"
    """What keeps a checkpoint and stops the phase: the plain validation ``loss``, the
    validation NLL after sigma's calibration (``calibrated``; the plateau schedule then
    follows it too) or the validation ``me`` (a ``selector`` given to `fit` overrides
    all three)."""
    schedule: Schedule = "plateau"
    """``plateau`` (halve after ``lr_patience`` validations without a better validation
    loss) or ``cosine`` (decay to 0 over the phase's ``max_steps``, every step)."""

    def __post_init__(self) -> None:
        if self.train not in ("all", "head"):
            raise ValueError(f"phase {self.name!r}: train={self.train!r}, expected 'all' or 'head'")
        if not self.lr > 0:
            raise ValueError(f"phase {self.name!r}: lr={self.lr}, expected > 0")
        if not 0 < self.lr_factor < 1:
            raise ValueError(f"phase {self.name!r}: lr_factor={self.lr_factor}, expected in (0, 1)")
        if self.lr_patience < 1 or self.mse_warmup_steps < 0:
            raise ValueError(
                f"phase {self.name!r}: lr_patience={self.lr_patience}, "
                f"mse_warmup_steps={self.mse_warmup_steps}; expected >= 1 and >= 0"
            )


@dataclass
class Task:
    """One environment: its head and its training and validation tensors.

    ``train`` and ``val`` are ``(csi [M,8,103,2] float32, pos [M,2] float32)``;
    ``train`` may also be `LazyRows` (rows read from the file as they are drawn).
    The head maps features to a `HeadOutput` in metres and must already hold
    the position normalisation of ``train`` (its ``pos_scale`` and ``pos_mean``
    buffers). Under torchrun, ``train`` and ``val`` are this rank's shard.
    ``tracks``: unlabelled pairs of this environment for the track-consistency term
    (`training.unlabelled`; used when `fit` gets ``track_weight`` > 0).
    """

    name: str
    head: nn.Module
    train: tuple[torch.Tensor, torch.Tensor] | LazyRows
    val: tuple[torch.Tensor, torch.Tensor]
    tracks: TrackPairs | None = None

    @classmethod
    def from_fingerprints(
        cls, name: str, head: nn.Module, train: Fingerprints, val: Fingerprints
    ) -> Task:
        """Wrap in-memory fingerprints without copying."""
        return cls(name, head, _tensors(train), _tensors(val))

    @classmethod
    def lazy(cls, name: str, head: nn.Module, train: LazyRows, val: Fingerprints) -> Task:
        """Training rows left on disk, validation in memory."""
        return cls(name, head, train, _tensors(val))

    @property
    def train_size(self) -> int:
        return len(self.train) if isinstance(self.train, LazyRows) else len(self.train[0])


@dataclass(frozen=True)
class Shard:
    """This process's place among ``world`` data-parallel ranks."""

    rank: int
    world: int


@dataclass
class PhaseReport:
    """What one phase did: steps run, where its own best validation score was, and its ME.

    ``best_step`` 0 means the phase never produced a finite validation score.
    """

    name: str
    steps: int
    best_step: int
    best_val_loss: float
    best_val_me: float
    best_val_me_per_task: dict[str, float]
    stopped_early: bool
    steps_per_epoch: int = 1
    best_score: float = math.inf
    """What selection compared: ``best_val_loss`` or ``best_val_me`` (the phase's ``select``),
    or the selector's score when one was given."""

    @property
    def epochs(self) -> int:
        """Passes over the largest task's training set (rounded up)."""
        return math.ceil(self.steps / self.steps_per_epoch)


@dataclass
class FitReport:
    """The outcome of `fit`; ``history`` has one dict per validation."""

    phases: list[PhaseReport] = field(default_factory=list)
    history: list[dict[str, Any]] = field(default_factory=list)
    samples: int = 0
    wall_s: float = 0.0
    final_phase: str = ""
    """The phase whose best state was restored at the end."""
    centroid_me_per_task: dict[str, float] = field(default_factory=dict)
    """Validation ME of predicting every point at the task's training centroid (metres)."""

    @property
    def epochs(self) -> dict[str, int]:
        """Epochs run per phase name."""
        return {p.name: p.epochs for p in self.phases}

    @property
    def steps(self) -> dict[str, int]:
        """Optimizer steps run per phase name."""
        return {p.name: p.steps for p in self.phases}

    @property
    def final(self) -> PhaseReport | None:
        """The report of the phase whose state the model ends in."""
        return next((p for p in self.phases if p.name == self.final_phase), None)

    @property
    def best_val_loss(self) -> float:
        """Validation score of the restored final state."""
        final = self.final
        return final.best_val_loss if final else math.inf

    @property
    def best_score(self) -> float:
        """What selection compared in the final phase (validation loss, ME or selector)."""
        final = self.final
        return final.best_score if final else math.inf

    @property
    def best_val_me(self) -> float:
        """Validation ME (metres) of the restored final state."""
        final = self.final
        return final.best_val_me if final else math.nan

    @property
    def degenerate_tasks(self) -> list[str]:
        """Tasks whose final validation ME is within 5 % of the centroid predictor's."""
        final = self.final
        if final is None:
            return list(self.centroid_me_per_task)
        return [
            name
            for name, centroid in self.centroid_me_per_task.items()
            if not final.best_val_me_per_task.get(name, math.inf) < DEGENERATE_RATIO * centroid
        ]

    @property
    def samples_per_s(self) -> float:
        """Training samples processed per second of wall time (all tasks, this rank)."""
        return self.samples / self.wall_s if self.wall_s > 0 else 0.0


def fit(
    backbone: nn.Module,
    tasks: Sequence[Task],
    phases: Sequence[Phase],
    *,
    loss: LossName,
    beta: float = 0.0,
    batch_size: int = 64,
    seed: int = 0,
    weight_decay: float = 0.0,
    quiet: bool = False,
    progress: ProgressFn | None = None,
    shard: Shard | None = None,
    device: torch.device | str = "cpu",
    start: PhaseReport | None = None,
    envs_per_step: int = 0,
    batched_heads: bool | None = None,
    selector: Selector | None = None,
    track_weight: float = 0.0,
    read_pool: Executor | None = None,
    anchor_weight: float = 0.0,
    episode_weight: float = 0.0,
) -> FitReport:
    """Train ``backbone`` and the tasks' heads through ``phases``; return the report.

    The modules are trained in place and end in the best validation state seen
    in any phase. ``beta`` is the beta-NLL weight of the training loss (nll
    only). ``start``: the report of an earlier phase (another `fit` call) whose
    best state the modules are in now; it competes for the final state and
    leads the report, so candidates can share one warm-up. Same seed, same
    data, same machine: same weights.

    ``envs_per_step`` k > 0: each step draws k of the tasks (see the module docstring;
    0 or >= the number of tasks: all). ``batched_heads``: train the heads as one
    `BatchedHeads` (they must all be `Head`s of one config); None: when there are
    more than `BATCH_HEADS_ABOVE` tasks or environments are sampled, if they can be.
    ``selector``: a score of the backbone (lower is better; main process only) that
    replaces the validation loss for early stopping and the choice of the state.
    ``track_weight`` > 0: every step also adds that weight times the track-consistency
    hinge (`training.unlabelled`) on a batch of each drawn task's `Task.tracks` pairs,
    drawn from their own seeded generator; 0 trains exactly as without tracks.
    ``read_pool``: where lazy tasks read their windows ahead (`LazyRows.stream`).
    ``anchor_weight`` > 0: L2-SP; every step in which the backbone trains adds that weight
    times the squared distance of its parameters from their values when `fit` was called
    (the pre-trained backbone). It is left out of the reported training loss.
    ``episode_weight`` > 0: every step in which the backbone trains adds that weight times
    the episodic ridge term (`episode_loss`) over the drawn tasks' batches (it counts in
    the reported training loss); 0 trains exactly as without it.
    """
    if selector is not None and shard is not None and shard.world > 1:
        raise ValueError("a selector scores on one process; it cannot run under torchrun")
    _check_inputs(tasks, phases, batch_size, allow_empty_val=shard is not None and shard.world > 1)
    if envs_per_step < 0:
        raise ValueError(f"envs_per_step={envs_per_step}, expected >= 0 (0: all)")
    if not (math.isfinite(episode_weight) and episode_weight >= 0):
        raise ValueError(f"episode_weight={episode_weight}, expected a finite number >= 0")
    dev = torch.device(device)
    shard = shard or Shard(0, 1)
    distributed = shard.world > 1
    n_tasks = len(tasks)
    k_envs = envs_per_step if 0 < envs_per_step < n_tasks else n_tasks
    batched = _use_batched(tasks, batched_heads, sampling=k_envs < n_tasks)
    if distributed and k_envs < n_tasks and not batched:
        raise ValueError("sampling environments under torchrun needs batched heads (Head modules)")
    # All randomness of the loop (batch order) comes from this generator; the
    # global RNG is left alone, the nets draw their init from their own seeds.
    gen = torch.Generator().manual_seed(seed * 1000 + shard.rank)
    # Which environments a step draws: the same on every rank (DDP syncs all heads).
    env_gen = torch.Generator().manual_seed(seed * 1000 + ENV_SEED_OFFSET)
    tracks = _track_setup(tasks, track_weight, batch_size, seed, dev, distributed)

    sources = [_Source(t.train, dev, batch_size, gen, read_pool) for t in tasks]
    lazy = any(s.data is None for s in sources)
    val_sets = [_on(t.val, dev) for t in tasks]
    backbone.to(dev)
    anchor = _anchor_setup(backbone, anchor_weight)
    task_heads = nn.ModuleList([t.head for t in tasks]).to(dev)
    heads: nn.Module = (
        BatchedHeads([h for h in task_heads if isinstance(h, Head)]) if batched else task_heads
    )
    joint = _Joint(backbone, heads)
    head_fns: list[HeadFn] = (
        [functools.partial(heads.env_forward, k) for k in range(n_tasks)]
        if isinstance(heads, BatchedHeads)
        else list(task_heads)
    )
    largest = max(t.train_size for t in tasks)
    # An epoch: every environment's largest training set once, in expectation.
    per_epoch = max(1, math.ceil(largest * n_tasks / (batch_size * k_envs)))
    scales = [_pos_scale(t.head, dev) for t in tasks]
    scale_all = torch.stack([s.reshape(()) for s in scales]) if batched else None
    names = [t.name for t in tasks]

    report = FitReport()
    report.centroid_me_per_task = _centroid_me(task_heads, names, val_sets, distributed)
    overall = _Best(math.inf, math.nan, {}, 0, _snapshot(joint), math.inf)
    if start is not None:
        report.phases.append(start)
        report.final_phase = start.name
        overall = _Best(
            start.best_val_loss,
            start.best_val_me,
            start.best_val_me_per_task,
            start.best_step,
            overall.state,
            start.best_score,
        )
    t0 = time.perf_counter()
    for phase in phases:
        budget = phase.budget
        max_steps = _agree_max(budget.max_steps, dev) if distributed else budget.max_steps
        # --- which parameters train in this phase ---
        train_backbone = phase.train == "all"
        backbone.requires_grad_(train_backbone)
        row_opt: _RowAdam | None = None
        if batched:
            row_opt = _RowAdam(heads.parameters(), lr=phase.lr, weight_decay=weight_decay)
            opts: list[torch.optim.Optimizer] = [row_opt]
            if train_backbone:
                opts.append(
                    torch.optim.Adam(backbone.parameters(), lr=phase.lr, weight_decay=weight_decay)
                )
        else:
            params = list(heads.parameters())
            params += list(backbone.parameters()) if train_backbone else []
            opts = [torch.optim.Adam(params, lr=phase.lr, weight_decay=weight_decay)]
        plateaus = [
            torch.optim.lr_scheduler.ReduceLROnPlateau(
                o, factor=phase.lr_factor, patience=phase.lr_patience
            )
            for o in opts
            if phase.schedule == "plateau"
        ]
        cosines = [
            torch.optim.lr_scheduler.LambdaLR(o, functools.partial(_cosine, max(1, max_steps)))
            for o in opts
            if phase.schedule == "cosine"
        ]
        # Head-only phases train on cached features of the frozen backbone.
        cached = not train_backbone and not distributed and not lazy
        inputs = [_features(backbone, s.csi) for s in sources] if cached else None
        val_inputs = [_features(backbone, csi) for csi, _ in val_sets] if cached else None
        track_inputs = [
            None if t is None else (_features(backbone, t[0].csi) if cached else t[0].csi)
            for t in tracks
        ]
        model: nn.Module = joint
        if distributed and train_backbone:
            model = nn.parallel.DistributedDataParallel(joint, device_ids=_device_ids(dev))

        best = _Best(math.inf, math.nan, {}, 0, _snapshot(joint), math.inf)
        evals_since_best = 0
        running = torch.zeros((), device=dev)
        since_eval = 0
        step = 0
        stopped_early = False
        while step < max_steps:
            # --- one step: a batch from every task ---
            backbone.train(train_backbone)
            heads.train()
            envs = _sample_envs(n_tasks, k_envs, env_gen)
            parts = [sources[e].next(None if inputs is None else inputs[e]) for e in envs]
            sizes = [len(x) for x, _ in parts]
            x = torch.cat([x for x, _ in parts])
            env_index = torch.tensor(envs, device=dev)
            feats: torch.Tensor | None = None
            if inputs is not None:
                outs = joint.heads_on(x, sizes, env_index)
            elif episode_weight > 0 and train_backbone:
                outs, feats = model(x, sizes, env_index, with_features=True)
            else:
                outs = model(x, sizes, env_index)
            step_loss: LossName = "mse" if step < phase.mse_warmup_steps else loss
            if isinstance(outs, _Stacked):
                assert scale_all is not None
                truth = torch.cat([p for _, p in parts])
                per_env = batched_position_loss(
                    step_loss,
                    outs.position,
                    outs.sigma,
                    truth.view(outs.position.shape) if outs.index is None else truth[outs.index],
                    scale_all[env_index],
                    beta,
                    outs.mask,
                )
                total = per_env.sum()
            else:
                total = torch.zeros((), device=dev)
                for (pos, sigma), (_, truth_e), e in zip(outs, parts, envs, strict=True):
                    total = total + position_loss(step_loss, pos, sigma, truth_e, scales[e], beta)
            if feats is not None:
                truth_all = torch.cat([p for _, p in parts])
                episodes = episode_loss(feats, truth_all, sizes, [scales[e] for e in envs])
                total = total + episode_weight * episodes
            for e in envs:
                track = tracks[e]
                if track is not None:
                    term = _track_term(
                        track, track_inputs[e], cached, backbone, head_fns[e], scales[e]
                    )
                    total = total + track_weight * term
            for o in opts:
                o.zero_grad(set_to_none=True)
            # L2-SP joins the gradient only; `total` stays the reported loss
            objective = (
                total + anchor_weight * _anchor_term(anchor) if anchor and train_backbone else total
            )
            objective.backward()  # type: ignore[no-untyped-call]
            if row_opt is not None:
                row_opt.rows = env_index
            for o in opts:
                o.step()
            for cos in cosines:
                cos.step()
            running += total.detach()
            since_eval += 1
            report.samples += sum(sizes)
            step += 1
            if step % budget.eval_every and step < max_steps:
                continue
            if step <= phase.mse_warmup_steps:
                running.zero_()
                since_eval = 0
                continue

            # --- validation, early stopping, LR schedule ---
            val_feats = val_inputs
            if val_feats is None and batched:
                # Hundreds of small validation sets: one backbone pass over all of them.
                val_feats = _features_across(backbone, [csi for csi, _ in val_sets])
            val_loss, val_me = _validate(
                joint,
                head_fns,
                names,
                val_sets,
                scales,
                loss,
                distributed,
                val_feats,
                calibrated=phase.select == "calibrated",
            )
            me_mean = float(np.mean(list(val_me.values())))
            if selector is not None:
                score = selector(backbone)
            else:
                score = me_mean if phase.select == "me" else val_loss
            improved = score < best.score
            if improved:
                best = _Best(val_loss, me_mean, val_me, step, _snapshot(joint), score)
                evals_since_best = 0
            else:
                evals_since_best += 1
            for plateau in plateaus:
                plateau.step(val_loss)
            row = {
                "phase": phase.name,
                "step": step,
                "epoch": step / per_epoch,
                "train_loss": float(running) / max(1, since_eval),
                "val_loss": val_loss,
                "val_me": me_mean,
                "val_me_per_task": val_me,
                "lr": opts[0].param_groups[0]["lr"],
            }
            if selector is not None:
                row["score"] = score
            running.zero_()
            since_eval = 0
            report.history.append(row)
            if not quiet and shard.rank == 0:
                log.info(_eval_line(row, improved))
            if progress is not None and shard.rank == 0:
                progress(
                    {
                        "phase": phase.name,
                        "epoch": step // per_epoch,
                        "step": step,
                        "val_me": me_mean,
                        "best_val_me": best.me,
                    }
                )
            if step >= budget.min_steps and evals_since_best >= budget.patience:
                stopped_early = step < max_steps
                break

        # --- the next phase starts from this phase's best state ---
        if best.step:
            joint.load_state_dict(best.state)
        if best.score < overall.score:
            overall = best
            report.final_phase = phase.name
        report.phases.append(
            PhaseReport(
                name=phase.name,
                steps=step,
                best_step=best.step,
                best_val_loss=best.loss,
                best_val_me=best.me,
                best_val_me_per_task=best.me_per_task,
                best_score=best.score,
                stopped_early=stopped_early,
                steps_per_epoch=per_epoch,
            )
        )
    # --- end in the best state of any phase ---
    if report.final_phase:
        joint.load_state_dict(overall.state)
    elif report.phases:
        report.final_phase = report.phases[-1].name
    if isinstance(heads, BatchedHeads):
        heads.write_back([h for h in task_heads if isinstance(h, Head)])
    backbone.requires_grad_(True)
    backbone.eval()
    task_heads.eval()
    report.wall_s = time.perf_counter() - t0
    return report


@torch.no_grad()
def predict(
    backbone: nn.Module, head: nn.Module, csi: torch.Tensor, batch_size: int = 512
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Positions (and sigmas) for ``csi`` in eval mode, in chunks to bound memory."""
    backbone.eval()
    head.eval()
    dev = next(backbone.parameters()).device
    pos_parts: list[torch.Tensor] = []
    sig_parts: list[torch.Tensor] = []
    for chunk in torch.split(csi, batch_size):
        pos, sigma = head(backbone(chunk.to(dev)))
        pos_parts.append(pos.cpu())
        if sigma is not None:
            sig_parts.append(sigma.cpu())
    if not pos_parts:
        return torch.zeros(0, 2), None
    return torch.cat(pos_parts), torch.cat(sig_parts) if sig_parts else None


@dataclass
class _Stacked:
    """Batched heads' output for k environments: [k, B, 2] (padded to the largest batch).

    ``index`` [k, B] gathers a padded layout from the concatenated batches (None when
    every batch has B samples, a plain view); ``mask`` marks the real samples.
    """

    position: torch.Tensor
    sigma: torch.Tensor | None
    index: torch.Tensor | None
    mask: torch.Tensor | None


class _Joint(nn.Module):
    """Backbone + heads as one module, so DDP sees (and syncs) every parameter."""

    def __init__(self, backbone: nn.Module, heads: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.heads = heads

    def forward(
        self, csi: torch.Tensor, sizes: list[int], envs: torch.Tensor, with_features: bool = False
    ) -> list[HeadOutput] | _Stacked | tuple[list[HeadOutput] | _Stacked, torch.Tensor]:
        # One backbone pass over all tasks' batches: bigger matmuls, fewer calls.
        feats = self.backbone(csi)
        outs = self.heads_on(feats, sizes, envs)
        # The features go out through forward (not a second backbone call) so DDP syncs them.
        return (outs, feats) if with_features else outs

    def heads_on(
        self, feats: torch.Tensor, sizes: list[int], envs: torch.Tensor
    ) -> list[HeadOutput] | _Stacked:
        """Each environment's head on its slice of ``feats`` (concatenated in ``envs`` order)."""
        if isinstance(self.heads, BatchedHeads):
            index, mask = _padding(sizes, feats.device)
            stacked = feats.view(len(sizes), sizes[0], -1) if index is None else feats[index]
            pos, sigma = self.heads(stacked, envs)
            return _Stacked(pos, sigma, index, mask)
        assert isinstance(self.heads, nn.ModuleList)
        return [
            self.heads[e](f) for e, f in zip(envs.tolist(), torch.split(feats, sizes), strict=True)
        ]


def _padding(
    sizes: list[int], dev: torch.device
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Gather index [k, B] and mask laying batches of ``sizes`` out as [k, max(sizes)]."""
    if min(sizes) == max(sizes):
        return None, None
    size_t = torch.tensor(sizes, device=dev)
    offsets = torch.cumsum(size_t, 0) - size_t
    cols = torch.arange(max(sizes), device=dev)
    mask = cols.unsqueeze(0) < size_t.unsqueeze(1)
    index = offsets.unsqueeze(1) + torch.minimum(cols.unsqueeze(0), size_t.unsqueeze(1) - 1)
    return index, mask


class _Source:
    """Where one task's training batches come from: in-memory tensors or `LazyRows`."""

    def __init__(
        self,
        train: tuple[torch.Tensor, torch.Tensor] | LazyRows,
        dev: torch.device,
        batch_size: int,
        gen: torch.Generator,
        pool: Executor | None = None,
    ) -> None:
        self.dev = dev
        self.data: tuple[torch.Tensor, torch.Tensor] | None = None
        self._index: _IndexStream | None = None
        self._lazy: Iterator[tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]] | None = None
        if isinstance(train, LazyRows):
            self._lazy = train.stream(batch_size, gen, pool)
        else:
            self.data = _on(train, dev)
            self._index = _IndexStream(len(self.data[0]), batch_size, gen)

    @property
    def csi(self) -> torch.Tensor:
        assert self.data is not None, "lazy sources have no in-memory CSI"
        return self.data[0]

    def next(self, features: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """The next batch: (CSI, or the cached ``features`` of its rows; positions)."""
        if self._index is not None and self.data is not None:
            i = self._index.next()
            return (self.data[0] if features is None else features)[i], self.data[1][i]
        assert self._lazy is not None
        csi, pos = next(self._lazy)
        return torch.from_numpy(csi).to(self.dev), torch.from_numpy(pos).to(self.dev)


EPISODE_SUPPORT = 5 / 8
"""Share of each environment's batch the episode's ridge head is fitted on; the rest scores it."""
EPISODE_RIDGE = 0.1
"""The episode's ridge strength, relative to the mean squared norm of the centred features."""


def episode_loss(
    feats: torch.Tensor, truth: torch.Tensor, sizes: list[int], scales: Sequence[torch.Tensor]
) -> torch.Tensor:
    """The episodic term of source training: what a new site does with few labels, per step.

    Per environment, a fresh linear head is fitted in closed form (ridge, with intercept)
    on the first `EPISODE_SUPPORT` of its batch's features and scored by the squared error
    of its positions (in the head's normalised units) on the rest; summed over the
    environments. Differentiable through the solve, so the backbone learns features a few
    labels can read positions from (MetaOptNet, Lee et al. 2019; R2-D2, Bertinetto et al.
    2019). Solved in the dual (support x support), cheap for batches of tens.
    """
    total = feats.new_zeros(())
    for f, y, scale in zip(
        torch.split(feats, sizes), torch.split(truth, sizes), scales, strict=True
    ):
        n_support = int(len(f) * EPISODE_SUPPORT)
        if n_support < 4 or len(f) - n_support < 2:
            continue  # too small a batch to fit and score a head
        support, query = f[:n_support], f[n_support:]
        y_support, y_query = y[:n_support] / scale, y[n_support:] / scale
        f_mean, y_mean = support.mean(0), y_support.mean(0)
        support, query = support - f_mean, query - f_mean
        gram = support @ support.T
        ridge = EPISODE_RIDGE * gram.diagonal().mean().detach().clamp_min(1e-6)
        eye = torch.eye(n_support, dtype=f.dtype, device=f.device)
        alpha = torch.linalg.solve(gram + ridge * eye, y_support - y_mean)
        predicted = y_mean + (query @ support.T) @ alpha
        total = total + ((predicted - y_query) ** 2).sum(1).mean()
    return total


def _sample_envs(n: int, k: int, gen: torch.Generator) -> list[int]:
    """All ``n`` environments, or ``k`` drawn uniformly without replacement (sorted)."""
    if k >= n:
        return list(range(n))
    return sorted(torch.randperm(n, generator=gen)[:k].tolist())


def _track_setup(
    tasks: Sequence[Task],
    weight: float,
    batch_size: int,
    seed: int,
    dev: torch.device,
    distributed: bool,
) -> list[tuple[TrackPairs, _IndexStream] | None]:
    """Per task: its track pairs (CSI on ``dev``) and their batch stream, or None."""
    if not (math.isfinite(weight) and weight >= 0):
        raise ValueError(f"track_weight={weight}, expected a finite number >= 0")
    if weight == 0 or not any(t.tracks is not None and len(t.tracks) for t in tasks):
        return [None for _ in tasks]
    if distributed:
        raise ValueError("unlabelled tracks train on one process; they cannot run under torchrun")
    gen = torch.Generator().manual_seed(seed * 1000 + TRACK_SEED_OFFSET)
    out: list[tuple[TrackPairs, _IndexStream] | None] = []
    for t in tasks:
        p = t.tracks
        if p is None or not len(p):
            out.append(None)
            continue
        moved = TrackPairs(
            p.csi.to(dev, torch.float32), p.a.to(dev), p.b.to(dev), p.bound.to(dev), p.found
        )
        out.append((moved, _IndexStream(len(p), batch_size, gen)))
    return out


def _track_term(
    track: tuple[TrackPairs, _IndexStream],
    inputs: torch.Tensor | None,
    cached: bool,
    backbone: nn.Module,
    head: HeadFn,
    scale: torch.Tensor,
) -> torch.Tensor:
    """The hinge on the next batch of pairs, normalised by the mean of the head's position
    scale: one backbone pass over both ends, or the cached features in head-only phases."""
    pairs, stream = track
    i = stream.next().to(pairs.a.device)
    rows = torch.cat([pairs.a[i], pairs.b[i]])
    assert inputs is not None
    x = inputs[rows]
    pos, _ = head(x if cached else backbone(x))
    pos_a, pos_b = pos.chunk(2)
    return track_hinge(pos_a, pos_b, pairs.bound[i], scale.mean())


def _anchor_setup(backbone: nn.Module, weight: float) -> list[tuple[nn.Parameter, torch.Tensor]]:
    """The backbone's parameters paired with a copy of their values now (empty when off)."""
    if not (math.isfinite(weight) and weight >= 0):
        raise ValueError(f"anchor_weight={weight}, expected a finite number >= 0")
    if weight == 0:
        return []
    return [(p, p.detach().clone()) for p in backbone.parameters()]


def _anchor_term(anchor: list[tuple[nn.Parameter, torch.Tensor]]) -> torch.Tensor:
    """L2-SP: the summed squared distance of the parameters from their anchors."""
    return torch.stack([(p - ref).pow(2).sum() for p, ref in anchor]).sum()


def _use_batched(tasks: Sequence[Task], wanted: bool | None, sampling: bool) -> bool:
    heads = [t.head for t in tasks]
    config = getattr(heads[0], "config", None)
    batchable = all(isinstance(h, Head) and h.config == config for h in heads)
    if wanted is None:
        return batchable and (sampling or len(tasks) > BATCH_HEADS_ABOVE)
    if wanted and not batchable:
        raise ValueError("batched heads need every task's head to be a Head of one config")
    return wanted


class _RowAdam(torch.optim.Optimizer):
    """Adam over `BatchedHeads` parameters whose state advances only on ``rows``.

    Row e of every parameter is environment e's head. Set ``rows`` (the step's
    environments) before `step`: their moments, step counts (per row, for the
    bias correction) and weights update as torch's Adam (L2 ``weight_decay``)
    would update a separate head; the other rows stay as they are, like a head
    that got no gradient.
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor],
        lr: float,
        weight_decay: float = 0.0,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
    ) -> None:
        defaults = {"lr": lr, "weight_decay": weight_decay, "betas": betas, "eps": eps}
        super().__init__(params, defaults)
        self.rows: torch.Tensor | None = None

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> None:  # type: ignore[override]
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                rows = self.rows if self.rows is not None else torch.arange(len(p), device=p.device)
                state = self.state[p]
                if not state:
                    state["step"] = torch.zeros(len(p), device=p.device)
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                grad = p.grad[rows]
                if group["weight_decay"]:
                    grad = grad.add(p[rows], alpha=group["weight_decay"])
                exp_avg = state["exp_avg"][rows].mul_(beta1).add_(grad, alpha=1 - beta1)
                exp_avg_sq = state["exp_avg_sq"][rows].mul_(beta2)
                exp_avg_sq.addcmul_(grad, grad, value=1 - beta2)
                t = state["step"][rows] + 1
                shape = (-1,) + (1,) * (p.dim() - 1)
                bias1 = (1 - beta1**t).reshape(shape)
                bias2_sqrt = (1 - beta2**t).sqrt().reshape(shape)
                denom = (exp_avg_sq.sqrt() / bias2_sqrt).add_(group["eps"])
                p[rows] = p[rows] - group["lr"] * (exp_avg / bias1) / denom
                state["exp_avg"][rows] = exp_avg
                state["exp_avg_sq"][rows] = exp_avg_sq
                state["step"][rows] = t


class _IndexStream:
    """Endless batches of ``min(B, n)`` indices from reshuffled permutations of ``range(n)``."""

    def __init__(self, n: int, batch_size: int, gen: torch.Generator) -> None:
        self.n, self.batch, self.gen = n, min(batch_size, n), gen
        self._perm = torch.randperm(n, generator=gen)
        self._pos = 0

    def next(self) -> torch.Tensor:
        if self._pos + self.batch <= self.n:
            out = self._perm[self._pos : self._pos + self.batch]
            self._pos += self.batch
            return out
        # Tail of this permutation, then the head of a fresh one.
        tail = self._perm[self._pos :]
        self._perm = torch.randperm(self.n, generator=self.gen)
        self._pos = self.batch - len(tail)
        return torch.cat([tail, self._perm[: self._pos]])


def _cosine(horizon: int, step: int) -> float:
    """The cosine schedule's factor on the initial rate after ``step`` of ``horizon`` steps."""
    return 0.5 * (1.0 + math.cos(math.pi * min(step, horizon) / horizon))


@dataclass
class _Best:
    loss: float
    me: float
    me_per_task: dict[str, float]
    step: int
    state: dict[str, torch.Tensor]
    score: float
    """What selection compares: the validation loss or ME, or the selector's score."""


@torch.no_grad()
def _validate(
    joint: _Joint,
    heads: Sequence[HeadFn],
    names: list[str],
    val_sets: list[tuple[torch.Tensor, torch.Tensor]],
    scales: list[torch.Tensor],
    loss: LossName,
    distributed: bool,
    features: list[torch.Tensor] | None = None,
    *,
    calibrated: bool = False,
) -> tuple[float, dict[str, float]]:
    """Summed mean validation loss (plain: beta 0) over tasks, and the ME per task (metres).

    ``features``: the backbone's cached outputs for the validation sets (head-only phases).
    ``calibrated``: the NLL is the one after each task's per-axis sigma factor is fitted
    on these points (`_calibrated_nll`); MSE is unchanged.
    """
    joint.eval()
    # Per task: loss sum, error sum, count, then per axis the sums of (err / sigma)^2 and
    # log(sigma / scale); summed over ranks when distributed. Kept on the device (float64,
    # as Python floats were) and read once: one host sync a validation, not two per task
    # and chunk (hundreds of tasks on a GPU).
    dev = next(joint.parameters()).device
    sums = torch.zeros(len(val_sets), 7, dtype=torch.float64, device=dev)
    for k, ((csi, truth), head, scale) in enumerate(zip(val_sets, heads, scales, strict=True)):
        source = features[k] if features is not None else csi
        for c, t in zip(torch.split(source, 512), torch.split(truth, 512), strict=True):
            n = len(c)
            if n == 0:
                continue
            pos, sigma = head(c if features is not None else joint.backbone(c))
            sums[k, 0] += position_loss(loss, pos, sigma, t, scale).double() * n
            sums[k, 1] += (pos - t).norm(dim=1).sum().double()
            sums[k, 2] += n
            if calibrated and loss == "nll" and sigma is not None:
                sums[k, 3:5] += ((pos - t) / sigma).double().square().sum(dim=0)
                sums[k, 5:7] += (sigma / scale).double().log().sum(dim=0)
    sums = sums.cpu()
    if distributed:
        sums = _all_reduced(sums, dev)
    counts = sums[:, 2].clamp_min(1)
    per_task = sums[:, 0] / counts
    if calibrated and loss == "nll":
        per_task = _calibrated_nll(sums[:, 3:5] / counts[:, None], sums[:, 5:7] / counts[:, None])
    val_loss = float(per_task.sum())
    return val_loss, {n: float(v) for n, v in zip(names, sums[:, 1] / counts, strict=True)}


def _calibrated_nll(mean_z2: torch.Tensor, mean_log_sigma: torch.Tensor) -> torch.Tensor:
    """Per task, the mean Gaussian NLL (normalised units, summed over x and y) after the
    NLL-optimal per-axis factor on sigma, ``sqrt(mean z^2)``: the sigma the service
    serves once `training.calibration` has scaled it. The plain NLL of a target run
    climbs as its sigma shrinks onto the memorised training set while its positions
    still improve; after the factor only the errors and sigma's shape count."""
    z2 = mean_z2.clamp_min(1e-12)
    per_axis = mean_log_sigma + 0.5 * z2.log() + 0.5 + 0.5 * math.log(2 * math.pi)
    return per_axis.sum(dim=1)


@torch.no_grad()
def _centroid_me(
    heads: nn.ModuleList,
    names: list[str],
    val_sets: list[tuple[torch.Tensor, torch.Tensor]],
    distributed: bool,
) -> dict[str, float]:
    """Validation ME of the centroid predictor (each head's ``pos_mean``, the training mean):
    the error a run that learned nothing from the CSI ends at."""
    sums = torch.zeros(len(val_sets), 2, dtype=torch.float64)
    for k, ((_, truth), head) in enumerate(zip(val_sets, heads, strict=True)):
        centre = getattr(head, "pos_mean", None)
        if not isinstance(centre, torch.Tensor) or len(truth) == 0:
            continue
        sums[k, 0] = float((truth - centre.to(truth.device)).norm(dim=1).sum())
        sums[k, 1] = len(truth)
    if distributed:
        sums = _all_reduced(sums, next(heads.parameters()).device)
    return {n: float(s[0] / s[1]) for n, s in zip(names, sums, strict=True) if s[1] > 0}


@torch.no_grad()
def _features(backbone: nn.Module, csi: torch.Tensor) -> torch.Tensor:
    """The frozen backbone's outputs for ``csi``, in chunks (eval mode: deterministic)."""
    backbone.eval()
    if len(csi) == 0:
        return torch.zeros(0, 0, device=csi.device)
    return torch.cat([backbone(c) for c in torch.split(csi, 512)])


@torch.no_grad()
def _features_across(backbone: nn.Module, sets: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """`_features` of every set, with the backbone run on chunks of 512 samples that span
    sets (many environments with a few validation samples each: no tiny batches)."""
    backbone.eval()
    sizes = [len(csi) for csi in sets]
    pieces = [c for csi in sets for c in torch.split(csi, 512) if len(c)]
    if not pieces:
        return [_features(backbone, csi) for csi in sets]
    outs: list[torch.Tensor] = []
    pending: list[torch.Tensor] = []
    count = 0
    for piece in pieces:
        pending.append(piece)
        count += len(piece)
        if count >= 512:
            outs.append(backbone(torch.cat(pending)))
            pending, count = [], 0
    if pending:
        outs.append(backbone(torch.cat(pending)))
    return list(torch.split(torch.cat(outs), sizes))


def _all_reduced(sums: torch.Tensor, dev: torch.device) -> torch.Tensor:
    synced = sums.to(dev)
    dist.all_reduce(synced)
    return synced.cpu()


def _agree_max(steps: int, dev: torch.device) -> int:
    """DDP needs the same number of steps on every rank."""
    steps_t = torch.tensor(steps, device=dev)
    dist.all_reduce(steps_t, op=dist.ReduceOp.MAX)
    return int(steps_t)


def _snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _tensors(data: Fingerprints) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.from_numpy(np.ascontiguousarray(data.csi)), torch.from_numpy(
        np.ascontiguousarray(data.pos)
    )


def _on(
    pair: tuple[torch.Tensor, torch.Tensor], dev: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    return pair[0].to(dev, torch.float32), pair[1].to(dev, torch.float32)


def _pos_scale(head: nn.Module, dev: torch.device) -> torch.Tensor:
    scale = getattr(head, "pos_scale", None)
    if not isinstance(scale, torch.Tensor):
        return torch.ones((), device=dev)
    return scale.detach().clone().to(dev)


def _device_ids(dev: torch.device) -> list[int] | None:
    return (
        [dev.index if dev.index is not None else torch.cuda.current_device()]
        if (dev.type == "cuda")
        else None
    )


def _eval_line(row: dict[str, Any], improved: bool) -> str:
    return (
        f"{row['phase']:>11} step {row['step']:6d} (epoch {row['epoch']:6.1f})  "
        f"train {row['train_loss']:9.4f}  "
        f"val {row['val_loss']:9.4f}  val ME {row['val_me']:7.3f} m  lr {row['lr']:.1e}"
        + (f"  score {row['score']:7.3f}" if "score" in row else "")
        + ("  *" if improved else "")
    )


def _check_inputs(
    tasks: Sequence[Task], phases: Sequence[Phase], batch_size: int, allow_empty_val: bool
) -> None:
    if not tasks:
        raise ValueError("fit needs at least one task (an environment with a head and data)")
    if not phases:
        raise ValueError("fit needs at least one phase")
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size}, expected >= 1")
    for t in tasks:
        if isinstance(t.train, LazyRows):
            if len(t.train) == 0:
                raise ValueError(f"task {t.name!r}: train set is empty; expected >= 1 sample")
            parts = [("val", t.val)]
        else:
            parts = [("train", t.train), ("val", t.val)]
        for part, (csi, pos) in parts:
            # A rank's validation shard may be empty: the sums are all-reduced.
            if len(csi) == 0 and not (part == "val" and allow_empty_val):
                raise ValueError(f"task {t.name!r}: {part} set is empty; expected >= 1 sample")
            if csi.ndim != 4 or pos.ndim != 2 or pos.shape[1] != 2 or len(csi) != len(pos):
                raise ValueError(
                    f"task {t.name!r}: {part} has csi {tuple(csi.shape)} and pos "
                    f"{tuple(pos.shape)}; expected [M,8,103,2] and [M,2]"
                )
