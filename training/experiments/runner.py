"""Run an experiment grid: sources once, then every pending run, resumably and in parallel.

The out dir is the experiment's whole state: `experiment.json` (what it is),
`sources/` (the cached source models), `runs/` (one file per finished run).
Rerunning the same command continues where the last one stopped; asking an
out dir for a different preset, seed or data is refused instead of mixing
results.

Sources and runs are independent jobs for a `training.cluster` executor: with
`workers > 1` a local process pool (spawned, one torch thread each, so 2
workers use 2 cores without oversubscription), with one worker this process, or
Ray tasks on a cluster. Jobs return what they made (a source's files, a run's
result) and this process writes it into the out dir, atomically: only the
driver needs the out dir, and resume is the same on every executor.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import socket
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import torch

from training.allocator import keep_freed_memory
from training.cluster import ExecutorConfig, map_unordered, open_executor
from training.experiments import jobs, sources
from training.experiments.grid import Preset, Run
from training.experiments.report import ReportContext, write_report
from training.experiments.store import ResultStore, RunResult, atomic_write_text
from training.repository import atomic_write_bytes

log = logging.getLogger(__name__)

STATE_FILE = "experiment.json"


@dataclass(frozen=True)
class Progress:
    """One progress update: `done` of `total` jobs of a stage, with an ETA when it can tell."""

    stage: Literal["sources", "runs"]
    done: int
    total: int
    failed: int
    elapsed_s: float
    eta_s: float | None
    last: str


ProgressFn = Callable[[Progress], None]


@dataclass
class Outcome:
    """What one invocation did; `failed` maps run/source ids to their error message."""

    planned: list[Run]
    ran: int
    skipped: int
    failed: dict[str, str] = field(default_factory=dict)
    report: Path | None = None
    elapsed_s: float = 0.0

    @property
    def complete(self) -> bool:
        return not self.failed


class ExperimentStateError(ValueError):
    """The out dir holds an experiment made with another preset, seed or data."""


def _state(preset: Preset, env_paths: dict[str, Path], seed: int) -> dict[str, Any]:
    return {
        "preset": preset.name,
        "preset_fingerprint": preset.fingerprint(),
        "seed": seed,
        "data": {env: str(path) for env, path in env_paths.items()},
        "data_sizes": jobs.data_sizes(env_paths),
        "data_sources": jobs.data_descriptions(env_paths),
        "config": preset.to_dict(),
    }


def check_state(out_dir: Path, state: dict[str, Any]) -> None:
    """Record the experiment's identity in the out dir, or refuse one that differs."""
    path = out_dir / STATE_FILE
    if path.is_file():
        old = json.loads(path.read_text(encoding="utf-8"))
        for key in ("preset", "preset_fingerprint", "seed", "data_sizes"):
            if old.get(key) != state[key]:
                raise ExperimentStateError(
                    f"{out_dir} holds an experiment with {key}={old.get(key)!r}, not "
                    f"{state[key]!r}; resume it with the same options or choose another --out"
                )
        return
    atomic_write_text(path, json.dumps(state, indent=1))


def _init_worker(threads: int) -> None:
    # Each worker has its own cores: torch's default (every core) would fight the others.
    torch.set_num_threads(threads)
    keep_freed_memory()
    with contextlib.suppress(RuntimeError):  # only settable before the first parallel op
        torch.set_num_interop_threads(1)
    logging.getLogger("training").setLevel(logging.WARNING)


@dataclass(frozen=True)
class SourceFiles:
    """A trained source as its cache files (`sources/<name>/...`), in the order to write them."""

    name: str
    files: tuple[tuple[str, bytes], ...]
    wall_s: float

    def write(self, out_dir: Path) -> None:
        """Cache it in `out_dir`, each file atomically, `source.json` (the "whole" mark) last."""
        folder = sources.source_dir(out_dir, self.name)
        folder.mkdir(parents=True, exist_ok=True)
        for name, data in self.files:
            atomic_write_bytes(folder / name, data)

    @classmethod
    def read(cls, out_dir: Path, name: str) -> SourceFiles:
        folder = sources.source_dir(out_dir, name)
        # hidden names are writes a killed driver left half done (`atomic_write_bytes`)
        files = (p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
        paths = sorted(files, key=_write_order)
        return cls(name, tuple((p.name, p.read_bytes()) for p in paths), 0.0)


def _write_order(path: Path) -> tuple[bool, str]:
    return path.name == SOURCE_MARK, path.name


SOURCE_MARK = "source.json"


def _check_data_here(env_paths: dict[str, Path]) -> None:
    missing = sorted({str(p) for p in env_paths.values() if not Path(p).is_file()})
    if missing:
        raise FileNotFoundError(
            f"{', '.join(missing)}: not found on host {socket.gethostname()}; jobs read the "
            "fingerprint files at the driver's path: put them on a file system every node "
            "mounts at that path, or copy them there (docs/cluster.md)"
        )


def train_source_job(spec: sources.SourceSpec) -> SourceFiles:
    """Train one source in a scratch dir and return its files (the driver caches them)."""
    _check_data_here(spec.env_paths)
    with tempfile.TemporaryDirectory(prefix="csipos-source-") as tmp:
        wall = sources.train_source(replace(spec, out_dir=Path(tmp)))
        return replace(SourceFiles.read(Path(tmp), spec.name), wall_s=wall)


_LOCAL_SOURCES: dict[tuple[str, str], Path] = {}
_SCRATCH: list[tempfile.TemporaryDirectory[str]] = []


def _local_out_dir(source: SourceFiles) -> Path:
    """A per-process out dir holding `source` (written once per process and content)."""
    digest = hashlib.sha256(b"".join(data for _, data in source.files)).hexdigest()
    key = (source.name, digest)
    if key not in _LOCAL_SOURCES:
        if not _SCRATCH:
            _SCRATCH.append(tempfile.TemporaryDirectory(prefix="csipos-sources-"))
        root = Path(_SCRATCH[0].name) / digest[:16]
        source.write(root)
        _LOCAL_SOURCES[key] = root
    return _LOCAL_SOURCES[key]


def run_job(spec: jobs.RunSpec, source: SourceFiles | None) -> RunResult:
    """One run, its source backbone shipped with it (no shared disk needed)."""
    _check_data_here(spec.env_paths)
    if source is not None:
        spec = replace(spec, out_dir=_local_out_dir(source))
    return jobs.execute_run(spec)


class _Clock:
    """ETA from work units (a run's cost grows with its data fraction), not from job counts."""

    def __init__(self, total_units: float) -> None:
        self.t0 = time.perf_counter()
        self.total = total_units
        self.done = 0.0

    def tick(self, units: float) -> tuple[float, float | None]:
        self.done += units
        elapsed = time.perf_counter() - self.t0
        if self.done <= 0:
            return elapsed, None
        return elapsed, elapsed / self.done * max(0.0, self.total - self.done)


def run_experiment(
    preset: Preset,
    data: Path | Sequence[Path],
    out_dir: Path,
    *,
    workers: int = 1,
    seed: int = 0,
    device: str = "cpu",
    progress: ProgressFn | None = None,
    command: str = "",
    executor: ExecutorConfig | None = None,
) -> Outcome:
    """Train the sources and every pending run of `preset`, then write the report.

    Jobs run where `executor` says (default: `workers` local processes); they
    return their results and this process writes them into `out_dir`, so only
    the driver needs the out dir. Failed runs are logged and left pending (a
    rerun retries them); the report is written either way and says how many
    runs are missing.
    """
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    cluster = executor if executor is not None else ExecutorConfig("local", workers=workers)
    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    paths = [Path(data)] if isinstance(data, str | Path) else [Path(p) for p in data]
    env_paths = jobs.locate_data(preset, paths)
    out_dir.mkdir(parents=True, exist_ok=True)
    state = _state(preset, env_paths, seed)
    check_state(out_dir, state)
    # Jobs may run in another working directory (a Ray worker): give them absolute paths.
    job_paths = {env: path.resolve() for env, path in env_paths.items()}

    store = ResultStore(out_dir)
    planned = jobs.planned_runs(preset, state["data_sizes"], seed)
    pending = [r for r in planned if not store.done(r)]
    outcome = Outcome(planned=planned, ran=0, skipped=len(planned) - len(pending))
    log.info(
        "%d runs planned, %d already done, %d to run", len(planned), outcome.skipped, len(pending)
    )

    if not pending:  # nothing to run: no pool, no cluster connection
        cluster = ExecutorConfig("local")
    with open_executor(cluster, setup=_init_worker, jobs=len(pending)) as ex:
        # --- sources: trained once, cached in out_dir/sources ---
        needed = sources.needed_sources(preset, pending)
        todo = [s for s in needed if not sources.is_cached(out_dir, s)]
        clock = _Clock(sum(sources.cost_units(preset, s) for s in todo))
        specs = [sources.SourceSpec(s, preset, job_paths, out_dir, seed, device) for s in todo]
        if progress is not None and todo:  # show the stage before its first (slow) job ends
            progress(Progress("sources", 0, len(todo), 0, 0.0, None, ", ".join(todo)))
        trained = map_unordered(ex, train_source_job, specs)
        for i, (src, files, err) in enumerate(trained, 1):
            if err is not None or files is None:
                outcome.failed[f"source {src.name}"] = repr(err)
                log.error("source %s failed: %r", src.name, err)
            else:
                files.write(out_dir)
            elapsed, eta = clock.tick(sources.cost_units(preset, src.name))
            if progress is not None:
                p = Progress("sources", i, len(todo), len(outcome.failed), elapsed, eta, src.name)
                progress(p)
        broken = {s for s in needed if not sources.is_cached(out_dir, s)}

        # --- target runs: the grid ---
        runnable = [r for r in pending if sources.source_of(r) not in broken]
        for r in pending:
            if sources.source_of(r) in broken:
                outcome.failed[r.id] = f"source {sources.source_of(r)} is missing"
        # Each source backbone travels once to the executor, not once per run.
        shipped = {s: ex.share(SourceFiles.read(out_dir, s)) for s in needed if s not in broken}
        clock = _Clock(sum(jobs.cost_units(r) for r in runnable))
        run_specs = [jobs.RunSpec(r, preset, job_paths, out_dir, seed, device) for r in runnable]
        if progress is not None and runnable:
            progress(Progress("runs", 0, len(runnable), len(outcome.failed), 0.0, None, ""))
        results = map_unordered(
            ex, run_job, run_specs, args=lambda spec: (spec, _shipped(shipped, spec.run))
        )
        for done, (spec, result, exc) in enumerate(results, 1):
            if exc is not None or result is None:
                outcome.failed[spec.run.id] = repr(exc)
                log.error("run %s failed: %r", spec.run.id, exc)
            else:
                store.write(result)
                outcome.ran += 1
            elapsed, eta = clock.tick(jobs.cost_units(spec.run))
            if progress is not None:
                failed = len(outcome.failed)
                progress(Progress("runs", done, len(runnable), failed, elapsed, eta, spec.run.id))

    outcome.elapsed_s = time.perf_counter() - t0
    outcome.report = report(preset, out_dir, command=command, elapsed_s=outcome.elapsed_s)
    return outcome


def _shipped(shipped: dict[str, Any], run: Run) -> Any:
    source = sources.source_of(run)
    return None if source is None else shipped[source]


def report(preset: Preset, out_dir: Path, *, command: str = "", elapsed_s: float = 0.0) -> Path:
    """(Re)write the report of whatever runs of `preset` have finished in `out_dir`."""
    state = json.loads((Path(out_dir) / STATE_FILE).read_text(encoding="utf-8"))
    planned = jobs.planned_runs(preset, dict(state["data_sizes"]), int(state["seed"]))
    results: list[RunResult] = ResultStore(out_dir).load(planned)
    ctx = ReportContext(
        preset=preset,
        command=command or f"csipos experiment --preset {preset.name} --seed {state['seed']}",
        data_path=", ".join(sorted(set(state["data"].values()))),
        data_sizes=dict(state["data_sizes"]),
        data_sources=dict(state.get("data_sources", {})),
        elapsed_s=elapsed_s,
        source_wall_s=sources.wall_times(out_dir),
        source_envs=sources.env_counts(out_dir),
    )
    return write_report(out_dir, results, planned, ctx)
