#!/usr/bin/env python3
"""The fair ratio with the labelled budget (preregistered.md, sixth section): `auto`
(passes.jsonl's ``labelled`` rows) over the fair scratch fine-tuned with the same copies
and budget (scratchlab.jsonl), and scratch's own change against its rows with the budget
over the copies (aug.jsonl's augmented ``scratch-pd`` rows).

    python3 fair_table.py scratchlab.jsonl passes.jsonl aug.jsonl > fair.md
"""

# ruff: noqa: T201
from __future__ import annotations

import sys

from passes_table import group, ratio_cell, rows


def main(scratch: str, passes: str, aug: str) -> None:
    new = {(r["env"], r["seed"]): r for r in rows(scratch)}
    auto = {(r["env"], r["seed"]): r for r in rows(passes) if r["budget"] == "labelled"}
    old = {
        (r["env"], r["seed"]): r
        for r in rows(aug)
        if r["arm"] == "scratch-pd" and r.get("augment") and r["labels"] == 500
    }
    cells: dict[str, dict[str, list[float]]] = {}
    for key, s in sorted(new.items()):
        g = cells.setdefault(group(key[0]), {"fair ME": [], "fair CRPS": [], "scratch": []})
        if key in auto:
            g["fair ME"].append(auto[key]["me"] / s["me"])
            g["fair CRPS"].append(auto[key]["crps"] / s["crps"])
        if key in old:
            g["scratch"].append(s["me"] / old[key]["me"])
    print("| both augmented, the budget over the labels | labs | scenes |")
    print("|---|---|---|")
    names = {
        "fair ME": "`auto` / scratch-pd, ME",
        "fair CRPS": "`auto` / scratch-pd, CRPS",
        "scratch": "scratch-pd: labelled / copies budget, ME",
    }
    for k, name in names.items():
        labs, scenes = cells.get("labs", {}).get(k, []), cells.get("scenes", {}).get(k, [])
        print(f"| {name} | {ratio_cell(labs)} | {ratio_cell(scenes)} |")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3])
