#!/usr/bin/env python3
"""ME / scratch against labels on the two labs, per backbone: a markdown table and a plot.

    budgets.py RESULTS.jsonl OUT.png LABEL=ARM [LABEL=ARM ...]

Rows are `../sources-mix/arm.py`'s (any number of labels); every arm is paired with
scratch on the same (target, seed, labels) split. Table cells: the median over the
lab-seeds of the paired ratio, with how many were lower than scratch; the last column
pair compares the first two arms named directly.
"""

from __future__ import annotations

import collections
import json
import sys
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

Key = tuple[str, int, int]  # (target, seed, labels)
Rows = dict[Key, dict[str, dict[str, Any]]]


def read(path: Path) -> Rows:
    by: Rows = collections.defaultdict(dict)
    with path.open() as f:
        for line in f:
            r = json.loads(line)
            by[(r["env"], r["seed"], r["labels"])][r["arm"]] = r
    return by


def ratios(by: Rows, arm: str, base: str, env: str, n: int) -> list[float]:
    return [
        runs[arm]["me"] / runs[base]["me"]
        for (e, _, labels), runs in sorted(by.items())
        if e == env and labels == n and arm in runs and base in runs
    ]


def label_axis(ax: Any, labels: list[int], title: str) -> None:
    """A ratio-against-labels panel: log label axis, lines at 1 (scratch) and 0.6 (the goal)."""
    ax.axhline(1.0, color="grey", lw=0.8)
    ax.axhline(0.6, color="grey", lw=0.8, ls=":")
    ax.set_xscale("log")
    ax.set_xticks(labels, [str(n) for n in labels])
    ax.set_title(title)
    ax.set_xlabel("labels at the target")


def cell(r: list[float]) -> str:
    return f"{np.median(r):.3f} ({sum(v < 1 for v in r)} of {len(r)} lower)" if r else ""


def main(path: Path, out: Path, named: list[str]) -> None:
    by = read(path)
    arms = dict(a.split("=", 1) for a in named)
    labels = sorted({k[2] for k in by})
    envs = sorted({k[0] for k in by})
    (a1, r1), (a2, r2) = list(arms.items())[:2]
    head = "| target | labels | scratch ME (median) | " + " | ".join(f"{a} / scratch" for a in arms)
    lines = [head + f" | {a1} / {a2} |", "|---" * (4 + len(arms)) + "|"]
    fig, axes = plt.subplots(1, len(envs), figsize=(5 * len(envs), 3.6), sharey=True)
    for ax, env in zip(np.atleast_1d(axes), envs, strict=True):
        # each arm's paired ratios to scratch per budget, for the plot and the table
        per = {
            arm: {n: ratios(by, arm, "scratch", env, n) for n in labels} for arm in arms.values()
        }
        for label, arm in arms.items():
            med = [np.median(per[arm][n] or [np.nan]) for n in labels]
            ax.plot(labels, med, marker="o", label=label)
        label_axis(ax, labels, env)
        for n in labels:
            scratch = [
                runs["scratch"]["me"]
                for (e, _, k), runs in by.items()
                if e == env and k == n and "scratch" in runs
            ]
            cells = [cell(per[arm][n]) for arm in arms.values()]
            direct = cell(ratios(by, r1, r2, env, n))
            lines.append(
                f"| {env} | {n} | {np.median(scratch):.3f} m | "
                + " | ".join(cells)
                + f" | {direct} |"
            )
    np.atleast_1d(axes)[0].set_ylabel("ME / scratch (median over seeds)")
    np.atleast_1d(axes)[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    sys.stdout.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3:])
