"""Source training: MEML (paper eq. 5), DTL, and scratch models, all through `training.fit`.

- **MEML**: one backbone shared by one head per source environment. Every
  step takes a batch from every environment and minimises the sum of their
  losses; an epoch is ``ceil(N_max / B)`` steps and smaller environments are
  cycled with their own reshuffled permutations (see `training.fit`), so each
  environment weighs the same in every step however many samples it has.
  Early stopping watches the sum of the per-environment validation losses.
- **DTL**: the same with one source environment (a full model on it).
- **Scratch**: the same with the *target's* own train/validation split,
  from random initialisation.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from training.calibration import calibrate_sigma
from training.data.fingerprints import Fingerprints, data_fingerprint, open_environment
from training.data.splits import IndexArray, train_val_test
from training.fit import FitReport, Phase, ProgressFn, Shard, Task, fit, predict
from training.losses import LossName, check_loss_name
from training.metrics import evaluate
from training.nets import Backbone, BackboneConfig, Head, HeadConfig, SiteModel


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of one training run; stored in manifests as ``to_dict()``."""

    loss: LossName = "mse"
    epochs: int = 100
    """Most epochs per phase."""
    patience: int = 10
    """Epochs without a better validation loss before a phase stops."""
    batch_size: int = 64
    lr: float = 1e-3
    val_fraction: float = 0.1
    """Share of each environment held out for validation when no split is given."""
    seed: int = 0
    weight_decay: float = 0.0
    unfreeze_lr_factor: float = 0.1
    """Gradual unfreezing: the all-parameter phase runs at ``lr * unfreeze_lr_factor``."""
    calibrate_sigma: bool = True
    """NLL heads: after training, scale sigma per axis to fit the validation errors
    (`training.calibration`); the metrics then report ``sigma_scale_x``/``_y``."""

    def __post_init__(self) -> None:
        check_loss_name(self.loss)
        for name in ("epochs", "patience", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)}, expected >= 1")
        if not 0.0 < self.val_fraction < 1.0:
            raise ValueError(f"val_fraction={self.val_fraction}, expected in (0, 1)")
        if not 0.0 < self.unfreeze_lr_factor <= 1.0:
            raise ValueError(f"unfreeze_lr_factor={self.unfreeze_lr_factor}, expected in (0, 1]")
        if self.seed < 0:
            raise ValueError(f"seed={self.seed}, expected >= 0")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class SourceResult:
    """A trained backbone with its heads, the fit report and validation metrics per env."""

    backbone: Backbone
    heads: dict[str, Head]
    report: FitReport
    metrics: dict[str, dict[str, float]]
    config: TrainConfig
    data_fingerprint: str
    samples: dict[str, int] = field(default_factory=dict)

    def site_model(self, env: str) -> SiteModel:
        """The full model of one environment (backbone + its head)."""
        return SiteModel(self.backbone, self.heads[env])


def train_val_indices(n: int, val_fraction: float, seed: int) -> tuple[IndexArray, IndexArray]:
    """Sorted (train, validation) rows of a seeded random split, at least one row each."""
    if n < 2:
        raise ValueError(f"need at least 2 samples to split off validation, got {n}")
    val = min(max(val_fraction, 1.0 / n), (n - 1) / n)
    split = train_val_test(n, val, 0.0, seed)
    return split.train, split.val


def split_train_val(
    data: Fingerprints, val_fraction: float, seed: int
) -> tuple[Fingerprints, Fingerprints]:
    """A seeded random train/validation split (at least one sample each)."""
    train, val = train_val_indices(len(data), val_fraction, seed)
    return data.subset(train), data.subset(val)


@dataclass
class SourceData:
    """One environment as this process trains on it.

    Under torchrun each rank holds only its strided shard of the train and
    validation rows; the head's position normalisation comes from the whole
    training split (``train_pos``), so it is the same on every rank.
    """

    train: Fingerprints
    val: Fingerprints
    train_pos: npt.NDArray[np.float32]
    train_size: int
    fingerprint: str
    val_full: Fingerprints | None = None
    """The whole validation split, for the final metrics (main process only)."""

    @classmethod
    def in_memory(
        cls, train: Fingerprints, val: Fingerprints, shard: Shard | None = None
    ) -> SourceData:
        """This rank's strided shard of an in-memory split."""
        rank, world = (shard.rank, shard.world) if shard else (0, 1)
        own = slice(rank, None, world)
        return cls(
            train=train if world == 1 else train.subset(own),
            val=val if world == 1 else val.subset(own),
            train_pos=train.pos,
            train_size=len(train),
            fingerprint=data_fingerprint(train),
            val_full=val,
        )

    @classmethod
    def from_file(
        cls,
        path: str | Path,
        env: str,
        val_fraction: float,
        seed: int,
        shard: Shard | None = None,
    ) -> SourceData:
        """Read only this rank's rows of ``env`` (plus all positions, and on rank 0 the
        whole validation split), so N processes never hold N copies of the CSI.
        """
        rank, world = (shard.rank, shard.world) if shard else (0, 1)
        with open_environment(path, env) as lazy:
            train_idx, val_idx = train_val_indices(len(lazy), val_fraction, seed)
            pos = lazy.read_field("pos")
            if pos is None:  # the schema requires pos; a reader bug would land here
                raise ValueError(f"{path}: environment {env!r} has no pos")
            val = lazy.read(val_idx[rank::world])
            return cls(
                train=lazy.read(train_idx[rank::world]),
                val=val,
                train_pos=np.asarray(pos[train_idx], dtype=np.float32),
                train_size=len(train_idx),
                fingerprint=data_fingerprint(lazy),
                val_full=(val if world == 1 else lazy.read(val_idx)) if rank == 0 else None,
            )


def combined_fingerprint(parts: Mapping[str, str]) -> str:
    """One sha256 over the environments' own data fingerprints (name -> hash), in name order."""
    h = hashlib.sha256()
    for name in sorted(parts):
        h.update(f"{name}={parts[name]};".encode())
    return h.hexdigest()


def train_sources(
    splits: Mapping[str, tuple[Fingerprints, Fingerprints]],
    config: TrainConfig,
    *,
    backbone_config: BackboneConfig | None = None,
    head_config: HeadConfig | None = None,
    quiet: bool = False,
    progress: ProgressFn | None = None,
    shard: Shard | None = None,
    device: torch.device | str = "cpu",
) -> SourceResult:
    """Train a fresh backbone and one fresh head per entry of ``splits`` (name -> train, val).

    The common core of MEML (several entries), DTL (one source entry) and
    scratch (the target's entry). Under torchrun (``shard``) each rank trains
    on its strided shard of every split.
    """
    sources = {name: SourceData.in_memory(tr, va, shard) for name, (tr, va) in splits.items()}
    return train_source_data(
        sources,
        config,
        backbone_config=backbone_config,
        head_config=head_config,
        quiet=quiet,
        progress=progress,
        shard=shard,
        device=device,
    )


def train_source_data(
    sources: Mapping[str, SourceData],
    config: TrainConfig,
    *,
    backbone_config: BackboneConfig | None = None,
    head_config: HeadConfig | None = None,
    quiet: bool = False,
    progress: ProgressFn | None = None,
    shard: Shard | None = None,
    device: torch.device | str = "cpu",
) -> SourceResult:
    """`train_sources` on data already prepared per process (see `SourceData`)."""
    if not sources:
        raise ValueError("no environments to train on: expected at least one")
    backbone = Backbone(backbone_config, seed=config.seed)
    heads: dict[str, Head] = {}
    tasks: list[Task] = []
    for k, (name, src) in enumerate(sorted(sources.items())):
        head = Head(head_config, loss=config.loss, seed=config.seed + 1 + k)
        head.fit_position_normalisation(src.train_pos)
        heads[name] = head
        tasks.append(Task.from_fingerprints(name, head, src.train, src.val))
    phase = Phase("train", "all", config.lr, config.epochs, config.patience)
    report = fit(
        backbone,
        tasks,
        [phase],
        loss=config.loss,
        batch_size=config.batch_size,
        seed=config.seed,
        weight_decay=config.weight_decay,
        quiet=quiet,
        progress=progress,
        shard=shard,
        device=device,
    )
    backbone.cpu()
    for head in heads.values():
        head.cpu()
    metrics = {
        name: finish_head(
            backbone, heads[name], src.val if src.val_full is None else src.val_full, config
        )
        for name, src in sources.items()
    }
    return SourceResult(
        backbone=backbone,
        heads=heads,
        report=report,
        metrics=metrics,
        config=config,
        data_fingerprint=combined_fingerprint({n: s.fingerprint for n, s in sources.items()}),
        samples={name: src.train_size for name, src in sources.items()},
    )


def train_meml(
    envs: Mapping[str, Fingerprints], config: TrainConfig, **kwargs: Any
) -> SourceResult:
    """MEML: one backbone, one head per source environment, summed losses (eq. 5).

    Each environment is split into train/validation by ``config.val_fraction``
    and ``config.seed``; ``kwargs`` go to `train_sources`.
    """
    splits = {
        name: split_train_val(data, config.val_fraction, config.seed) for name, data in envs.items()
    }
    return train_sources(splits, config, **kwargs)


def train_meml_file(
    path: str | Path, envs: Sequence[str], config: TrainConfig, **kwargs: Any
) -> SourceResult:
    """`train_meml` reading ``envs`` from a fingerprint file; under torchrun (``shard=``)
    each rank reads only its own rows of every environment.
    """
    if not envs:
        raise ValueError("no environments to train on: expected at least one")
    shard = kwargs.get("shard")
    sources = {
        env: SourceData.from_file(path, env, config.val_fraction, config.seed, shard)
        for env in envs
    }
    return train_source_data(sources, config, **kwargs)


def train_dtl(name: str, data: Fingerprints, config: TrainConfig, **kwargs: Any) -> SourceResult:
    """DTL: a full model on one source environment (its backbone is then transferred)."""
    return train_meml({name: data}, config, **kwargs)


def train_scratch(
    train: Fingerprints, val: Fingerprints, config: TrainConfig, **kwargs: Any
) -> SourceResult:
    """Scratch: random initialisation, trained on the target's own train/validation split."""
    return train_sources({"target": (train, val)}, config, **kwargs)


def finish_head(
    backbone: Backbone, head: Head, val: Fingerprints, config: TrainConfig
) -> dict[str, float]:
    """After training: calibrate the head's sigma on ``val`` (if configured), then its
    validation metrics, with the calibration factors when they were fitted."""
    scale = calibrate_sigma(backbone, head, val) if config.calibrate_sigma else None
    metrics = evaluate_model(backbone, head, val)
    if scale is not None:
        metrics["sigma_scale_x"], metrics["sigma_scale_y"] = scale
    return metrics


def evaluate_model(backbone: Backbone, head: Head, data: Fingerprints) -> dict[str, float]:
    """`training.metrics.evaluate` of one model on labelled fingerprints (metres)."""
    pos, sigma = predict(backbone, head, torch.from_numpy(np.ascontiguousarray(data.csi)))
    return evaluate(pos, sigma, data.pos)
