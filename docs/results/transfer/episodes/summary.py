#!/usr/bin/env python3
"""Paired ratios of one arm to another, ME and CRPS, by target group; coverage per arm.

summary.py RESULTS.jsonl ARM/BASE [ARM/BASE ...]    # e.g. episodes/corpus-rebuilt
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "sources-mix"))
from table import read_rows  # the same reader as the tables

GROUPS = {
    "labs": lambda env: env.startswith("lab"),
    "procedural": lambda env: not env.startswith("lab"),
    "all": lambda env: True,
}


def main(path: str, pairs: list[str]) -> None:
    by = read_rows(Path(path))
    out = ["| arm / base | metric | labs | procedural | all |", "|---|---|---|---|---|"]
    for pair in pairs:
        arm, base = pair.split("/")
        for metric in ("me", "crps"):
            cells = []
            for keep in GROUPS.values():
                r = [
                    runs[arm][metric] / runs[base][metric]
                    for (env, _), runs in by.items()
                    if keep(env) and arm in runs and base in runs
                ]
                lower = sum(v < 1 for v in r)
                cells.append(f"{np.median(r):.3f} ({lower} of {len(r)} lower)" if r else "")
            out.append(f"| {arm} / {base} | {metric.upper()} | " + " | ".join(cells) + " |")
    out.append("")
    arms = sorted({a for runs in by.values() for a in runs})
    for a in arms:
        rows = [runs[a] for runs in by.values() if a in runs]
        c1 = np.median([r["c1"] for r in rows]) * 100
        c2 = np.median([r["c2"] for r in rows]) * 100
        deg = sum(bool(r["degenerate"]) for r in rows)
        out.append(f"- {a}: {len(rows)} runs, {deg} degenerate, 1 / 2 sigma {c1:.1f} / {c2:.1f} %")
    sys.stdout.write("\n".join(out) + "\n")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
