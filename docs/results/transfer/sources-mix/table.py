#!/usr/bin/env python3
"""Markdown table of `arm.py` rows: per target, the median over seeds of each backbone's
ME / scratch's, and the paired ratio of the last two backbones named.

    table.py RESULTS.jsonl LABEL=ARM [LABEL=ARM ...]
"""

from __future__ import annotations

import collections
import json
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

Rows = dict[tuple[str, int], dict[str, Any]]


def read_rows(path: Path) -> Rows:
    """`arm.py` rows by (target, seed), then by arm."""
    by: Rows = collections.defaultdict(dict)
    with path.open() as f:
        for line in f:
            r = json.loads(line)
            by[(r["env"], r["seed"])][r["arm"]] = r
    return by


def targets(by: Rows) -> list[str]:
    """The targets, labs first."""
    return sorted({e for e, _ in by}, key=lambda e: (not e.startswith("lab"), e))


def paired(by: Rows, env: str, arms: Iterable[str]) -> list[tuple[str, int]]:
    """The (target, seed) keys of ``env`` where scratch and every one of ``arms`` ran."""
    needed = ["scratch", *arms]
    return [k for k in by if k[0] == env and all(a in by[k] for a in needed)]


def main(path: str, named: list[str]) -> None:
    arms = dict(a.split("=", 1) for a in named)
    by = read_rows(Path(path))
    labels = list(arms)
    a, b = labels[-2:] if len(labels) > 1 else (None, None)
    head = ["target", "seeds", "scratch ME (m)", *(f"{x} / scratch" for x in labels)]
    if a:
        head.append(f"{b} / {a} (lower / higher)")
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    pooled: dict[str, list[float]] = collections.defaultdict(list)
    for env in targets(by):
        keys = paired(by, env, arms.values())
        if not keys:
            continue
        cells = [env, str(len(keys)), f"{np.median([by[k]['scratch']['me'] for k in keys]):.3f}"]
        for x in labels:
            r = [by[k][arms[x]]["me"] / by[k]["scratch"]["me"] for k in keys]
            pooled[x] += r
            cells.append(f"{np.median(r):.3f}")
        if a and b:
            p = [by[k][arms[b]]["me"] / by[k][arms[a]]["me"] for k in keys]
            pooled["pair"] += p
            cells.append(f"{np.median(p):.3f} ({sum(v < 1 for v in p)} / {sum(v > 1 for v in p)})")
        out.append("| " + " | ".join(cells) + " |")
    out.append("")
    for x, v in pooled.items():
        name = f"{b} / {a}" if x == "pair" else f"{x} / scratch"
        lower = f", lower on {sum(r < 1 for r in v)} of {len(v)}" if x == "pair" else ""
        out.append(f"- {name}: median {np.median(v):.3f}, mean {np.mean(v):.3f}{lower}")
    sys.stdout.write("\n".join(out) + "\n")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
