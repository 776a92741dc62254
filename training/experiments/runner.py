"""Run an experiment grid: sources once, then every pending run, resumably and in parallel.

The out dir is the experiment's whole state: `experiment.json` (what it is),
`sources/` (the cached source models), `runs/` (one file per finished run).
Rerunning the same command continues where the last one stopped; asking an
out dir for a different preset, seed or data is refused instead of mixing
results.

Runs are independent jobs. With `workers > 1` they go to a process pool
(spawned, one torch thread each, so 2 workers use 2 cores without
oversubscription); with one worker they run in this process.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import torch

from training.experiments import jobs, sources
from training.experiments.grid import Preset, Run
from training.experiments.report import ReportContext, write_report
from training.experiments.store import ResultStore, RunResult, atomic_write_text

log = logging.getLogger(__name__)

STATE_FILE = "experiment.json"

T = TypeVar("T")
U = TypeVar("U")


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


def _init_worker() -> None:
    # Each worker is one core: torch's own threads would fight the other workers.
    torch.set_num_threads(1)
    torch.set_num_interop_threads(1)
    logging.getLogger("training").setLevel(logging.WARNING)


class _Pool:
    """`map_unordered` over a spawned process pool, or inline when there is one worker."""

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self._ex: ProcessPoolExecutor | None = None

    def __enter__(self) -> _Pool:
        if self.workers > 1:
            ctx = multiprocessing.get_context("spawn")
            self._ex = ProcessPoolExecutor(self.workers, mp_context=ctx, initializer=_init_worker)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._ex is not None:
            # On Ctrl-C, drop what has not started; finished results are already on disk.
            self._ex.shutdown(wait=True, cancel_futures=True)

    def map_unordered(
        self, fn: Callable[[T], U], items: Iterable[T]
    ) -> Iterable[tuple[T, U | None, BaseException | None]]:
        if self._ex is None:
            for item in items:
                try:
                    value = fn(item)
                except Exception as exc:  # one run's failure must not stop the grid
                    yield item, None, exc
                else:
                    yield item, value, None
            return
        futures: dict[Future[U], T] = {}
        for item in items:
            try:
                futures[self._ex.submit(fn, item)] = item
            except BrokenProcessPool as exc:
                # A worker died (e.g. killed for memory): report the rest as failed,
                # so the report is still written and a rerun retries them.
                yield item, None, exc
        for fut in as_completed(futures):
            error = fut.exception()
            yield futures[fut], (None if error else fut.result()), error


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
) -> Outcome:
    """Train the sources and every pending run of `preset`, then write the report.

    Failed runs are logged and left pending (a rerun retries them); the report
    is written either way and says how many runs are missing.
    """
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    paths = [Path(data)] if isinstance(data, str | Path) else [Path(p) for p in data]
    env_paths = jobs.locate_data(preset, paths)
    out_dir.mkdir(parents=True, exist_ok=True)
    state = _state(preset, env_paths, seed)
    check_state(out_dir, state)

    store = ResultStore(out_dir)
    planned = jobs.planned_runs(preset, state["data_sizes"], seed)
    pending = [r for r in planned if not store.done(r)]
    outcome = Outcome(planned=planned, ran=0, skipped=len(planned) - len(pending))
    log.info(
        "%d runs planned, %d already done, %d to run", len(planned), outcome.skipped, len(pending)
    )

    with _Pool(min(workers, max(1, len(pending)))) as pool:
        # --- sources: trained once, cached in out_dir/sources ---
        needed = sources.needed_sources(preset, pending)
        todo = [s for s in needed if not sources.is_cached(out_dir, s)]
        clock = _Clock(sum(sources.cost_units(preset, s) for s in todo))
        specs = [sources.SourceSpec(s, preset, env_paths, out_dir, seed, device) for s in todo]
        if progress is not None and todo:  # show the stage before its first (slow) job ends
            progress(Progress("sources", 0, len(todo), 0, 0.0, None, ", ".join(todo)))
        for i, (src, _, err) in enumerate(pool.map_unordered(sources.train_source, specs), 1):
            if err is not None:
                outcome.failed[f"source {src.name}"] = repr(err)
                log.error("source %s failed: %r", src.name, err)
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
        clock = _Clock(sum(jobs.cost_units(r) for r in runnable))
        run_specs = [jobs.RunSpec(r, preset, env_paths, out_dir, seed, device) for r in runnable]
        if progress is not None and runnable:
            progress(Progress("runs", 0, len(runnable), len(outcome.failed), 0.0, None, ""))
        results = pool.map_unordered(jobs.execute_run, run_specs)
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
