#!/usr/bin/env python3
"""lab-los at 750 labels (preregistered.md, the last two sections): `auto` variants of the
product's budget (``e200``: `epochs` 200; ``e200-p57``: that and patience 57; ``-lr18``:
`lr_patience` 18, the plateau schedule's) against
passes750.jsonl's ``labelled`` (the product) and ``copies`` rows, per seed and at the
median.

    python3 epochs750_table.py passes750.jsonl epochs750.jsonl patience750.jsonl \
        schedule750.jsonl > epochs750.md
"""

# ruff: noqa: T201
from __future__ import annotations

import sys
from typing import Any

from passes_table import ratio_cell, rows


def arm(r: dict[str, Any]) -> str:
    """The row's budget: passes.py's name, or the caps arm.py changed."""
    if "budget" in r:
        return str(r["budget"])
    name = f"e{r['epochs']}" + (f"-p{r['patience']}" if "patience" in r else "")
    return name + (f"-lr{r['lr_patience']}" if "lr_patience" in r else "")


def main(passes: str, *variants: str) -> None:
    rs = [r for path in (passes, *variants) for r in rows(path) if r["env"] == "lab-los"]
    by = {(r["seed"], arm(r)): r for r in rs}
    names = sorted({a for _, a in by} - {"copies", "labelled"})
    seeds = sorted({s for s, a in by if a in names})
    print(
        "| seed | arm | ME | / labelled (the product) | / copies | steps | wall s |\n"
        "|---|---|---|---|---|---|---|"
    )
    ratios: dict[str, tuple[list[float], list[float]]] = {n: ([], []) for n in names}
    for s in seeds:
        c, p = by[(s, "copies")], by[(s, "labelled")]
        print(f"| {s} | copies | {c['me']:.3f} | | | {c['steps']} | {c['wall_s']} |")
        print(f"| {s} | labelled | {p['me']:.3f} | | | {p['steps']} | {p['wall_s']} |")
        for n in names:
            r = by.get((s, n))
            if r is None:
                continue
            ratios[n][0].append(r["me"] / p["me"])
            ratios[n][1].append(r["me"] / c["me"])
            print(
                f"| {s} | {n} | {r['me']:.3f} | {ratios[n][0][-1]:.3f} | {ratios[n][1][-1]:.3f} "
                f"| {r['steps']} | {r['wall_s']} |"
            )
    print()
    for n, (to_product, to_copies) in ratios.items():
        print(f"- {n} / labelled (the product): {ratio_cell(to_product)}")
        print(f"- {n} / the budget over the copies: {ratio_cell(to_copies)}")


if __name__ == "__main__":
    main(*sys.argv[1:])
