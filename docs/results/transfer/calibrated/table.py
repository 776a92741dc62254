#!/usr/bin/env python3
"""The tables and the figure of results.jsonl (rows of run.py): per target group and
label budget, each arm's mean test metrics under both selections, and the paired ratios.

    table.py results.jsonl table.md figure.png
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

ARMS = {"scratch": "scratch", "models": "shipped backbone"}
SELECTS = ("loss", "calibrated", "me")
Key = tuple[str, int, str, int, str]


def read(path: Path) -> dict[Key, dict[str, Any]]:
    rows = [json.loads(line) for line in path.open()]
    return {(r["env"], r["seed"], r["arm"], r["labels"], r["select"]): r for r in rows}


def group(env: str) -> str:
    return env if env.startswith("lab") else "8 procedural scenes"


def ratios(
    d: dict[Key, dict[str, Any]], g: str, labels: int, a: tuple[str, str], b: tuple[str, str]
) -> list[float]:
    """ME of arm/selection ``a`` over ``b`` on every target-seed of the group that has both."""
    out = []
    for env, seed, arm, n, sel in d:
        if group(env) != g or n != labels or (arm, sel) != a:
            continue
        other = d.get((env, seed, b[0], n, b[1]))
        if other is not None:
            out.append(d[(env, seed, arm, n, sel)]["me"] / other["me"])
    return out


def fmt(v: list[float]) -> str:
    if not v:
        return "-"
    lower = sum(x < 1 for x in v)
    return f"{np.median(v):.2f} ({min(v):.2f}-{max(v):.2f}, {lower}/{len(v)} lower)"


def main(src: Path, table: Path, figure: Path) -> None:
    d = read(src)
    cells = sorted({(group(e), n) for e, _, _, n, _ in d}, key=lambda c: (c[0], c[1]))
    lines = [
        "| target | labels | arm | selection | ME (m) | CRPS (m) | 1 / 2 sigma (%) | steps |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for g, n in cells:
        for arm, label in ARMS.items():
            for sel in SELECTS:
                rs = [
                    r
                    for k, r in d.items()
                    if group(k[0]) == g and k[3] == n and k[2] == arm and k[4] == sel
                ]
                if not rs:
                    continue
                steps = np.median([sum(r["steps"].values()) for r in rs])
                lines.append(
                    f"| {g} | {n} | {label} | {sel} | {np.mean([r['me'] for r in rs]):.3f} "
                    f"| {np.mean([r['crps'] for r in rs]):.3f} "
                    f"| {100 * np.mean([r['c1'] for r in rs]):.1f} / "
                    f"{100 * np.mean([r['c2'] for r in rs]):.1f} | {steps:.0f} |"
                )
    lines += [
        "",
        "Paired ME ratios per target-seed: median (range, how many lower).",
        "",
        "| target | labels | backbone: calibrated / loss | scratch: calibrated / loss "
        "| backbone / scratch, loss | backbone / scratch, calibrated |",
        "|---|---|---|---|---|---|",
    ]
    plot: dict[str, list[float]] = defaultdict(list)
    names = []
    for g, n in cells:
        cols = [
            ratios(d, g, n, ("models", "calibrated"), ("models", "loss")),
            ratios(d, g, n, ("scratch", "calibrated"), ("scratch", "loss")),
            ratios(d, g, n, ("models", "loss"), ("scratch", "loss")),
            ratios(d, g, n, ("models", "calibrated"), ("scratch", "calibrated")),
        ]
        lines.append(f"| {g} | {n} | " + " | ".join(fmt(c) for c in cols) + " |")
        names.append(f"{g.replace('8 procedural scenes', 'scenes')}\n{n}")
        for key, c in zip(("bb", "sc", "loss", "cal"), cols, strict=True):
            plot[key].append(float(np.median(c)) if c else np.nan)
    me_cells = [(g, n) for g, n in cells if ratios(d, g, n, ("models", "me"), ("models", "loss"))]
    if me_cells:  # `select="me"` (plateau) on the same splits, where it was run
        lines += [
            "",
            '`select="me"` (plateau schedule) on the same splits:',
            "",
            "| target | labels | backbone: me / calibrated | scratch: me / calibrated "
            "| backbone / scratch, me |",
            "|---|---|---|---|---|",
        ]
        for g, n in me_cells:
            cols = [
                ratios(d, g, n, ("models", "me"), ("models", "calibrated")),
                ratios(d, g, n, ("scratch", "me"), ("scratch", "calibrated")),
                ratios(d, g, n, ("models", "me"), ("scratch", "me")),
            ]
            lines.append(f"| {g} | {n} | " + " | ".join(fmt(c) for c in cols) + " |")
    table.write_text("\n".join(lines) + "\n")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.2), sharey=True)
    x = np.arange(len(names))
    ax1.bar(x - 0.2, plot["bb"], 0.4, label="shipped backbone")
    ax1.bar(x + 0.2, plot["sc"], 0.4, label="scratch")
    ax1.set_title("test ME, calibrated / loss selection (median)")
    ax2.bar(x - 0.2, plot["loss"], 0.4, label="loss selection (default)")
    ax2.bar(x + 0.2, plot["cal"], 0.4, label="calibrated selection")
    ax2.set_title("test ME, backbone / scratch (median)")
    for ax in (ax1, ax2):
        ax.axhline(1.0, color="k", lw=0.8)
        ax.set_xticks(x, names, fontsize=8)
        ax.set_ylim(0.5, 1.15)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(figure, dpi=110)


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]))
