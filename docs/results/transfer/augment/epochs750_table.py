#!/usr/bin/env python3
"""The epoch cap at 750 labels on lab-los (preregistered.md, last section): `auto` with
`epochs` 200 against passes750.jsonl's ``labelled`` (the product, `epochs` 100) and
``copies`` rows, per seed and at the median.

    python3 epochs750_table.py passes750.jsonl epochs750.jsonl > epochs750.md
"""

# ruff: noqa: T201
from __future__ import annotations

import sys

from passes_table import ratio_cell, rows


def main(passes: str, epochs: str) -> None:
    rs = [r for r in rows(passes) + rows(epochs) if r["env"] == "lab-los"]
    by = {(r["seed"], r.get("budget") or f"e{r['epochs']}"): r for r in rs}
    seeds = sorted({s for s, arm in by if arm == "e200"})
    print(
        "| seed | ME copies | ME labelled (e100) | ME e200 | e200 / e100 | e200 / copies "
        "| steps e100 | steps e200 | wall s (copies, e100, e200) |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    r100: list[float] = []
    rcop: list[float] = []
    for s in seeds:
        c, a, b = by[(s, "copies")], by[(s, "labelled")], by[(s, "e200")]
        r100.append(b["me"] / a["me"])
        rcop.append(b["me"] / c["me"])
        print(
            f"| {s} | {c['me']:.3f} | {a['me']:.3f} | {b['me']:.3f} | {r100[-1]:.3f} "
            f"| {rcop[-1]:.3f} | {a['steps']} | {b['steps']} "
            f"| {c['wall_s']}, {a['wall_s']}, {b['wall_s']} |"
        )
    print()
    print(f"- e200 / e100 (the product): {ratio_cell(r100)}")
    print(f"- e200 / the budget over the copies: {ratio_cell(rcop)}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
