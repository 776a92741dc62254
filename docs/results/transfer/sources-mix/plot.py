#!/usr/bin/env python3
"""Per target, each backbone's ME / scratch's (bars: median over seeds; dots: seeds).

plot.py RESULTS.jsonl OUT.png LABEL=ARM [LABEL=ARM ...]
"""

from __future__ import annotations

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from table import paired, read_rows, targets  # this directory's table.py


def main(results: Path, out: Path, named: list[str]) -> None:
    arms = dict(a.split("=", 1) for a in named)
    by = read_rows(results)
    envs = targets(by)
    fig, ax = plt.subplots(figsize=(10, 4))
    width = 0.8 / len(arms)
    for j, (label, arm) in enumerate(arms.items()):
        for i, env in enumerate(envs):
            keys = paired(by, env, arms.values())
            r = [by[k][arm]["me"] / by[k]["scratch"]["me"] for k in keys]
            if not r:
                continue
            x = i + (j - (len(arms) - 1) / 2) * width
            ax.bar(x, np.median(r), width, color=f"C{j}", label=label if i == 0 else None)
            ax.plot([x] * len(r), r, "k.", ms=3)
    ax.axhline(1.0, color="k", lw=0.8)
    names = [e.replace("proc/", "").replace("/bs0", "") for e in envs]
    ax.set_xticks(range(len(envs)), names, rotation=30)
    ax.set_ylabel("ME / scratch's ME (500 labels)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=120)


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3:])
