#!/usr/bin/env python3
"""Test ME of `auto` with and without its fresh-dense candidate per lab-seed, against
scratch (rows from pair.py).

    plot.py OUT.png ROWS.jsonl [ROWS.jsonl ...]     # one panel per file (label budget)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np


def main(out: Path, files: list[Path]) -> None:
    fig, axes = plt.subplots(1, len(files), figsize=(6 * len(files), 4), squeeze=False)
    for ax, path in zip(axes[0], files, strict=True):
        rows = [json.loads(x) for x in path.read_text().splitlines()]
        rows.sort(key=lambda r: (r["env"], r["seed"]))
        labels = [f"{r['env']}\nseed {r['seed']}" for r in rows]
        x = np.arange(len(rows))
        for k, (name, pick) in enumerate(
            [
                ("auto without fresh-dense", lambda r: r["chosen_without"]),
                ("auto with fresh-dense", lambda r: r["chosen_with"]),
            ]
        ):
            ratio = [r["test"][pick(r)]["me"] / r["test"]["scratch"]["me"] for r in rows]
            ax.bar(x + (k - 0.5) * 0.38, ratio, 0.38, label=name)
        ax.axhline(1.0, color="k", lw=0.8, ls="--")
        ax.set_xticks(x, labels, fontsize=7)
        ax.set_ylabel("test ME / scratch's")
        ax.set_title(f"{rows[0]['labels']} labels, default recipe")
        ax.set_ylim(0.5, 1.15)
        ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(out, dpi=120)


if __name__ == "__main__":
    main(Path(sys.argv[1]), [Path(p) for p in sys.argv[2:]])
