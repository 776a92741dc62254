#!/usr/bin/env python3
"""subsets.png: what the served subset joint head changes, per site and case, read from
the `scripts/evaluate-site-trust` outputs in served-subsets/ (section 4 of README.md).

- each BS left out (`--without bsK`): the fused trajectory ME with the subset joint head
  over the BSs' fusion alone (same version, same inflation);
- every BS heard: the fused ME of the subset-head version over the every-BS-head version
  of the same adaptation seed (../modes/served, the site-level `auto` of 2026-12-03).

Bars: median over the three adaptation seeds; lines: their range.

    python3 docs/results/site-trust/joint/subsets_plot.py
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from plot import SEEDS, SITES, table

HERE = Path(__file__).parent
STATIONS = {"hall": 4, "corridor": 3, "lab": 3}
SERVED = r"fused \(robust_student_t, as served\)"
BSS_ONLY = r"fused \(robust_student_t\) without the joint head, the served"


def me(rows: dict[str, float], pattern: str) -> float:
    return next(v for k, v in rows.items() if re.match(pattern, k))


def main() -> None:
    labels, values = [], []
    for site in SITES:
        every = [
            me(table(HERE / "served-subsets" / f"{site}-s{s}-all.txt"), SERVED)
            / me(table(HERE.parent / "modes" / "served" / f"{site}-s{s}.txt"), SERVED)
            for s in SEEDS
        ]
        labels.append(f"{site}\nevery BS\n(vs every-BS head)")
        values.append(every)
        for k in range(STATIONS[site]):
            runs = [table(HERE / "served-subsets" / f"{site}-s{s}-{k}.txt") for s in SEEDS]
            labels.append(f"{site}\nwithout bs{k}")
            values.append([me(r, SERVED) / me(r, BSS_ONLY) for r in runs])
    fig, ax = plt.subplots(figsize=(11, 4))
    for i, v in enumerate(values):
        color = "C1" if "every BS" in labels[i] else "C0"
        bar = ax.bar(i, float(np.median(v)), 0.7, color=color)
        ax.vlines(i, min(v), max(v), color="k", lw=1)
        ax.bar_label(bar, fmt="%.2f", fontsize=7, label_type="center")
    ax.axhline(1.0, color="k", lw=0.8)
    ax.set_xticks(range(len(labels)), labels, fontsize=7)
    ax.set_ylabel("fused trajectory ME ratio")
    ax.set_ylim(0.6, 1.15)
    ax.set_title(
        "Served subset joint head, 3 held-out sites x 3 adaptation seeds (median, range):\n"
        "blue: + subset head / BSs alone, one BS left out; orange: subset / every-BS head"
    )
    fig.tight_layout()
    fig.savefig(HERE / "subsets.png", dpi=120)


if __name__ == "__main__":
    main()
