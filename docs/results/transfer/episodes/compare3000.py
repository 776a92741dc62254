#!/usr/bin/env python3
"""`auto` at 3,000 labels on two backbones, paired by (target, seed): the test ME of what
`auto` kept (with its fresh-dense candidate) with the new backbone over the old one's and
over scratch's (scratch does not depend on the backbone, so its two runs must agree).

    compare3000.py NEW.jsonl OLD.jsonl   # rows of ../fresh-dense/pair.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


def rows(path: Path) -> dict[tuple[str, int], dict[str, Any]]:
    out = {}
    for line in path.read_text().splitlines():
        r = json.loads(line)
        out[(r["env"], r["seed"])] = r
    return out


def kept(r: dict[str, Any]) -> float:
    return float(r["test"][r["chosen_with"]]["me"])


def main(new_path: Path, old_path: Path) -> None:
    new, old = rows(new_path), rows(old_path)
    lines = [
        "| target | seed | new: kept, ME | old: kept, ME | scratch ME (new run / old run) "
        "| new / old | new / scratch |",
        "|---|---|---|---|---|---|---|",
    ]
    for key in sorted(new):
        n, o = new[key], old[key]
        s_new, s_old = n["test"]["scratch"]["me"], o["test"]["scratch"]["me"]
        lines.append(
            f"| {key[0]} | {key[1]} | {n['chosen_with']}, {kept(n):.3f} "
            f"| {o['chosen_with']}, {kept(o):.3f} | {s_new:.3f} / {s_old:.3f} "
            f"| {kept(n) / kept(o):.3f} | {kept(n) / s_new:.3f} |"
        )
    sys.stdout.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
