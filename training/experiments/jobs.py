"""One target run: its data split, its starting backbone, its training, its test metrics.

Splits are pure functions of (experiment seed, target, fold, fraction), so every
worker process computes the same indices without sharing state:

- a fixed test set per target (`test_fraction` of the target);
- the rest is the labelled pool (optionally capped), split into `k` folds:
  fold i validates on part i and trains on the others;
- a run keeps `fraction` of its fold's training part *and* of its validation
  part: a site with 20 % of the data has 20 % for validation too. The subsets
  are nested across fractions (`fraction_subset`), so a larger fraction only
  adds samples.

All runs of one (target, loss, fraction, fold) share the seed of the new head,
so strategies differ by their backbone, not by the luck of an init.

Label-budget runs (`Run.labels`, the `transfer` preset) draw their labelled
set from the pool instead: fold i is seed i, an independent permutation of the
pool whose first `labels` samples are the run's (so budgets are nested), the
first `val_fraction` of them validating. A budget larger than a target's pool
is not planned (`planned_runs`).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from training.config import check_mode
from training.data.catalog import environments_in, match_environments
from training.data.fingerprints import Fingerprints, open_environment
from training.data.splits import fraction_subset, kfold, train_val_test
from training.experiments import sources
from training.experiments.grid import Preset, Run, derive_seed, meta_variant, strategy_kind
from training.experiments.store import RunResult
from training.metrics import evaluate_model
from training.transfer import train_target

IndexArray = npt.NDArray[np.int64]


@dataclass(frozen=True)
class RunSpec:
    """Everything a worker process needs to execute one run (picklable)."""

    run: Run
    preset: Preset
    env_paths: dict[str, Path]
    out_dir: Path
    seed: int
    device: str = "cpu"


@dataclass(frozen=True)
class TargetSplit:
    """A target's fixed test set and its labelled pool's K folds (absolute indices)."""

    test: IndexArray
    pool: IndexArray
    folds: list[tuple[IndexArray, IndexArray]]

    def run_indices(
        self, run: Run, seed: int, val_fraction: float = 0.2
    ) -> tuple[IndexArray, IndexArray]:
        """(train, val) of one run: its fold, reduced to its fraction (nested across fractions),
        or, for a label-budget run, the first `labels` of its seed's permutation of the pool."""
        if run.labels:
            if run.labels > len(self.pool):
                raise ValueError(
                    f"{run.id}: {run.labels} labels asked, the pool of {run.target!r} holds "
                    f"{len(self.pool)}"
                )
            order = np.random.default_rng(derive_seed(seed, "labels", run.target, run.fold))
            chosen = self.pool[order.permutation(len(self.pool))[: run.labels]]
            n_val = min(run.labels - 1, max(1, round(run.labels * val_fraction)))
            return chosen[n_val:], chosen[:n_val]
        train, val = self.folds[run.fold]
        key = derive_seed(seed, "fraction", run.target, run.fold)
        return (
            fraction_subset(train, run.fraction, key),
            fraction_subset(val, run.fraction, derive_seed(key, "val")),
        )


def target_split(n: int, preset: Preset, seed: int, target: str) -> TargetSplit:
    """Fixed test set, capped pool, and folds of one target with `n` samples."""
    split = train_val_test(n, 0.0, preset.test_fraction, derive_seed(seed, "test", target))
    test, pool = split.test, split.train
    if preset.max_test is not None and len(test) > preset.max_test:
        test = fraction_subset(test, preset.max_test / len(test), derive_seed(seed, "cap", target))
    cap = preset.max_target_pool
    if cap is not None and len(pool) > cap:
        pool = fraction_subset(pool, cap / len(pool), derive_seed(seed, "pool", target))
    if len(pool) < preset.k:
        raise ValueError(
            f"target {target!r}: {len(pool)} labelled samples cannot make {preset.k} folds"
        )
    folds = kfold(len(pool), preset.k, derive_seed(seed, "kfold", target))
    return TargetSplit(test, pool, [(pool[tr], pool[va]) for tr, va in folds])


def locate_data(preset: Preset, paths: Sequence[Path]) -> dict[str, Path]:
    """Which file holds each environment the preset needs (the first that has it).

    Source sets and probes given as patterns bring every environment they match.
    Raises with the missing environments and what the files do have, so a
    wrong `--data` is a one-line fix.
    """
    present = environments_in(paths)
    plain = [*preset.source_envs] if not preset.source_sets else []
    needed = [*preset.targets, *plain, *preset.dtl_sources]
    missing = [e for e in needed if e not in present]
    if missing:
        raise ValueError(
            f"preset {preset.name!r} needs environments {missing}; "
            f"{', '.join(map(str, paths))} hold {sorted(present)}"
        )
    out = {env: present[env] for env in needed}
    patterns = [*(e for s in preset.source_sets for e in s.envs), *preset.probe_envs]
    out.update(match_environments(present, patterns, what=f"preset {preset.name!r}: entry"))
    return out


def planned_runs(preset: Preset, sizes: dict[str, int], seed: int) -> list[Run]:
    """The preset's runs, less label budgets larger than a target's labelled pool."""
    runs = preset.runs()
    if not preset.labels:
        return runs
    pools = {t: len(target_split(sizes[t], preset, seed, t).pool) for t in preset.targets}
    return [r for r in runs if r.labels <= pools[r.target]]


def data_sizes(env_paths: dict[str, Path]) -> dict[str, int]:
    """Samples per environment (from the file headers, no full read)."""
    sizes = {}
    for env, path in env_paths.items():
        with open_environment(path, env) as lazy:
            sizes[env] = len(lazy)
    return sizes


def data_descriptions(env_paths: dict[str, Path]) -> dict[str, dict[str, Any]]:
    """Per environment: file, description and how it was made (the file's `source` attr)."""
    out: dict[str, dict[str, Any]] = {}
    for env, path in env_paths.items():
        with open_environment(path, env) as lazy:
            out[env] = {
                "file": str(path),
                "description": lazy.meta.description,
                "source": lazy.meta.source,
            }
    return out


def cost_units(run: Run) -> float:
    """Relative cost of a run for the ETA: its data grows with the fraction, plus a fixed part."""
    return 0.1 + (run.labels / 1000 if run.labels else run.fraction)


@dataclass(frozen=True)
class TargetData:
    """The part of a target an experiment uses (test set and pool), read once per process.

    `rows` are the file indices held in `data`, sorted, so `take` maps the
    split's file indices to rows without reading the file again.
    """

    split: TargetSplit
    rows: IndexArray
    data: Fingerprints

    def take(self, idx: IndexArray) -> Fingerprints:
        return self.data.subset(np.searchsorted(self.rows, idx))


_TARGETS: dict[tuple[str, str, str, int], TargetData] = {}


def load_target(path: Path, target: str, preset: Preset, seed: int) -> TargetData:
    """A target's split and only the samples it needs (a large file is never read whole)."""
    key = (str(Path(path).resolve()), target, preset.fingerprint(), seed)
    if key not in _TARGETS:
        with open_environment(path, target) as lazy:
            split = target_split(len(lazy), preset, seed, target)
            rows = np.union1d(split.test, split.pool).astype(np.int64)
            _TARGETS[key] = TargetData(split, rows, lazy.read(rows))
    return _TARGETS[key]


def execute_run(spec: RunSpec) -> RunResult:
    """Train one run from its starting backbone and score it on the target's fixed test set."""
    run, preset = spec.run, spec.preset
    t0 = time.perf_counter()
    target = load_target(spec.env_paths[run.target], run.target, preset, spec.seed)
    train_idx, val_idx = target.split.run_indices(run, spec.seed, preset.target.val_fraction)
    train, val = target.take(train_idx), target.take(val_idx)
    test = target.take(target.split.test)
    seed = derive_seed(spec.seed, "run", run.target, run.loss, run.amount, run.fold)

    config = sources.train_config(preset.target, run.loss, seed)
    config = config.replace(
        calibrate_sigma=preset.calibrate_targets,
        auto_scratch_min=config.auto_scratch_min if preset.auto_scratch else None,
    )
    if strategy_kind(run.strategy) == "scratch":
        trained = train_target(
            None,
            train,
            val,
            config,
            mode="finetune",
            quiet=True,
            device=spec.device,
            backbone_config=preset.backbone_config(),
        )
    else:
        source = sources.source_of(run)
        backbone = sources.load_backbone(spec.out_dir, source, preset.backbone_config())
        # Meta sources start the target from their head as well; a target of another loss
        # than the source's cannot use it (other outputs) and gets a random head.
        head = (
            sources.load_head(spec.out_dir, source, meta_variant(run.strategy)[1])
            if strategy_kind(run.strategy) == "meta"
            else None
        )
        trained = train_target(
            backbone,
            train,
            val,
            config,
            mode=check_mode(run.mode),
            quiet=True,
            device=spec.device,
            head_init=head if head is not None and head.loss == run.loss else None,
        )
    metrics = evaluate_model(trained.model.backbone, trained.model.head, test)
    metrics["degenerate"] = 1.0 if trained.degenerate else 0.0
    return RunResult(
        run=run,
        n_train=len(train),
        n_val=len(val),
        n_test=len(test),
        metrics=metrics,
        epochs=tuple(p.epochs for p in trained.report.phases),
        extra={
            "steps": list(trained.report.steps.values()),
            "chosen_mode": trained.chosen,
            "final_phase": trained.report.final_phase,
            "retried": trained.retried,
            "candidates": trained.candidates,
            "torch_threads": torch.get_num_threads(),
            **{k: v for k, v in trained.metrics.items() if k.startswith("sigma_scale_")},
        },
        best_val_me=trained.report.best_val_me,
        wall_s=time.perf_counter() - t0,
        seed=seed,
    )
