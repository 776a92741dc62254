#!/usr/bin/env python3
"""preregistered.md's table: `select=calibrated` against the product's `select=loss`, in
`auto` (the shipped backbone) and for the fair scratch, 500 labels, 3 copies.

selcal_table.py selcal.jsonl ../augment/passes.jsonl ../augment/scratchlab.jsonl > selcal.md
"""

# ruff: noqa: T201
from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path
from typing import Any

GROUPS = (("labs", "lab-"), ("scenes", "proc/"))


def rows(path: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in Path(path).open()]


def cell(r: list[float]) -> str:
    if not r:
        return ""
    low = sum(x < 1 for x in r)
    return f"{statistics.median(r):.3f} [{min(r):.2f}-{max(r):.2f}] ({low}/{len(r)})"


def main(selcal: str, passes: str, scratch: str) -> None:
    cal = {(r["env"], r["seed"], r["arm"]): r for r in rows(selcal)}
    loss = {(r["env"], r["seed"], "corpus"): r for r in rows(passes) if r["budget"] == "labelled"}
    loss |= {(r["env"], r["seed"], "scratch-pd"): r for r in rows(scratch)}
    keys = sorted(k for k in cal if k in loss)
    print("| ratio | metric | labs | scenes |")
    print("|---|---|---|---|")
    for what, arm in (
        ("`auto`: calibrated / loss", "corpus"),
        ("fair scratch: calibrated / loss", "scratch-pd"),
    ):
        for metric in ("me", "crps"):
            cells = [
                cell([cal[k][metric] / loss[k][metric] for k in keys if k[2] == arm and p in k[0]])
                for _, p in GROUPS
            ]
            print(f"| {what} | {metric.upper()} | {cells[0]} | {cells[1]} |")
    for sel, table in (("loss", loss), ("calibrated", cal)):
        for metric in ("me", "crps"):
            cells = [
                cell(
                    [
                        table[(e, s, "corpus")][metric] / table[(e, s, "scratch-pd")][metric]
                        for e, s, a in keys
                        if a == "corpus" and p in e and (e, s, "scratch-pd") in table
                    ]
                )
                for _, p in GROUPS
            ]
            what = f"`auto` / fair scratch, both {sel}"
            print(f"| {what} | {metric.upper()} | {cells[0]} | {cells[1]} |")
    print()
    print("| arm | select | group | ME (median) | 1 / 2 sigma (median) | chosen | wall (median) |")
    print("|---|---|---|---|---|---|---|")
    for arm in ("corpus", "scratch-pd"):
        for sel, table in (("loss", loss), ("calibrated", cal)):
            for name, p in GROUPS:
                sel_rows = [table[k] for k in keys if k[2] == arm and p in k[0]]
                if not sel_rows:
                    continue
                me = statistics.median(r["me"] for r in sel_rows)
                c1 = statistics.median(r["c1"] for r in sel_rows)
                c2 = statistics.median(r["c2"] for r in sel_rows)
                wall = statistics.median(r["wall_s"] for r in sel_rows)
                chosen = sorted({str(r["chosen"]) for r in sel_rows})
                print(
                    f"| `{arm}` | {sel} | {name} ({len(sel_rows)}) | {me:.3f} m | "
                    f"{100 * c1:.1f} / {100 * c2:.1f} % | {', '.join(chosen)} | {wall:.0f} s |"
                )
    bad = sum(bool(r["degenerate"]) for r in cal.values())
    print(f"\nDegenerate runs among the calibrated rows: {bad} of {len(cal)}.")


if __name__ == "__main__":
    main(*sys.argv[1:4])
