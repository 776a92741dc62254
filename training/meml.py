"""Source training: MEML (paper eq. 5), DTL, and scratch models, all through `training.fit`.

- **MEML**: one backbone shared by one head per source environment. Every
  step takes a batch from every environment and minimises the sum of their
  losses; smaller environments are cycled with their own reshuffled
  permutations (see `training.fit`), so each environment weighs the same in
  every step however many samples it has. Early stopping watches the sum of
  the per-environment validation losses. With hundreds of environments,
  ``config.envs_per_step`` = k draws k of them per step (an epoch then counts
  the steps for every environment to be seen once in expectation), the heads
  train as one `BatchedHeads`, and `SourceData.from_file(..., lazy=True)`
  leaves the training CSI on disk.
- **DTL**: the same with one source environment (a full model on it).
- **Scratch**: the same with the *target's* own train/validation split,
  from random initialisation.

All three call `train_sources` with a `SourceData` per environment (built in
memory, from a file, or as a seeded split); it is the one entry point.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch

from training.config import TrainConfig
from training.data.fingerprints import Fingerprints, data_fingerprint, open_environment
from training.data.lazy import LazyRows
from training.data.prefetch import reader_pool
from training.data.splits import split_train_val, train_val_indices
from training.fit import FitReport, Phase, ProgressFn, Shard, Task, fit
from training.metrics import finish_head
from training.nets import Backbone, BackboneConfig, Head, HeadConfig, SiteModel
from training.probe import TransferProbe
from training.unlabelled import TrackPairs

RETRY_SEED_OFFSET = 7919
"""Seed offset of the second initialisation a degenerate run gets (a prime: no collisions
with the seeds of neighbouring heads, ``seed + 1 + k``)."""


@dataclass
class SourceResult:
    """A trained backbone with its heads, the fit report and validation metrics per env.

    ``degenerate`` lists the environments whose validation ME stayed within 5 % of
    the centroid predictor's (see `training.config.DEGENERATE_RATIO`); their metrics
    carry ``degenerate: 1.0`` too. ``retried`` says a second initialisation was tried.
    """

    backbone: Backbone
    heads: dict[str, Head]
    report: FitReport
    metrics: dict[str, dict[str, float]]
    config: TrainConfig
    data_fingerprint: str
    samples: dict[str, int] = field(default_factory=dict)
    degenerate: list[str] = field(default_factory=list)
    retried: bool = False
    probe_me: dict[str, float] = field(default_factory=dict)
    """ME of fresh linear heads on the held-out probe environments (empty: no probe)."""

    def site_model(self, env: str) -> SiteModel:
        """The full model of one environment (backbone + its head)."""
        return SiteModel(self.backbone, self.heads[env])


@dataclass
class SourceData:
    """One environment as this process trains on it.

    Under torchrun each rank holds only its strided shard of the train and
    validation rows; the head's position normalisation comes from the whole
    training split (``train_pos``), so it is the same on every rank.
    """

    train: Fingerprints | LazyRows
    """In memory, or `LazyRows` (read from the file as batches are drawn)."""
    val: Fingerprints
    train_pos: npt.NDArray[np.float32]
    train_size: int
    fingerprint: str
    val_full: Fingerprints | None = None
    """The whole validation split, for the final metrics (main process only)."""
    tracks: TrackPairs | None = None
    """Unlabelled pairs of this environment (`training.unlabelled`; scratch on a site)."""
    reference: Fingerprints | None = None
    """The labelled fingerprints of a site whose ``train`` holds augmented copies
    (`training.augment`): the head's neighbour terms are fitted on them, and the step
    budget counts passes over them, not over ``train``."""

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
    def split(
        cls, data: Fingerprints, val_fraction: float, seed: int, shard: Shard | None = None
    ) -> SourceData:
        """A seeded random train/validation split of in-memory fingerprints."""
        train, val = split_train_val(data, val_fraction, seed)
        return cls.in_memory(train, val, shard)

    @classmethod
    def from_file(
        cls,
        path: str | Path,
        env: str,
        val_fraction: float,
        seed: int,
        shard: Shard | None = None,
        *,
        lazy: bool = False,
    ) -> SourceData:
        """Read only this rank's rows of ``env`` (plus all positions, and on rank 0 the
        whole validation split), so N processes never hold N copies of the CSI.

        ``lazy``: keep the training CSI on disk (`LazyRows`: read a shuffled window of
        chunks at a time), for corpora larger than RAM; validation stays in memory.
        """
        rank, world = (shard.rank, shard.world) if shard else (0, 1)
        with open_environment(path, env) as lazy_env:
            train_idx, val_idx = train_val_indices(len(lazy_env), val_fraction, seed)
            pos = lazy_env.read_field("pos")
            if pos is None:  # the schema requires pos; a reader bug would land here
                raise ValueError(f"{path}: environment {env!r} has no pos")
            val = lazy_env.read(val_idx[rank::world])
            own = train_idx[rank::world]
            return cls(
                train=LazyRows(path, env, own) if lazy else lazy_env.read(own),
                val=val,
                train_pos=np.asarray(pos[train_idx], dtype=np.float32),
                train_size=len(train_idx),
                fingerprint=data_fingerprint(lazy_env),
                val_full=(val if world == 1 else lazy_env.read(val_idx)) if rank == 0 else None,
            )


def _reference(src: SourceData) -> Fingerprints | None:
    """The labelled fingerprints behind ``src``'s head (sigma's distance term needs every
    one, so a rank's shard gives none)."""
    if src.reference is not None:
        return src.reference
    if isinstance(src.train, Fingerprints) and len(src.train) == src.train_size:
        return src.train
    return None


def combined_fingerprint(parts: Mapping[str, str]) -> str:
    """One sha256 over the environments' own data fingerprints (name -> hash), in name order."""
    h = hashlib.sha256()
    for name in sorted(parts):
        h.update(f"{name}={parts[name]};".encode())
    return h.hexdigest()


def source_phases(
    config: TrainConfig, n_train: int, n_envs: int = 1, *, target_recipe: bool = False
) -> list[Phase]:
    """Source training is one all-parameter phase (with the optional NLL's MSE warm-up).

    It selects by the validation loss on a plateau schedule; ``target_recipe`` (scratch
    at a site, the fair baseline of fine-tuning) takes the target training's
    ``config.select`` and ``config.schedule`` instead.

    When a step draws ``config.envs_per_step`` of ``n_envs`` environments, an epoch is
    ``n_envs / envs_per_step`` times as many steps (each environment seen once in
    expectation), so ``epochs`` and the automatic ``eval_every`` keep their meaning.
    """
    k = config.envs_per_step
    if 0 < k < n_envs:
        n_train = math.ceil(n_train * n_envs / k)
    return [
        Phase(
            "train",
            "all",
            config.lr,
            config.budget(n_train),
            lr_patience=config.lr_patience,
            mse_warmup_steps=config.mse_warmup_steps if config.loss == "nll" else 0,
            select=config.select if target_recipe else "loss",
            schedule=config.schedule if target_recipe else "plateau",
        )
    ]


def train_sources(
    sources: Mapping[str, SourceData],
    config: TrainConfig,
    *,
    backbone_config: BackboneConfig | None = None,
    head_config: HeadConfig | None = None,
    quiet: bool = False,
    progress: ProgressFn | None = None,
    shard: Shard | None = None,
    device: torch.device | str = "cpu",
    probe: TransferProbe | None = None,
    target_recipe: bool = False,
    read_workers: int = 0,
) -> SourceResult:
    """Train a fresh backbone and one fresh head per environment of ``sources``.

    MEML (several environments), DTL (one source) and scratch (the target's own
    split) all come here. Under torchrun (``shard``) each `SourceData` holds this
    rank's rows. A single-environment run that ends degenerate is trained once
    more from another initialisation (``config.retry_degenerate``; MEML's
    environments are only flagged: one hard environment says nothing about the
    initialisation), and the better run by validation score is kept.

    ``probe``: held-out environments that measure transfer (`training.probe`);
    early stopping and the kept checkpoint then follow their mean ME, not the
    source validation loss, and `SourceResult.probe_me` holds the final ME per
    held-out environment. ``target_recipe``: train with target training's selection
    and schedule (see `source_phases`). ``read_workers`` > 0: lazy sources read their
    windows in that many processes (`training.data.prefetch`; the same batches), for a
    device that trains faster than one core inflates HDF5 chunks.
    """
    if not sources:
        raise ValueError("no environments to train on: expected at least one")
    lazy = any(isinstance(src.train, LazyRows) for src in sources.values())
    pool = reader_pool(read_workers) if read_workers and lazy else None

    def once(init_seed: int) -> SourceResult:
        return _train_once(
            sources,
            config,
            init_seed,
            backbone_config=backbone_config,
            head_config=head_config,
            quiet=quiet,
            progress=progress,
            shard=shard,
            device=device,
            probe=probe,
            target_recipe=target_recipe,
            read_pool=pool,
        )

    try:
        result = once(config.seed)
        if result.degenerate and config.retry_degenerate and len(sources) == 1:
            again = once(config.seed + RETRY_SEED_OFFSET)
            if again.report.best_score < result.report.best_score:
                result = again
            result.retried = True
        return result
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)


def _train_once(
    sources: Mapping[str, SourceData],
    config: TrainConfig,
    init_seed: int,
    *,
    backbone_config: BackboneConfig | None,
    head_config: HeadConfig | None,
    quiet: bool,
    progress: ProgressFn | None,
    shard: Shard | None,
    device: torch.device | str,
    probe: TransferProbe | None = None,
    target_recipe: bool = False,
    read_pool: Executor | None = None,
) -> SourceResult:
    backbone = Backbone(backbone_config, seed=init_seed)
    heads: dict[str, Head] = {}
    tasks: list[Task] = []
    for k, (name, src) in enumerate(sorted(sources.items())):
        head = Head(head_config, loss=config.loss, seed=init_seed + 1 + k)
        head.fit_position_normalisation(src.train_pos)
        heads[name] = head
        if isinstance(src.train, LazyRows):
            tasks.append(Task.lazy(name, head, src.train, src.val))
        else:
            tasks.append(Task.from_fingerprints(name, head, src.train, src.val))
        tasks[-1].tracks = src.tracks
    # This rank's rows set the epoch: under torchrun an epoch is over the shard; a site
    # with augmented copies counts its labelled fingerprints, as its target modes do.
    n_train = max(
        len(src.train if src.reference is None else src.reference) for src in sources.values()
    )
    report = fit(
        backbone,
        tasks,
        source_phases(config, n_train, len(tasks), target_recipe=target_recipe),
        loss=config.loss,
        beta=config.beta,
        batch_size=config.batch_size,
        seed=config.seed,
        weight_decay=config.weight_decay,
        quiet=quiet,
        progress=progress,
        shard=shard,
        device=device,
        envs_per_step=config.envs_per_step,
        batched_heads=config.batched_heads,
        selector=None if probe is None else probe.score,
        track_weight=config.track_weight,
        episode_weight=config.episode_weight,
        read_pool=read_pool,
    )
    backbone.cpu()
    for head in heads.values():
        head.cpu()
    degenerate = report.degenerate_tasks
    metrics = {
        name: finish_head(
            backbone,
            heads[name],
            src.val if src.val_full is None else src.val_full,
            config,
            reference=_reference(src),
        )
        for name, src in sources.items()
    }
    for name in degenerate:
        metrics[name]["degenerate"] = 1.0
    return SourceResult(
        backbone=backbone,
        heads=heads,
        report=report,
        metrics=metrics,
        config=config,
        data_fingerprint=combined_fingerprint({n: s.fingerprint for n, s in sources.items()}),
        samples={name: src.train_size for name, src in sources.items()},
        degenerate=degenerate,
        probe_me={} if probe is None else probe(backbone),
    )
