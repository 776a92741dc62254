"""Source models of an experiment, trained once and cached in `<out>/sources/<name>/`.

Names are the strategies that start from them: `meml-mse`, `meml-nll` (one
backbone over every source environment, eq. 5), `meml-nll@<set>` (the same over
a named source set, `grid.SourceSet`), `maml-<loss>` and `tbmaml-<loss>` (a
meta-learned backbone + head over `Preset.source_envs`, `training.meta`) and
`dtl-<bs>` (a full model on one source environment). With `Preset.probe_envs`,
every MEML source keeps the checkpoint that transfers best to the probe scenes
(`training.probe`). A cache entry is `backbone.pt` (meta sources: plus `head.pt`)
and then `source.json`, each written
atomically, so `source.json` existing means the entry is whole.
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from training.config import TrainConfig, check_loss_name
from training.data.catalog import match_environments
from training.data.fingerprints import Fingerprints, open_environment
from training.data.splits import fraction_subset
from training.experiments.grid import (
    DTL_PREFIX,
    SET_SEP,
    Preset,
    Run,
    derive_seed,
    dtl_strategy,
    meta_variant,
    scene_of,
    source_set_of,
    strategy_kind,
)
from training.experiments.store import atomic_write_text
from training.meml import SourceData, train_sources
from training.meta import check_variant, train_meta
from training.nets import Backbone, BackboneConfig, Head
from training.probe import TransferProbe
from training.repository import atomic_write_bytes

SOURCES_DIR = "sources"


@dataclass(frozen=True)
class SourceSpec:
    """One source model to train (picklable, for worker processes)."""

    name: str
    preset: Preset
    env_paths: dict[str, Path]
    out_dir: Path
    seed: int
    device: str = "cpu"


def source_of(run: Run) -> str | None:
    """The cached source a run starts from (None for scratch)."""
    return None if strategy_kind(run.strategy) == "scratch" else run.strategy


def needed_sources(preset: Preset, runs: Iterable[Run]) -> list[str]:
    """Sources the given runs start from, slowest first: meta-learned, MEML, then DTL."""
    used = {source_of(r) for r in runs}
    order = [s for s in preset.strategies if strategy_kind(s) == "meta"]
    order += [s for s in preset.strategies if s.startswith("meml-")]
    order += [s for s in preset.strategies if s.startswith(DTL_PREFIX)]
    return [s for s in order if s in used]


def cost_units(preset: Preset, name: str) -> float:
    """Relative cost for the ETA: MEML trains on every source environment, DTL on one; a
    second-order meta step costs about six MEML steps on CPU (docs/results/meta)."""
    if not name.startswith("meml-") and strategy_kind(name) != "meta":
        return 1.0
    set_name = source_set_of(name)
    if set_name is None:
        envs = float(len(preset.source_envs))
    else:
        envs = float(preset.source_set(set_name).count or len(preset.source_envs) or 4)
    return 6.0 * envs if strategy_kind(name) == "meta" else envs


def source_set_envs(preset: Preset, name: str, available: Iterable[str], seed: int) -> list[str]:
    """The environments of one source set, given every environment the data holds.

    Scenes of targets and probes are left out whole (their other base stations
    share the geometry); a set with `count` takes the first `count` of one seeded
    order of the remaining candidates, the same for every set, so N_B = 16 is a
    subset of N_B = 64.
    """
    s = preset.source_set(name)
    names = dict.fromkeys(sorted(available), Path())
    held = {scene_of(e) for e in [*preset.targets, *probe_envs(preset, names)]}
    matched = match_environments(names, s.envs, what=f"source set {name!r}")
    candidates = sorted(e for e in matched if scene_of(e) not in held)
    if s.count is None:
        chosen = candidates
    else:
        if s.count > len(candidates):
            raise ValueError(
                f"source set {name!r} asks for {s.count} environments; the data holds "
                f"{len(candidates)} outside the held-out scenes"
            )
        order = np.random.default_rng(derive_seed(seed, "source-sets")).permutation(len(candidates))
        chosen = sorted(candidates[i] for i in order[: s.count])
    if not chosen:
        raise ValueError(f"source set {name!r}: no environment left outside the held-out scenes")
    return chosen


def probe_envs(preset: Preset, available: Iterable[str]) -> list[str]:
    """The preset's probe environments among those the data holds (empty: no probe)."""
    if not preset.probe_envs:
        return []
    return list(match_environments(dict.fromkeys(sorted(available), Path()), preset.probe_envs))


def source_dir(out_dir: Path, name: str) -> Path:
    return Path(out_dir) / SOURCES_DIR / name


def is_cached(out_dir: Path, name: str) -> bool:
    return (source_dir(out_dir, name) / "source.json").is_file()


def wall_times(out_dir: Path) -> dict[str, float]:
    """Training wall time per cached source, for the report."""
    root = Path(out_dir) / SOURCES_DIR
    out: dict[str, float] = {}
    for meta in sorted(root.glob("*/source.json")):
        out[meta.parent.name] = float(json.loads(meta.read_text(encoding="utf-8"))["wall_s"])
    return out


def env_counts(out_dir: Path) -> dict[str, int]:
    """Source environments (N_B) per cached source that records them."""
    root = Path(out_dir) / SOURCES_DIR
    out: dict[str, int] = {}
    for meta in sorted(root.glob("*/source.json")):
        envs = json.loads(meta.read_text(encoding="utf-8")).get("envs")
        if envs:
            out[meta.parent.name] = len(envs)
    return out


def read_capped(data_path: Path, env: str, cap: int | None, seed: int) -> Fingerprints:
    """An environment, or a seeded random `cap` of its samples (read lazily: no full load)."""
    with open_environment(data_path, env) as lazy:
        n = len(lazy)
        if cap is None or n <= cap:
            return lazy.read(slice(0, n))
        idx = fraction_subset(list(range(n)), cap / n, derive_seed(seed, "source-cap", env))
        return lazy.read(idx)


def train_config(budget: TrainConfig, loss: str, seed: int) -> TrainConfig:
    """A preset's budget with one run's loss and seed."""
    return budget.replace(
        loss=check_loss_name(loss),
        seed=seed,
        calibrate_sigma=False,  # the paper's protocol: sigma as trained
    )


def _source_env(preset: Preset, name: str) -> str:
    for env in preset.dtl_sources:
        if dtl_strategy(env) == name:
            return env
    raise ValueError(f"source {name!r} is not a DTL source of preset {preset.name!r}")


def train_source(spec: SourceSpec) -> float:
    """Train one source model and cache its backbone; return its wall time (s)."""
    t0 = time.perf_counter()
    preset, seed = spec.preset, derive_seed(spec.seed, "source", spec.name)
    cap = preset.max_source_samples
    probe = None
    if strategy_kind(spec.name) == "meta":
        return _train_meta_source(spec, seed)
    if spec.name.startswith("meml-"):
        strategy = spec.name.partition(SET_SEP)[0]
        envs = _source_envs(spec)
        config = train_config(preset.source, strategy.removeprefix("meml-"), seed)
        held_out = probe_envs(preset, spec.env_paths)
        if held_out:
            probe = TransferProbe.from_fingerprints(
                {e: read_capped(spec.env_paths[e], e, cap, spec.seed) for e in held_out},
                preset.probe_labels,
                derive_seed(spec.seed, "probe"),
            )
    else:
        envs = [_source_env(preset, spec.name)]
        config = train_config(preset.source, preset.dtl_loss, seed)
    data = {
        e: SourceData.split(
            read_capped(spec.env_paths[e], e, cap, spec.seed), config.val_fraction, config.seed
        )
        for e in envs
    }
    result = train_sources(
        data,
        config,
        backbone_config=preset.backbone_config(),
        quiet=True,
        device=spec.device,
        probe=probe,
    )
    wall = time.perf_counter() - t0
    folder = source_dir(spec.out_dir, spec.name)
    _atomic_torch_save(result.backbone.cpu().state_dict(), folder / "backbone.pt")
    meta: dict[str, Any] = {
        "name": spec.name,
        "config": config.to_dict(),
        "samples": result.samples,
        "epochs": result.report.epochs,
        "steps": result.report.steps,
        "degenerate": result.degenerate,
        "best_val_me": result.report.best_val_me,
        "envs": envs,
        "probe_me": result.probe_me,
        "history": [
            {k: row[k] for k in ("step", "val_loss", "val_me", "score") if k in row}
            for row in result.report.history
        ],
        "val_metrics": result.metrics,
        "data_fingerprint": result.data_fingerprint,
        "wall_s": wall,
    }
    atomic_write_text(folder / "source.json", json.dumps(meta, indent=1))
    return wall


def _source_envs(spec: SourceSpec) -> list[str]:
    """The environments a MEML or meta source trains over: its source set's, or the
    preset's `source_envs`."""
    set_name = source_set_of(spec.name)
    if set_name:
        return source_set_envs(spec.preset, set_name, spec.env_paths, spec.seed)
    return list(spec.preset.source_envs)


def _train_meta_source(spec: SourceSpec, seed: int) -> float:
    """A MAML / TB-MAML source: backbone.pt and head.pt (the meta-learned head init). Over
    a source set it trains on the set's environments; it has no transfer probe (its state
    is chosen on the sources' own validation, `training.meta`)."""
    t0 = time.perf_counter()
    preset = spec.preset
    variant, loss = meta_variant(spec.name)
    config = train_config(preset.source, loss, seed)
    data = {
        e: SourceData.split(
            read_capped(spec.env_paths[e], e, preset.max_source_samples, spec.seed),
            config.val_fraction,
            config.seed,
        )
        for e in _source_envs(spec)
    }
    result = train_meta(
        data,
        config,
        variant=check_variant(variant),
        backbone_config=preset.backbone_config(),
        device=spec.device,
    )
    wall = time.perf_counter() - t0
    folder = source_dir(spec.out_dir, spec.name)
    _atomic_torch_save(result.backbone.cpu().state_dict(), folder / "backbone.pt")
    _atomic_torch_save(result.head.cpu().state_dict(), folder / "head.pt")
    meta: dict[str, Any] = {
        "name": spec.name,
        "variant": variant,
        "config": config.to_dict(),
        "samples": {e: len(d.train) for e, d in data.items()},
        "steps": {"meta": result.steps},
        "best_step": result.best_step,
        "samples_drawn": result.samples,
        "samples_per_s": result.samples / max(result.wall_s, 1e-9),
        "rate_factors": result.rate_factors,
        "best_val_me": result.best_val_me,
        "val_metrics": result.metrics,
        "history": result.history,
        "data_fingerprint": result.data_fingerprint,
        "wall_s": wall,
    }
    atomic_write_text(folder / "source.json", json.dumps(meta, indent=1))
    return wall


def load_head(out_dir: Path, name: str | None, loss: str) -> Head | None:
    """The meta-learned head init of a cached meta source (None for other sources)."""
    if name is None or strategy_kind(name) != "meta":
        return None
    path = source_dir(out_dir, name) / "head.pt"
    if not path.is_file():
        return None
    head = Head(loss=check_loss_name(loss))
    head.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return head


def load_backbone(out_dir: Path, name: str | None, config: BackboneConfig) -> Backbone:
    """A fresh copy of a cached source backbone (each run fine-tunes its own)."""
    if name is None or not is_cached(out_dir, name):
        raise FileNotFoundError(f"source model {name!r} is not in {Path(out_dir) / SOURCES_DIR}")
    backbone = Backbone(config)
    state = torch.load(
        source_dir(out_dir, name) / "backbone.pt", map_location="cpu", weights_only=True
    )
    backbone.load_state_dict(state)
    return backbone


def _atomic_torch_save(obj: object, path: Path) -> None:
    buf = io.BytesIO()
    torch.save(obj, buf)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, buf.getvalue())
