#!/usr/bin/env python3
# ruff: noqa: T201  (a results script: its output is the table)
"""Tracked against fused, before and after out-of-site answers reach the filter as
`foreign`, per site and seed, from two directories of `scripts/evaluate-site-trust`
outputs (``SITE-sSEED-all.txt``) of the same versions and trajectories; a figure.

    python3 docs/results/site-trust/foreign/compare.py BEFORE_DIR AFTER_DIR OUT.png > table.md
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "seeds"))
from ratios import FUSED, TRACKED, rows


def share(cell: str) -> float:
    """'42.8 % (37-49)' -> 42.8."""
    return float(cell.split("%")[0])


def main() -> None:
    before, after, out = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
    table: dict[str, list[tuple[int, float, float, float, str, str]]] = {}
    for path in sorted(after.glob("*-s[0-9]-all.txt")):
        m = re.fullmatch(r"(\w+)-s(\d+)-all", path.stem)
        assert m is not None
        a, b = rows(path), rows(before / path.name)
        fused = float(a[FUSED][2])
        assert fused == float(b[FUSED][2]), f"{path.name}: not the same fused estimate"
        t0, t1 = float(b[TRACKED][2]), float(a[TRACKED][2])
        c0 = f"{share(b[TRACKED][4]):.1f} / {share(b[TRACKED][5]):.1f} %"
        c1 = f"{share(a[TRACKED][4]):.1f} / {share(a[TRACKED][5]):.1f} %"
        table.setdefault(m[1], []).append((int(m[2]), fused, t0, t1, c0, c1))
    print(
        "| site | seed | fused ME | tracked / fused: before | **foreign** "
        "| tracked 1/2 sigma: before | foreign |"
    )
    print("|---|---|---|---|---|---|---|")
    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    for k, (site, items) in enumerate(sorted(table.items())):
        items.sort()
        for seed, fused, t0, t1, c0, c1 in items:
            cells = f"{fused:.3f} | {t0 / fused:.3f} | {t1 / fused:.3f} | {c0} | {c1}"
            print(f"| {site} | {seed} | {cells} |")
        r0 = np.array([t0 / f for _, f, t0, _, _, _ in items])
        r1 = np.array([t1 / f for _, f, _, t1, _, _ in items])
        lower = int((r1 < r0).sum())
        print(
            f"| **{site}** | median of {len(items)} | | **{np.median(r0):.3f}** | "
            f"**{np.median(r1):.3f}** (lower in {lower} of {len(items)}) | | |"
        )
        x = k + np.linspace(-0.15, 0.15, len(items))
        ax.scatter(x - 0.05, r0, marker="o", facecolors="none", edgecolors="tab:gray")
        ax.scatter(x + 0.05, r1, marker="o", color="tab:blue")
        for xi, a0, a1 in zip(x, r0, r1, strict=True):
            ax.plot([xi - 0.05, xi + 0.05], [a0, a1], color="tab:blue", lw=0.8, alpha=0.6)
    ax.scatter([], [], marker="o", facecolors="none", edgecolors="tab:gray", label="before")
    ax.scatter([], [], marker="o", color="tab:blue", label="out-of-site answers as foreign")
    ax.axhline(1.0, color="k", lw=0.6)
    ax.axhline(0.8, color="tab:red", lw=0.6, ls="--", label="goal (0.8)")
    ax.set_xticks(range(len(table)), sorted(table))
    ax.set_ylabel("tracked ME / fused ME")
    ax.set_title("Tracking through false alarms (5 seeds per site)")
    ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    fig.savefig(out, dpi=120)


if __name__ == "__main__":
    main()
