"""The one training loop. MEML, DTL, scratch, fine-tuning, gradual unfreezing and
site adaptation all call `fit`; what differs between them is data:

- the `Task` list: one task (environment: its head, train and validation
  tensors) for DTL, scratch and target training, several for MEML, all
  sharing the one backbone;
- the `Phase` list: which parameters train, at which learning rate, for how
  long. Fine-tuning is one all-parameter phase; gradual unfreezing is a
  head-only phase followed by an all-parameter phase at a lower rate.

Each step takes one batch from *every* task, runs the backbone once on their
concatenation, each head on its slice, and minimises the sum of the per-task
losses (paper eq. 5). Tasks of different sizes: an epoch is
``ceil(N_max / B)`` steps where ``N_max`` is the largest task's training size;
each task draws its batches from its own endless stream of reshuffled
permutations, so a smaller environment is cycled (seen more than once per
epoch) rather than dropping out of the sum, and every environment weighs the
same in every step.

Per phase: early stopping on the validation loss (summed over tasks) with
patience, ReduceLROnPlateau on the same, and the best validation state is
restored when the phase ends; a phase only replaces the state it started from
if it beats it, so the final model is the best seen across all phases.
Losses are in normalised position units (see `training.losses`); the
reported ME is in metres.

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

from training.data.fingerprints import Fingerprints
from training.losses import LossName, position_loss

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
    """

    name: str
    train: Trainable
    lr: float
    max_epochs: int
    patience: int
    lr_factor: float = 0.5
    """ReduceLROnPlateau multiplies the learning rate by this after a plateau."""
    lr_patience: int | None = None
    """Epochs without improvement before the rate drops; default ``max(1, patience // 3)``."""

    def __post_init__(self) -> None:
        if self.train not in ("all", "head"):
            raise ValueError(f"phase {self.name!r}: train={self.train!r}, expected 'all' or 'head'")
        if not self.lr > 0:
            raise ValueError(f"phase {self.name!r}: lr={self.lr}, expected > 0")
        if self.max_epochs < 0 or self.patience < 1:
            raise ValueError(
                f"phase {self.name!r}: max_epochs={self.max_epochs}, patience={self.patience}; "
                "expected max_epochs >= 0 and patience >= 1"
            )
        if not 0 < self.lr_factor < 1:
            raise ValueError(f"phase {self.name!r}: lr_factor={self.lr_factor}, expected in (0, 1)")


@dataclass
class Task:
    """One environment: its head and its training and validation tensors.

    ``train`` and ``val`` are ``(csi [M,8,103,2] float32, pos [M,2] float32)``.
    The head maps features to a `HeadOutput` in metres and must already hold
    the position normalisation of ``train`` (its ``pos_scale`` buffer). Under
    torchrun, ``train`` and ``val`` are this rank's shard.
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
    """What one phase did: epochs run, where the best validation loss was, and its ME.

    ``best_epoch`` 0 means the phase never beat the state it started from, which
    was then kept.
    """

    name: str
    epochs: int
    best_epoch: int
    best_val_loss: float
    best_val_me: float
    best_val_me_per_task: dict[str, float]
    stopped_early: bool


@dataclass
class FitReport:
    """The outcome of `fit`; ``history`` has one dict per epoch."""

    phases: list[PhaseReport] = field(default_factory=list)
    history: list[dict[str, Any]] = field(default_factory=list)
    samples: int = 0
    wall_s: float = 0.0

    @property
    def epochs(self) -> dict[str, int]:
        """Epochs run per phase name."""
        return {p.name: p.epochs for p in self.phases}

    @property
    def best_val_me(self) -> float:
        """Validation ME (metres) of the restored final state."""
        return self.phases[-1].best_val_me if self.phases else math.nan

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
    batch_size: int = 64,
    seed: int = 0,
    weight_decay: float = 0.0,
    quiet: bool = False,
    progress: ProgressFn | None = None,
    shard: Shard | None = None,
    device: torch.device | str = "cpu",
) -> FitReport:
    """Train ``backbone`` and the tasks' heads through ``phases``; return the report.

    The modules are trained in place and end in the best validation state of
    the last phase. Same seed, same data, same machine: same weights.
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
    steps = max(1, math.ceil(max(len(t.train[0]) for t in tasks) / batch_size))
    if distributed:  # DDP needs the same number of steps on every rank
        steps_t = torch.tensor(steps, device=dev)
        dist.all_reduce(steps_t, op=dist.ReduceOp.MAX)
        steps = int(steps_t)
    streams = [_IndexStream(len(csi), batch_size, gen) for csi, _ in train_sets]
    scales = [_pos_scale(t.head, dev) for t in tasks]
    names = [t.name for t in tasks]

    report = FitReport()
    t0 = time.perf_counter()
    for phase in phases:
        # --- which parameters train in this phase ---
        train_backbone = phase.train == "all"
        backbone.requires_grad_(train_backbone)
        params = list(heads.parameters()) + (list(backbone.parameters()) if train_backbone else [])
        opt = torch.optim.Adam(params, lr=phase.lr, weight_decay=weight_decay)
        sched = torch.optim.lr_scheduler.ReduceLROnPlateau(
            opt,
            factor=phase.lr_factor,
            patience=phase.lr_patience
            if phase.lr_patience is not None
            else max(1, phase.patience // 3),
        )
        model: nn.Module = joint
        if distributed:
            model = nn.parallel.DistributedDataParallel(joint, device_ids=_device_ids(dev))

        # A later phase must beat the state it starts from (the previous phase's
        # best); if it never does, that state is what gets restored.
        prev = report.phases[-1] if report.phases else None
        best = _Best(
            prev.best_val_loss if prev else math.inf,
            prev.best_val_me if prev else math.nan,
            prev.best_val_me_per_task if prev else {},
            0,
            _snapshot(joint),
        )
        epoch = 0
        for epoch in range(1, phase.max_epochs + 1):
            # --- one epoch of steps, each with a batch from every task ---
            backbone.train(train_backbone)
            heads.train()
            running = torch.zeros((), device=dev)
            for _ in range(steps):
                idx = [s.next() for s in streams]
                csi = torch.cat([tr[0][i] for tr, i in zip(train_sets, idx, strict=True)])
                outs = model(csi, [len(i) for i in idx])
                total = torch.zeros((), device=dev)
                for (pos, sigma), tr, i, scale in zip(outs, train_sets, idx, scales, strict=True):
                    total = total + position_loss(loss, pos, sigma, tr[1][i], scale)
                opt.zero_grad(set_to_none=True)
                total.backward()  # type: ignore[no-untyped-call]
                opt.step()
                running += total.detach()
                report.samples += int(csi.shape[0])
            train_loss = float(running) / steps

            # --- validation, early stopping, LR schedule ---
            val_loss, val_me = _validate(joint, names, val_sets, scales, loss, distributed)
            me_mean = float(np.mean(list(val_me.values())))
            improved = val_loss < best.loss
            if improved:
                best = _Best(val_loss, me_mean, val_me, epoch, _snapshot(joint))
            sched.step(val_loss)
            row = {
                "phase": phase.name,
                "epoch": epoch,
                "train_loss": train_loss,
                "val_loss": val_loss,
                "val_me": me_mean,
                "val_me_per_task": val_me,
                "lr": opt.param_groups[0]["lr"],
            }
            report.history.append(row)
            if not quiet and shard.rank == 0:
                log.info(_epoch_line(row, improved))
            if progress is not None and shard.rank == 0:
                progress(
                    {
                        "phase": phase.name,
                        "epoch": epoch,
                        "val_me": me_mean,
                        "best_val_me": best.me,
                    }
                )
            if epoch - best.epoch >= phase.patience:
                break

        # --- restore the best state of this phase ---
        joint.load_state_dict(best.state)
        report.phases.append(
            PhaseReport(
                name=phase.name,
                epochs=epoch,
                best_epoch=best.epoch,
                best_val_loss=best.loss,
                best_val_me=best.me,
                best_val_me_per_task=best.me_per_task,
                stopped_early=epoch < phase.max_epochs,
            )
        )
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
    epoch: int
    state: dict[str, torch.Tensor]


@torch.no_grad()
def _validate(
    joint: _Joint,
    names: list[str],
    val_sets: list[tuple[torch.Tensor, torch.Tensor]],
    scales: list[torch.Tensor],
    loss: LossName,
    distributed: bool,
) -> tuple[float, dict[str, float]]:
    """Summed mean validation loss over tasks, and the validation ME per task (metres)."""
    joint.eval()
    # Per task: loss sum, error sum, count; summed over ranks when distributed.
    sums = torch.zeros(len(val_sets), 3, dtype=torch.float64)
    for k, ((csi, truth), head, scale) in enumerate(
        zip(val_sets, joint.heads, scales, strict=True)
    ):
        for c, t in zip(torch.split(csi, 512), torch.split(truth, 512), strict=True):
            n = len(c)
            if n == 0:
                continue
            pos, sigma = head(joint.backbone(c))
            sums[k, 0] += float(position_loss(loss, pos, sigma, t, scale)) * n
            sums[k, 1] += float((pos - t).norm(dim=1).sum())
            sums[k, 2] += n
    if distributed:
        dev = next(joint.parameters()).device
        synced = sums.to(dev)
        dist.all_reduce(synced)
        sums = synced.cpu()
    counts = sums[:, 2].clamp_min(1)
    val_loss = float((sums[:, 0] / counts).sum())
    return val_loss, {n: float(v) for n, v in zip(names, sums[:, 1] / counts, strict=True)}


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


def _epoch_line(row: dict[str, Any], improved: bool) -> str:
    return (
        f"{row['phase']:>9} epoch {row['epoch']:4d}  train {row['train_loss']:9.4f}  "
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
