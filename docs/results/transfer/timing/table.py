#!/usr/bin/env python3
"""The pilot's table (preregistered.md): ratios per target-seed, median and range per group.

table.py timing.jsonl > table.md
"""

# ruff: noqa: T201
from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

PAIRS = (
    ("corpus+t", "corpus", "the timing feature on the backbone"),
    ("scratch-pd+t", "scratch-pd", "the timing feature on phase-delay scratch"),
    ("scratch", "scratch-pd", "raw scratch against phase-delay scratch"),
    ("corpus", "scratch-pd", "backbone / fair scratch, without the feature"),
    ("corpus+t", "scratch-pd+t", "backbone / fair scratch, both with the feature"),
    ("corpus", "scratch", "backbone / raw scratch (`csipos train scratch`'s default)"),
    ("corpus+t", "scratch", "backbone with the feature / raw scratch"),
)
GROUPS = (("labs", lambda env: env.startswith("lab-")), ("scenes", lambda env: "proc/" in env))


def main(path: Path) -> None:
    rows = [json.loads(line) for line in path.open()]
    by = {(r["env"], r["seed"], r["arm"]): r for r in rows}
    keys = sorted({(r["env"], r["seed"]) for r in rows})
    cell = "median [range] (lower / n)"
    print(f"| ratio | metric | labs: {cell} | scenes: {cell} |")
    print("|---|---|---|---|")
    for a, b, what in PAIRS:
        for metric in ("me", "crps"):
            cells = []
            for _, member in GROUPS:
                r = [
                    by[(e, s, a)][metric] / by[(e, s, b)][metric]
                    for e, s in keys
                    if member(e) and (e, s, a) in by and (e, s, b) in by
                ]
                if not r:
                    cells.append("")
                    continue
                low = sum(x < 1 for x in r)
                cells.append(
                    f"{statistics.median(r):.3f} [{min(r):.2f}-{max(r):.2f}] ({low}/{len(r)})"
                )
            print(f"| {what}: `{a}` / `{b}` | {metric.upper()} | {cells[0]} | {cells[1]} |")
    print()
    print("| arm | group | ME (median) | 1 / 2 sigma (median) | degenerate | wall (median) |")
    print("|---|---|---|---|---|---|")
    for arm in sorted({r["arm"] for r in rows}):
        for name, member in GROUPS:
            sel = [r for r in rows if r["arm"] == arm and member(r["env"])]
            if not sel:
                continue
            me = statistics.median(r["me"] for r in sel)
            c1 = statistics.median(r["c1"] for r in sel)
            c2 = statistics.median(r["c2"] for r in sel)
            wall = statistics.median(r["wall_s"] for r in sel)
            bad = sum(bool(r["degenerate"]) for r in sel)
            print(
                f"| `{arm}` | {name} ({len(sel)}) | {me:.3f} m | {100 * c1:.1f} / {100 * c2:.1f} % "
                f"| {bad} | {wall:.0f} s |"
            )


if __name__ == "__main__":
    main(Path(sys.argv[1]))
