"""A procedural corpus: scenes ``seed .. seed+count-1`` traced in parallel into one file.

Each finished scene is first written to its own HDF5 file in ``<out>.parts/``
(written aside, then renamed, so a part is either complete or absent). A run that
is killed and started again with the same options skips the finished parts; once
all are there they are merged into `out` (again written aside and renamed) in scene
order, so the file does not depend on which worker finished first. The parts
folder also holds ``run.json``, the options of the run, so that parts of a
different run are never mixed in.

Scenes are traced by a `training.cluster` executor (this process, a local
process pool, or Ray tasks on other machines): a job traces into a scratch dir
of the machine it runs on and returns the part's bytes, and this process writes
the part. So the parts folder only needs to be on the driver's disk.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py

from training.cluster import ExecutorConfig, map_unordered, open_executor
from training.data.fingerprints import list_environments, open_for_write, read_environment_meta
from training.sim.generate import EnvironmentReport, generate
from training.sim.presets import Preset
from training.sim.procedural import (
    ProceduralPreset,
    get_procedural_preset,
    procedural_chains,
    procedural_scene,
    scene_name,
)
from training.sim.scene import SceneSpec

log = logging.getLogger(__name__)


@dataclass
class CorpusReport:
    """What `simulate_procedural` did: scenes traced now, scenes found finished, what it wrote."""

    path: Path
    traced: list[int] = field(default_factory=list)
    skipped: list[int] = field(default_factory=list)
    environments: list[EnvironmentReport] = field(default_factory=list)
    wall_s: float = 0.0


def parts_dir(out: str | Path) -> Path:
    """Where the finished scenes of an unmerged run wait: ``<out>.parts``."""
    p = Path(out)
    return p.with_name(p.name + ".parts")


def _trace_scene(
    index: int,
    preset: ProceduralPreset,
    randomise: bool,
    positions: int,
    parts: str,
    progress: Any = None,
) -> tuple[int, list[EnvironmentReport]]:
    """Trace one scene into ``parts/sNNNN.h5``."""
    spec = procedural_scene(index, preset)
    # Without randomisation every BS gets the nominal chain, recorded as such.
    chains = procedural_chains(index, spec, preset, randomise=True) if randomise else None
    final = Path(parts) / f"{scene_name(index)}.h5"
    tmp = final.with_suffix(".h5.tmp")
    tmp.unlink(missing_ok=True)

    def tick(k: int) -> None:
        if progress is not None:
            progress.put(k)

    report = generate(
        spec,
        tmp,
        preset=_as_preset(preset, spec),
        seed=index,
        positions=positions,
        chains=chains,
        quiet=True,
        on_positions=tick,
    )
    _fsync(tmp)
    tmp.replace(final)
    return index, report.environments


@dataclass(frozen=True)
class TracedPart:
    """One traced scene as its part file's bytes: the driver writes it into ``<out>.parts``."""

    index: int
    environments: list[EnvironmentReport]
    data: bytes


def trace_part(
    index: int, preset: ProceduralPreset, randomise: bool, positions: int, progress: Any = None
) -> TracedPart:
    """Trace one scene in a scratch dir of whichever machine runs it; return the part."""
    with tempfile.TemporaryDirectory(prefix="csipos-scene-") as tmp:
        _, envs = _trace_scene(index, preset, randomise, positions, tmp, progress)
        return TracedPart(index, envs, (Path(tmp) / f"{scene_name(index)}.h5").read_bytes())


def _write_part(final: Path, data: bytes) -> None:
    """Aside, fsync, rename: a part in ``<out>.parts`` is whole or absent."""
    tmp = final.with_suffix(".h5.tmp")
    with tmp.open("wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(final)


def _as_preset(preset: ProceduralPreset, spec: SceneSpec) -> Preset:
    """The fixed-scene `Preset` that `generate` takes, with this scene's solver settings."""
    return Preset(
        name=f"procedural-{preset.name}",
        source_positions=preset.positions,
        target_positions=preset.positions,
        solver=preset.solver_for(spec),
    )


def _run_options(
    preset: ProceduralPreset, randomise: bool, positions: int, seed: int, count: int
) -> dict[str, Any]:
    return {
        "preset": preset.to_dict(),
        "randomise_chain": randomise,
        "positions": positions,
        "first_scene": seed,
        "count": count,
    }


def _check_parts(parts: Path, options: dict[str, Any]) -> None:
    record = parts / "run.json"
    parts.mkdir(parents=True, exist_ok=True)
    if record.exists():
        previous = json.loads(record.read_text(encoding="utf-8"))
        if previous != json.loads(json.dumps(options)):
            raise ValueError(
                f"{parts} holds the parts of a run with other options; delete it, or rerun "
                f"with the options in {record}"
            )
    else:
        record.write_text(json.dumps(options, indent=1), encoding="utf-8")
    for stale in parts.glob("*.h5.tmp"):  # a scene that was being written when the run died
        stale.unlink()


def _check_same_run(out: Path, specs: list[SceneSpec], randomise: bool, positions: int) -> None:
    """Refuse to call a file finished when its environments came from other options."""
    chain = "randomised" if randomise else "nominal"
    for spec in specs:
        source = read_environment_meta(out, spec.environment_names()[0]).source
        if (
            source.get("scene") != spec.to_dict()
            or source.get("chain") != chain
            or source.get("positions") != positions
        ):
            raise FileExistsError(
                f"{out}: holds {spec.environment_names()[0]} from a run with other options "
                "(scene, chain or positions); pass overwrite=True to replace it"
            )


def _merge(out: Path, parts: Path, specs: list[SceneSpec], overwrite: bool) -> None:
    merging = out.with_name(out.name + ".merging")
    if out.exists():
        shutil.copyfile(out, merging)
    else:
        merging.unlink(missing_ok=True)
    with open_for_write(merging) as dst:
        for spec in specs:
            with h5py.File(parts / f"{spec.name}.h5", "r") as src:
                for env in spec.environment_names():
                    if env in dst:
                        if not overwrite:
                            raise FileExistsError(
                                f"{out}: environment '{env}' already exists; "
                                "pass overwrite=True to replace it"
                            )
                        del dst[env]
                    parent, _, leaf = env.rpartition("/")
                    src.copy(src[env], dst.require_group(parent) if parent else dst, name=leaf)
    _fsync(merging)
    merging.replace(out)


def simulate_procedural(
    out: str | Path,
    *,
    count: int,
    seed: int = 0,
    preset: str | ProceduralPreset = "tiny",
    workers: int = 1,
    randomise_chain: bool = True,
    positions: int | None = None,
    overwrite: bool = False,
    on_progress: Callable[[int, int], None] | None = None,
    executor: ExecutorConfig | None = None,
) -> CorpusReport:
    """Trace scenes ``seed .. seed+count-1`` of `preset`, one environment per (scene, BS).

    `workers` > 1 traces scenes in that many processes; `executor` (e.g. Ray)
    replaces that local pool. `on_progress(done, total)` reports positions x base
    stations traced. Resumable: see the module docstring.
    """
    if count < 1:
        raise ValueError(f"count: expected at least one scene, got {count}")
    if seed < 0:
        raise ValueError(f"seed: expected a non-negative first scene number, got {seed}")
    if workers < 1:
        raise ValueError(f"workers: expected >= 1, got {workers}")
    chosen = get_procedural_preset(preset) if isinstance(preset, str) else preset
    n = positions if positions is not None else chosen.positions
    if n < 1:
        raise ValueError(f"positions: expected at least 1, got {n}")
    out = Path(out)
    started = time.perf_counter()
    indices = list(range(seed, seed + count))
    specs = [procedural_scene(k, chosen) for k in indices]
    report = CorpusReport(path=out)
    parts = parts_dir(out)
    expected = [env for spec in specs for env in spec.environment_names()]
    if out.exists() and not overwrite:
        present = set(list_environments(out))
        if set(expected) <= present:  # a finished run (maybe killed before cleaning up)
            _check_same_run(out, specs, randomise_chain, n)
            if parts.exists():
                shutil.rmtree(parts)
            report.skipped = indices
            report.wall_s = time.perf_counter() - started
            return report
        clash = sorted(present & set(expected))
        if clash and not parts.exists():
            raise FileExistsError(
                f"{out}: environments {clash[:3]} already exist; pass overwrite=True to replace"
            )
    out.parent.mkdir(parents=True, exist_ok=True)
    _check_parts(parts, _run_options(chosen, randomise_chain, n, seed, count))
    todo = [k for k in indices if not (parts / f"{scene_name(k)}.h5").exists()]
    report.skipped = [k for k in indices if k not in todo]
    total = sum(n * len(spec.base_stations) for spec in specs)
    done = sum(
        n * len(spec.base_stations) for k, spec in zip(indices, specs, strict=True) if k not in todo
    )
    if on_progress is not None:
        on_progress(done, total)

    def advance(k: int) -> None:
        nonlocal done
        done += k
        if on_progress is not None:
            on_progress(done, total)

    results: dict[int, list[EnvironmentReport]] = {}
    cluster = executor if executor is not None else ExecutorConfig("local", workers=workers)
    if todo:  # a resume with every part done just merges (no cluster needed)
        _trace_all(cluster, todo, chosen, randomise_chain, n, parts, advance, results)
    report.traced = todo
    report.environments = [env for k in todo for env in results[k]]
    _merge(out, parts, specs, overwrite)
    shutil.rmtree(parts)
    report.wall_s = time.perf_counter() - started
    return report


def _trace_all(
    cluster: ExecutorConfig,
    todo: list[int],
    preset: ProceduralPreset,
    randomise: bool,
    positions: int,
    parts: Path,
    advance: Callable[[int], None],
    results: dict[int, list[EnvironmentReport]],
) -> None:
    """Trace the scenes `todo` where `cluster` says; write each part as it arrives."""
    with open_executor(cluster, jobs=len(todo)) as ex:
        ticks = ex.channel(lambda k: advance(int(k)))
        traced = map_unordered(
            ex,
            trace_part,
            todo,
            args=lambda k: (k, preset, randomise, positions, ticks.sender),
            poll=ticks.drain,
        )
        for k, part, error in traced:
            if error is not None:
                raise error  # as in one process: finished parts stay for the rerun
            assert part is not None
            _write_part(parts / f"{scene_name(k)}.h5", part.data)
            results[k] = part.environments
            log.info("scene %s done", scene_name(k))
        ticks.drain()


def _fsync(path: Path) -> None:
    with path.open("rb") as f:
        os.fsync(f.fileno())
