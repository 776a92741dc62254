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

Budgets count steps, not epochs (see `training.config`): every ``eval_every``
steps the loop validates; a phase stops after ``patience`` validations without
a better score, but never before ``min_steps``; a plateau schedule halves the
rate after ``lr_patience`` (>= 3) validations without improvement. The score
is the plain validation loss (NLL with beta = 0, or MSE), never the
beta-weighted training loss. Each phase is judged on its own from its start,
and when the last phase ends the best state seen in *any* phase is restored:
an unfrozen phase that needs a while to overtake its head-only warm-up is not
thrown away, and one that never does is.

Head-only phases run the frozen backbone once over the data and train the
heads on the cached features (bit-identical backbone, far fewer FLOPs).

Data are in-memory tensors indexed with seeded permutations: a DataLoader's
per-item collation costs more than this small CNN. Under torchrun each rank
passes its own shard of every task (see `training.meml`), the model is
wrapped in DistributedDataParallel, and validation sums are all-reduced so
every rank takes the same early-stopping decisions.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from training.config import DEGENERATE_RATIO, LossName, StepBudget
from training.data.fingerprints import Fingerprints
from training.losses import position_loss

log = logging.getLogger(__name__)

ProgressFn = Callable[[dict[str, Any]], None]
HeadOutput = tuple[torch.Tensor, torch.Tensor | None]
"""What a head returns: position [B, 2] and sigma [B, 2] (nll) or None (mse), in metres."""
Trainable = Literal["all", "head"]


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

    ``train`` and ``val`` are ``(csi [M,8,103,2] float32, pos [M,2] float32)``.
    The head maps features to a `HeadOutput` in metres and must already hold
    the position normalisation of ``train`` (its ``pos_scale`` and ``pos_mean``
    buffers). Under torchrun, ``train`` and ``val`` are this rank's shard.
    """

    name: str
    head: nn.Module
    train: tuple[torch.Tensor, torch.Tensor]
    val: tuple[torch.Tensor, torch.Tensor]

    @classmethod
    def from_fingerprints(
        cls, name: str, head: nn.Module, train: Fingerprints, val: Fingerprints
    ) -> Task:
        """Wrap in-memory fingerprints without copying."""
        return cls(name, head, _tensors(train), _tensors(val))


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
) -> FitReport:
    """Train ``backbone`` and the tasks' heads through ``phases``; return the report.

    The modules are trained in place and end in the best validation state seen
    in any phase. ``beta`` is the beta-NLL weight of the training loss (nll
    only). ``start``: the report of an earlier phase (another `fit` call) whose
    best state the modules are in now; it competes for the final state and
    leads the report, so candidates can share one warm-up. Same seed, same
    data, same machine: same weights.
    """
    _check_inputs(tasks, phases, batch_size, allow_empty_val=shard is not None and shard.world > 1)
    dev = torch.device(device)
    shard = shard or Shard(0, 1)
    distributed = shard.world > 1
    # All randomness of the loop (batch order) comes from this generator; the
    # global RNG is left alone, the nets draw their init from their own seeds.
    gen = torch.Generator().manual_seed(seed * 1000 + shard.rank)

    train_sets = [_on(t.train, dev) for t in tasks]
    val_sets = [_on(t.val, dev) for t in tasks]
    backbone.to(dev)
    heads = nn.ModuleList([t.head for t in tasks]).to(dev)
    joint = _Joint(backbone, heads)
    per_epoch = max(1, math.ceil(max(len(t.train[0]) for t in tasks) / batch_size))
    streams = [_IndexStream(len(csi), batch_size, gen) for csi, _ in train_sets]
    scales = [_pos_scale(t.head, dev) for t in tasks]
    names = [t.name for t in tasks]

    report = FitReport()
    report.centroid_me_per_task = _centroid_me(heads, names, val_sets, distributed)
    overall = _Best(math.inf, math.nan, {}, 0, _snapshot(joint))
    if start is not None:
        report.phases.append(start)
        report.final_phase = start.name
        overall = _Best(
            start.best_val_loss,
            start.best_val_me,
            start.best_val_me_per_task,
            start.best_step,
            overall.state,
        )
    t0 = time.perf_counter()
    for phase in phases:
        budget = phase.budget
        max_steps = _agree_max(budget.max_steps, dev) if distributed else budget.max_steps
        # --- which parameters train in this phase ---
        train_backbone = phase.train == "all"
        backbone.requires_grad_(train_backbone)
        params = list(heads.parameters()) + (list(backbone.parameters()) if train_backbone else [])
        opt = torch.optim.Adam(params, lr=phase.lr, weight_decay=weight_decay)
        sched = torch.optim.lr_scheduler.ReduceLROnPlateau(
            opt, factor=phase.lr_factor, patience=phase.lr_patience
        )
        # Head-only phases train on cached features of the frozen backbone.
        cached = not train_backbone and not distributed
        inputs = [_features(backbone, csi) for csi, _ in train_sets] if cached else None
        val_inputs = [_features(backbone, csi) for csi, _ in val_sets] if cached else None
        model: nn.Module = joint
        if distributed and train_backbone:
            model = nn.parallel.DistributedDataParallel(joint, device_ids=_device_ids(dev))

        best = _Best(math.inf, math.nan, {}, 0, _snapshot(joint))
        evals_since_best = 0
        running = torch.zeros((), device=dev)
        since_eval = 0
        step = 0
        stopped_early = False
        while step < max_steps:
            # --- one step: a batch from every task ---
            backbone.train(train_backbone)
            heads.train()
            idx = [s.next() for s in streams]
            sizes = [len(i) for i in idx]
            if inputs is not None:
                outs = [h(f[i]) for h, f, i in zip(heads, inputs, idx, strict=True)]
            else:
                csi = torch.cat([tr[0][i] for tr, i in zip(train_sets, idx, strict=True)])
                outs = model(csi, sizes)
            step_loss: LossName = "mse" if step < phase.mse_warmup_steps else loss
            total = torch.zeros((), device=dev)
            for (pos, sigma), tr, i, scale in zip(outs, train_sets, idx, scales, strict=True):
                total = total + position_loss(step_loss, pos, sigma, tr[1][i], scale, beta)
            opt.zero_grad(set_to_none=True)
            total.backward()  # type: ignore[no-untyped-call]
            opt.step()
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
            val_loss, val_me = _validate(
                joint, names, val_sets, scales, loss, distributed, val_inputs
            )
            me_mean = float(np.mean(list(val_me.values())))
            improved = val_loss < best.loss
            if improved:
                best = _Best(val_loss, me_mean, val_me, step, _snapshot(joint))
                evals_since_best = 0
            else:
                evals_since_best += 1
            sched.step(val_loss)
            row = {
                "phase": phase.name,
                "step": step,
                "epoch": step / per_epoch,
                "train_loss": float(running) / max(1, since_eval),
                "val_loss": val_loss,
                "val_me": me_mean,
                "val_me_per_task": val_me,
                "lr": opt.param_groups[0]["lr"],
            }
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
        if best.loss < overall.loss:
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
                stopped_early=stopped_early,
                steps_per_epoch=per_epoch,
            )
        )
    # --- end in the best state of any phase ---
    if report.final_phase:
        joint.load_state_dict(overall.state)
    elif report.phases:
        report.final_phase = report.phases[-1].name
    backbone.requires_grad_(True)
    backbone.eval()
    heads.eval()
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


class _Joint(nn.Module):
    """Backbone + heads as one module, so DDP sees (and syncs) every parameter."""

    def __init__(self, backbone: nn.Module, heads: nn.ModuleList) -> None:
        super().__init__()
        self.backbone = backbone
        self.heads = heads

    def forward(self, csi: torch.Tensor, sizes: list[int]) -> list[HeadOutput]:
        # One backbone pass over all tasks' batches: bigger matmuls, fewer calls.
        feats = self.backbone(csi).split(sizes)
        return [head(f) for head, f in zip(self.heads, feats, strict=True)]


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


@dataclass
class _Best:
    loss: float
    me: float
    me_per_task: dict[str, float]
    step: int
    state: dict[str, torch.Tensor]


@torch.no_grad()
def _validate(
    joint: _Joint,
    names: list[str],
    val_sets: list[tuple[torch.Tensor, torch.Tensor]],
    scales: list[torch.Tensor],
    loss: LossName,
    distributed: bool,
    features: list[torch.Tensor] | None = None,
) -> tuple[float, dict[str, float]]:
    """Summed mean validation loss (plain: beta 0) over tasks, and the ME per task (metres).

    ``features``: the backbone's cached outputs for the validation sets (head-only phases).
    """
    joint.eval()
    # Per task: loss sum, error sum, count; summed over ranks when distributed.
    sums = torch.zeros(len(val_sets), 3, dtype=torch.float64)
    for k, ((csi, truth), head, scale) in enumerate(
        zip(val_sets, joint.heads, scales, strict=True)
    ):
        source = features[k] if features is not None else csi
        for c, t in zip(torch.split(source, 512), torch.split(truth, 512), strict=True):
            n = len(c)
            if n == 0:
                continue
            pos, sigma = head(c if features is not None else joint.backbone(c))
            sums[k, 0] += float(position_loss(loss, pos, sigma, t, scale)) * n
            sums[k, 1] += float((pos - t).norm(dim=1).sum())
            sums[k, 2] += n
    if distributed:
        sums = _all_reduced(sums, next(joint.parameters()).device)
    counts = sums[:, 2].clamp_min(1)
    val_loss = float((sums[:, 0] / counts).sum())
    return val_loss, {n: float(v) for n, v in zip(names, sums[:, 1] / counts, strict=True)}


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
        for part, (csi, pos) in (("train", t.train), ("val", t.val)):
            # A rank's validation shard may be empty: the sums are all-reduced.
            if len(csi) == 0 and not (part == "val" and allow_empty_val):
                raise ValueError(f"task {t.name!r}: {part} set is empty; expected >= 1 sample")
            if csi.ndim != 4 or pos.ndim != 2 or pos.shape[1] != 2 or len(csi) != len(pos):
                raise ValueError(
                    f"task {t.name!r}: {part} has csi {tuple(csi.shape)} and pos "
                    f"{tuple(pos.shape)}; expected [M,8,103,2] and [M,2]"
                )
