"""Target training modes side by side: which mode wins where, and whether `auto` keeps up.

For every (target, loss, pre-trained strategy, fraction) cell the report shows each
mode's test ME (mean and median over folds) and how many of its runs were
degenerate, then judges `auto` against the best single mode and against
`finetune`: within 3 % of the best in at least 90 % of the cells, and never more
than 5 % worse than `finetune` (the training issue's acceptance bar).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from training.experiments.aggregate import Summary
from training.experiments.grid import SCRATCH

SINGLE_MODES = ("finetune", "gradual", "gradual-paper", "head")
AUTO_NEAR_BEST = 1.03
AUTO_SHARE = 0.90
AUTO_VS_FINETUNE = 1.05


@dataclass(frozen=True)
class AutoVerdict:
    """How `auto` did over the cells where it and every single mode ran."""

    cells: int
    near_best: int
    worst_vs_finetune: float
    worst_cell: str

    @property
    def holds(self) -> bool:
        return (
            self.cells > 0
            and self.near_best >= AUTO_SHARE * self.cells
            and self.worst_vs_finetune <= AUTO_VS_FINETUNE
        )


def _fmt(value: float, digits: int = 3) -> str:
    return "—" if math.isnan(value) else f"{value:.{digits}f}"


def mode_rows(summary: Summary) -> tuple[list[list[str]], AutoVerdict]:
    """One row per cell: ME mean / median per mode, degenerate runs, auto's ratios."""
    targets, losses, strategies, modes, fractions = summary.axes()
    present = [m for m in (*SINGLE_MODES, "auto") if m in modes]
    rows: list[list[str]] = []
    cells = near = 0
    worst, worst_cell = 0.0, ""
    for target in targets:
        for loss in losses:
            # One row per trained strategy: the DTL aggregates would repeat the sources.
            for strategy in [s for s in strategies if s != SCRATCH and ":" not in s]:
                for fraction in fractions:
                    stats = {m: summary.get(target, loss, strategy, m, fraction) for m in present}
                    if all(v is None for v in stats.values()):
                        continue
                    cells_txt: list[str] = []
                    degenerate = 0.0
                    for m in present:
                        st = stats[m]
                        if st is None or "me" not in st:
                            cells_txt.append("—")
                            continue
                        cells_txt.append(f"{st['me'].mean:.3f} / {st['me'].median:.3f}")
                        if "degenerate" in st:
                            degenerate += st["degenerate"].total
                    me = {
                        m: st["me"].mean for m, st in stats.items() if st is not None and "me" in st
                    }
                    singles = [me[m] for m in SINGLE_MODES if m in me]
                    ratio_best = ratio_ft = math.nan
                    if "auto" in me and singles:
                        ratio_best = me["auto"] / min(singles)
                        cells += 1
                        near += ratio_best <= AUTO_NEAR_BEST
                    if "auto" in me and "finetune" in me:
                        ratio_ft = me["auto"] / me["finetune"]
                        if ratio_ft > worst:
                            worst = ratio_ft
                            worst_cell = f"{target} {loss} {strategy} {fraction:.0%}"
                    rows.append(
                        [
                            target,
                            loss,
                            strategy,
                            f"{fraction:.0%}",
                            *cells_txt,
                            f"{degenerate:.0f}",
                            _fmt(ratio_best),
                            _fmt(ratio_ft),
                        ]
                    )
    return rows, AutoVerdict(cells, near, worst, worst_cell)


def mode_header(summary: Summary) -> list[str]:
    modes = summary.axes()[3]
    present = [m for m in (*SINGLE_MODES, "auto") if m in modes]
    return [
        "target",
        "loss",
        "strategy",
        "fraction",
        *(f"{m} ME mean / median (m)" for m in present),
        "degenerate runs",
        "auto / best single",
        "auto / finetune",
    ]
