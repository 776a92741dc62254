#!/usr/bin/env python3
"""The budget study's table (README.md, "The budget counted over the labelled
fingerprints"): ``labelled`` / ``copies`` per target-seed, median [range] (lower / n) for
the labs and the scenes, and whether the ``copies`` rows reproduce autoaug.jsonl's
(another machine, the data re-simulated).

    python3 passes_table.py passes.jsonl autoaug.jsonl > passes.md
    python3 passes_table.py passes200.jsonl > passes200.md     # 200 labels: no earlier rows
"""

# ruff: noqa: T201
from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path
from typing import Any

Row = dict[str, Any]


def rows(path: str) -> list[Row]:
    with Path(path).open() as f:
        return [json.loads(line) for line in f if line.strip()]


def group(env: str) -> str:
    return "labs" if env.startswith("lab-") else "scenes"


def ratio_cell(values: list[float]) -> str:
    if not values:
        return "-"
    lower = sum(v < 1 for v in values)
    return (
        f"{statistics.median(values):.3f} [{min(values):.2f}-{max(values):.2f}] "
        f"({lower}/{len(values)} lower)"
    )


def main(passes: str, autoaug: str | None) -> None:
    by: dict[tuple[str, int, str], Row] = {
        (r["env"], r["seed"], r["budget"]): r for r in rows(passes)
    }
    old = {} if autoaug is None else {(r["env"], r["seed"]): r for r in rows(autoaug)}
    old = {k: r for k, r in old.items() if r.get("augment")}
    keys = sorted({(e, s) for e, s, _ in by})
    ratios: dict[str, dict[str, list[float]]] = {
        g: {"me": [], "crps": []} for g in ("labs", "scenes")
    }
    same = 0
    print(
        "| target | seed | ME copies | ME labelled | ratio | CRPS ratio "
        "| chosen (copies, labelled) | wall s (copies, labelled) | steps labelled |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for env, seed in keys:
        c, lab = by.get((env, seed, "copies")), by.get((env, seed, "labelled"))
        if c is None or lab is None:
            continue
        prev = old.get((env, seed))
        same += prev is not None and abs(prev["me"] / c["me"] - 1) < 1e-3
        r_me, r_crps = lab["me"] / c["me"], lab["crps"] / c["crps"]
        ratios[group(env)]["me"].append(r_me)
        ratios[group(env)]["crps"].append(r_crps)
        print(
            f"| {env} | {seed} | {c['me']:.3f} | {lab['me']:.3f} | {r_me:.3f} | {r_crps:.3f} "
            f"| {c['chosen']}, {lab['chosen']} | {c['wall_s']}, {lab['wall_s']} "
            f"| {lab['steps']} |"
        )
    print()
    print("| labelled / copies | labs | scenes |")
    print("|---|---|---|")
    for metric in ("me", "crps"):
        print(
            f"| {metric.upper()} | {ratio_cell(ratios['labs'][metric])} "
            f"| {ratio_cell(ratios['scenes'][metric])} |"
        )
    cov = {
        b: [(r["c1"], r["c2"]) for (_, _, bb), r in by.items() if bb == b]
        for b in ("copies", "labelled")
    }
    walls = {
        b: [r["wall_s"] for (_, _, bb), r in by.items() if bb == b] for b in ("copies", "labelled")
    }
    print()
    for b in ("copies", "labelled"):
        c1 = statistics.median(v[0] for v in cov[b]) * 100
        c2 = statistics.median(v[1] for v in cov[b]) * 100
        print(
            f"- `{b}`: in 1 / 2 sigma {c1:.1f} / {c2:.1f} % (median of {len(cov[b])}); "
            f"wall {statistics.median(walls[b]):.0f} s median, {max(walls[b]):.0f} s max"
        )
    n_copies = sum(1 for k in by if k[2] == "copies")
    if autoaug is not None:
        print(f"- `copies` rows within 0.1 % of autoaug.jsonl's augmented ME: {same} of {n_copies}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else None)
