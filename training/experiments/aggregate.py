"""Fold statistics of an experiment: mean and spread per cell, plus DTL's mean and best source.

Everything the tables, figures and claims need is computed here once from the
run results, so the three cannot disagree.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

from training.experiments.grid import DTL_PREFIX, SCRATCH
from training.experiments.store import METRIC_KEYS, RunResult

DTL_MEAN = "dtl:mean"
DTL_BEST = "dtl:best"
# Not `dtl-...`: that prefix names one source (`dtl-bs0`), and a BS could be called "mean".
STAT_KEYS = (*METRIC_KEYS, "degenerate", "n_train", "wall_s")

CellKey = tuple[str, str, str, str, float]
"""(target, loss, strategy, mode, fraction)."""


@dataclass(frozen=True)
class Stat:
    """Mean, sample standard deviation (ddof=1; 0 for a single fold) and median over `n`
    folds; ``total`` is the sum (the count of flagged runs for 0/1 metrics)."""

    mean: float
    std: float
    n: int
    median: float = math.nan
    total: float = math.nan

    @classmethod
    def of(cls, values: Iterable[float]) -> Stat:
        xs = sorted(v for v in values if not math.isnan(v))
        if not xs:
            return cls(math.nan, math.nan, 0)
        mean = sum(xs) / len(xs)
        var = sum((x - mean) ** 2 for x in xs) / (len(xs) - 1) if len(xs) > 1 else 0.0
        mid = len(xs) // 2
        median = xs[mid] if len(xs) % 2 else (xs[mid - 1] + xs[mid]) / 2
        return cls(mean, math.sqrt(var), len(xs), median, sum(xs))

    def fmt(self, digits: int = 2) -> str:
        if self.n == 0:
            return "—"
        return f"{self.mean:.{digits}f} ± {self.std:.{digits}f}"


@dataclass
class Summary:
    """Per cell, per metric, the fold statistics; DTL rows also as `dtl-mean` and `dtl-best`.

    Scratch runs are stored under mode `finetune` (they train every layer from
    the start); `get` finds them under any mode, so comparisons can ask for
    "scratch, gradual" without special cases.
    """

    cells: dict[CellKey, dict[str, Stat]] = field(default_factory=dict)
    dtl_best_source: dict[tuple[str, str, str, float], str] = field(default_factory=dict)

    def get(
        self, target: str, loss: str, strategy: str, mode: str, fraction: float
    ) -> dict[str, Stat] | None:
        if strategy == SCRATCH:
            mode = "finetune"
        return self.cells.get((target, loss, strategy, mode, fraction))

    def mean(
        self, target: str, loss: str, strategy: str, mode: str, fraction: float, metric: str = "me"
    ) -> float:
        """Mean over folds of one metric, NaN where the cell or the metric is missing."""
        stats = self.get(target, loss, strategy, mode, fraction)
        if stats is None or metric not in stats:
            return math.nan
        return stats[metric].mean

    def axes(self) -> tuple[list[str], list[str], list[str], list[str], list[float]]:
        """Targets, losses, strategies, modes and fractions present, in first-seen/sorted order."""
        keys = list(self.cells)

        def uniq(i: int) -> list[str]:
            return list(dict.fromkeys(str(k[i]) for k in keys))

        return uniq(0), uniq(1), uniq(2), uniq(3), sorted({k[4] for k in keys})

    def has_strategy(self, strategy: str) -> bool:
        return any(k[2] == strategy for k in self.cells)


def summarize(results: Iterable[RunResult]) -> Summary:
    """Fold statistics per cell; DTL also over sources (mean per fold, best by mean ME)."""
    by_cell: dict[CellKey, list[RunResult]] = defaultdict(list)
    for res in results:
        by_cell[res.run.cell].append(res)

    summary = Summary()
    for key, group in by_cell.items():
        summary.cells[key] = _stats(group)

    # DTL mean: average the sources within each fold (only folds where every
    # source finished, so a missing source cannot bias the mean), then over folds.
    dtl: dict[tuple[str, str, str, float], dict[str, dict[int, RunResult]]] = defaultdict(
        lambda: defaultdict(dict)
    )
    for key, group in by_cell.items():
        target, loss, strategy, mode, fraction = key
        if strategy.startswith(DTL_PREFIX):
            for res in group:
                dtl[(target, loss, mode, fraction)][strategy][res.run.fold] = res
    for (target, loss, mode, fraction), per_source in dtl.items():
        folds = set.intersection(*(set(by_fold) for by_fold in per_source.values()))
        per_metric: dict[str, list[float]] = defaultdict(list)
        for fold in sorted(folds):
            runs = [by_fold[fold] for by_fold in per_source.values()]
            for metric in STAT_KEYS:
                vals = [_value(r, metric) for r in runs]
                per_metric[metric].append(sum(vals) / len(vals))
        summary.cells[(target, loss, DTL_MEAN, mode, fraction)] = {
            m: Stat.of(v) for m, v in per_metric.items() if not all(math.isnan(x) for x in v)
        }
        best = min(
            per_source, key=lambda s: summary.cells[(target, loss, s, mode, fraction)]["me"].mean
        )
        summary.dtl_best_source[(target, loss, mode, fraction)] = best
        summary.cells[(target, loss, DTL_BEST, mode, fraction)] = summary.cells[
            (target, loss, best, mode, fraction)
        ]
    return summary


def _value(res: RunResult, metric: str) -> float:
    if metric == "n_train":
        return float(res.n_train)
    if metric == "wall_s":
        return res.wall_s
    return res.metrics.get(metric, math.nan)


def _stats(group: list[RunResult]) -> dict[str, Stat]:
    out: dict[str, Stat] = {}
    for metric in STAT_KEYS:
        stat = Stat.of(_value(r, metric) for r in group)
        if stat.n:
            out[metric] = stat
    return out
