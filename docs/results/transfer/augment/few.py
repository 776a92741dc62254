#!/usr/bin/env python3
"""`auto` with and without the copies at 50 and 100 labels (preregistered.md, "The
default mode at few labels"): augmented / plain ME and CRPS per budget and lab.

    few.py autofew.jsonl > few.md
"""

# ruff: noqa: T201
from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np


def main(path: Path) -> None:
    rows: dict[tuple[str, int, int, bool], dict[str, Any]] = {}
    for line in path.open():
        r = json.loads(line)
        rows[(r["env"], r["seed"], r["labels"], "augment" in r)] = r
    print("| labels | lab | n | augmented / plain ME: median [range] (lower) | CRPS "
          "| chosen: plain; augmented | wall s (median): plain; augmented |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    for labels in sorted({k[2] for k in rows}):
        for env in ("lab-los", "lab-nlos", "both"):
            keys = [
                k for k in rows
                if k[2] == labels and k[3] and (env == "both" or k[0] == env)
                and (k[0], k[1], labels, False) in rows
            ]  # fmt: skip
            pairs = [(rows[k], rows[(k[0], k[1], labels, False)]) for k in keys]
            if not pairs:
                continue
            me = np.array([a["me"] / p["me"] for a, p in pairs])
            crps = np.median([a["crps"] / p["crps"] for a, p in pairs])
            chosen = [
                ", ".join(f"{m} {n}" for m, n in Counter(r["chosen"] for r in side).most_common())
                for side in ([p for _, p in pairs], [a for a, _ in pairs])
            ]
            augmented, plain = zip(*pairs, strict=True)
            wall = [np.median([r["wall_s"] for r in side]) for side in (plain, augmented)]
            print(
                f"| {labels} | {env} | {len(pairs)} | {np.median(me):.3f} [{me.min():.2f}-"
                f"{me.max():.2f}] ({int((me < 1).sum())}/{len(me)}) | {crps:.3f} | "
                f"{chosen[0]}; {chosen[1]} | {wall[0]:.0f}; {wall[1]:.0f} |"
            )


if __name__ == "__main__":
    main(Path(sys.argv[1]))
