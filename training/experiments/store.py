"""Resumable results: one JSON file per finished run, written atomically.

A run's file appears only once it is complete (write aside, fsync, rename), so
an interrupted experiment leaves either a whole result or none, and a rerun
simply skips every run whose file exists.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from training.experiments.grid import Run
from training.repository import atomic_write_bytes

METRIC_KEYS = ("me", "median", "p90", "crps", "nll", "within_1sigma", "within_2sigma")
"""Test-set metrics a result may carry (CRPS, NLL and calibration only for NLL targets)."""


@dataclass(frozen=True)
class RunResult:
    """The outcome of one run: test metrics on the fixed test set plus what it cost."""

    run: Run
    n_train: int
    n_val: int
    n_test: int
    metrics: dict[str, float]
    epochs: tuple[int, ...]
    best_val_me: float
    wall_s: float
    seed: int
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["run"] = self.run.to_dict()
        out["epochs"] = list(self.epochs)
        return out

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> RunResult:
        return cls(
            run=Run(**obj["run"]),
            n_train=int(obj["n_train"]),
            n_val=int(obj["n_val"]),
            n_test=int(obj["n_test"]),
            metrics={k: float(v) for k, v in obj["metrics"].items()},
            epochs=tuple(int(e) for e in obj["epochs"]),
            best_val_me=float(obj["best_val_me"]),
            wall_s=float(obj["wall_s"]),
            seed=int(obj["seed"]),
            extra=dict(obj.get("extra", {})),
        )

    def row(self) -> dict[str, Any]:
        """One flat CSV row: the run's keys, sizes, every metric (blank if absent), cost."""
        r = self.run
        row: dict[str, Any] = {
            "target": r.target,
            "loss": r.loss,
            "strategy": r.strategy,
            "mode": r.mode,
            "fraction": r.fraction,
            "labels": r.labels,
            "fold": r.fold,
            "n_train": self.n_train,
            "n_val": self.n_val,
            "n_test": self.n_test,
        }
        for key in METRIC_KEYS:
            row[key] = self.metrics.get(key, "")
        row["best_val_me"] = self.best_val_me
        row["epochs_phase1"] = self.epochs[0] if self.epochs else 0
        row["epochs_phase2"] = self.epochs[1] if len(self.epochs) > 1 else 0
        steps = self.extra.get("steps") or []
        row["steps_phase1"] = steps[0] if steps else ""
        row["steps_phase2"] = steps[1] if len(steps) > 1 else ""
        row["chosen_mode"] = self.extra.get("chosen_mode", r.mode)
        row["final_phase"] = self.extra.get("final_phase", "")
        row["degenerate"] = int(self.metrics.get("degenerate", 0.0))
        row["retried"] = int(bool(self.extra.get("retried", False)))
        row["wall_s"] = round(self.wall_s, 3)
        row["seed"] = self.seed
        return row


def atomic_write_text(path: Path, text: str) -> None:
    """Write `text` to `path` so readers see the old file or the whole new one, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, text.encode("utf-8"))


class ResultStore:
    """The `runs/` folder of an experiment directory: `<run id>.json` per finished run."""

    def __init__(self, out_dir: Path) -> None:
        self.dir = Path(out_dir) / "runs"

    def path(self, run: Run) -> Path:
        return self.dir / f"{run.id}.json"

    def done(self, run: Run) -> bool:
        return self.path(run).is_file()

    def write(self, result: RunResult) -> None:
        atomic_write_text(self.path(result.run), json.dumps(result.to_json(), indent=1))

    def read(self, run: Run) -> RunResult:
        return RunResult.from_json(json.loads(self.path(run).read_text(encoding="utf-8")))

    def load(self, runs: list[Run]) -> list[RunResult]:
        """Results of those `runs` that have finished, in the order given."""
        return [self.read(r) for r in runs if self.done(r)]
