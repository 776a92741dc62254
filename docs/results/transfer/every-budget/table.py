#!/usr/bin/env python3
"""Corpus against hall against scratch at every label budget: a markdown table and a plot.

    table.py OUT.png RESULTS.jsonl [RESULTS.jsonl ...] > table.md

Rows are `../sources-mix/arm.py`'s (arms `corpus`, `hall`, `scratch`, `scratch-pd`). The
two labs are groups of their own; the procedural scenes (`proc/...`) are pooled as one group. Every
ratio is paired on one (target, seed, labels) split; a cell is the median over the
group's target-seeds, [their range], and how many were below 1. A run's `labels` is what it got: a
scene smaller than the budget gives all of its pool, and is counted at the budget asked.
"""

# ruff: noqa: T201
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "hall-episodes"))
from budgets import label_axis  # the same panels as ../hall-episodes

BUDGETS = (50, 100, 200, 500, 1000, 3000)
PAIRS = (
    ("corpus", "scratch-pd"),
    ("hall", "scratch-pd"),
    ("corpus", "hall"),
    ("corpus", "scratch"),
    ("scratch-pd", "scratch"),
)
"""The fair baseline first (`scratch-pd`: scratch on the backbones' phase-delay inputs),
then the raw-input scratch the studies before this one used, and the two scratches."""
PLOTTED = PAIRS[:4]

Key = tuple[str, str, int, int]  # (group, target, seed, budget)


def group(env: str) -> str:
    return "8 scenes" if env.startswith("proc/") else env


def budget(labels: int) -> int:
    """The budget a run was asked for: the smallest of BUDGETS at or above its labels (a
    scene whose pool is smaller than the budget gets all of it: s100000 has 568 at 1,000)."""
    return min((b for b in BUDGETS if b >= labels * 0.95), default=BUDGETS[-1])


def read(paths: list[Path]) -> dict[Key, dict[str, dict[str, Any]]]:
    """Runs by split and arm. A row with ``finished`` (the head finished once, by
    `train_target`, with its neighbour terms) replaces one without: until then `arm.py`
    finished the head a second time without them (README.md, "Neighbour terms")."""
    by: dict[Key, dict[str, dict[str, Any]]] = collections.defaultdict(dict)
    for path in paths:
        for line in path.open():
            r = json.loads(line)
            runs = by[(group(r["env"]), r["env"], r["seed"], budget(r["labels"]))]
            if "finished" in r or "finished" not in runs.get(r["arm"], {}):
                runs[r["arm"]] = r
    return by


def ratios(
    by: dict[Key, dict[str, dict[str, Any]]], g: str, n: int, a: str, b: str, metric: str
) -> list[float]:
    """Paired ratios a / b; a pair is only formed from rows finished alike."""
    return [
        runs[a][metric] / runs[b][metric]
        for (gg, _, _, nn), runs in sorted(by.items())
        if gg == g
        and nn == n
        and a in runs
        and b in runs
        and ("finished" in runs[a]) == ("finished" in runs[b])
    ]


def cell(r: list[float]) -> str:
    if not r:
        return ""
    spread = f"{min(r):.2f}-{max(r):.2f}"
    return f"{np.median(r):.3f} [{spread}] ({sum(v < 1 for v in r)}/{len(r)})"


def main(out: Path, paths: list[Path]) -> None:
    by = read(paths)
    groups = sorted({k[0] for k in by}, key=lambda g: (g.startswith("8"), g))
    print(
        "| group | labels | scratch-pd ME (median) | degenerate | "
        + " | ".join(f"{a} / {b}" for a, b in PAIRS)
        + " | CRPS: corpus / scratch-pd | CRPS: corpus / hall | corpus in 1 / 2 sigma |"
    )
    print("|---" * (7 + len(PAIRS)) + "|")
    fig, axes = plt.subplots(1, len(groups), figsize=(4.6 * len(groups), 3.6), sharey=True)
    for ax, g in zip(np.atleast_1d(axes), groups, strict=True):
        shown = [n for n in BUDGETS if any(k[0] == g and k[3] == n for k in by)]
        for n in shown:
            runs = [r for k, arms in by.items() if k[0] == g and k[3] == n for r in arms.values()]
            scratch = [r["me"] for r in runs if r["arm"] == "scratch-pd"]
            bad = sum(bool(r.get("degenerate")) for r in runs)
            cells = [cell(ratios(by, g, n, a, b, "me")) for a, b in PAIRS]
            crps = " | ".join(
                cell(ratios(by, g, n, "corpus", b, "crps")) for b in ("scratch-pd", "hall")
            )
            me = f"{np.median(scratch):.3f} m" if scratch else ""
            ours = [r for r in runs if r["arm"] == "corpus"]
            cover = (
                f"{100 * np.median([r['c1'] for r in ours]):.1f} / "
                f"{100 * np.median([r['c2'] for r in ours]):.1f} %"
                if ours
                else ""
            )
            print(
                f"| {g} | {n} | {me} | {bad} of {len(runs)} | "
                + " | ".join(cells)
                + f" | {crps} | {cover} |"
            )
        for (a, b), style in zip(PLOTTED, ("o-", "s-", "^--", "x:"), strict=True):
            med = [np.median(ratios(by, g, n, a, b, "me") or [np.nan]) for n in shown]
            ax.plot(shown, med, style, label=f"{a} / {b}")
        label_axis(ax, shown, g)
    np.atleast_1d(axes)[0].set_ylabel("ME ratio (median over target-seeds)")
    np.atleast_1d(axes)[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=120)


if __name__ == "__main__":
    main(Path(sys.argv[1]), [Path(p) for p in sys.argv[2:]])
