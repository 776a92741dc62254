"""Figure: a fresh `dense` layer against plain MEML fine-tuning (and scratch) by label
budget, from scripts/eval-unlabelled-tracks rows at 500, 1,400 and 3,000 labels.

python3 docs/results/transfer/layers/labels_plot.py docs/results/transfer/layers/labels.png \
    500=docs/results/transfer/layers/results.jsonl 1400=.../results-1400.jsonl \
    3000=.../results-3000.jsonl
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

PAIRS = (
    ("meml+reinit:dense", "meml", "dense re-initialised / MEML", "tab:blue"),
    ("meml", "scratch", "MEML / scratch", "tab:gray"),
)


def ratios(path: Path, arm: str, base: str) -> np.ndarray:
    """Per scene-seed test ME of ``arm`` over ``base``."""
    rows = [json.loads(x) for x in path.read_text().splitlines() if x.startswith("{")]
    me = {(r["scene"], r["seed"], r["arm"]): float(r["me"]) for r in rows if "me" in r}
    pairs = {(s, seed) for s, seed, _ in me}
    return np.array(
        [me[(s, d, arm)] / me[(s, d, base)] for s, d in sorted(pairs) if (s, d, arm) in me]
    )


def main(png: Path, budgets: list[tuple[int, Path]]) -> None:
    fig, ax = plt.subplots(figsize=(6.0, 3.6))
    for k, (arm, base, label, colour) in enumerate(PAIRS):
        xs, gs = [], []
        for i, (_, path) in enumerate(budgets):
            r = ratios(path, arm, base)
            x = i + (k - 0.5) * 0.25
            ax.scatter(np.full(len(r), x), r, s=12, color=colour, alpha=0.5)
            xs.append(x)
            gs.append(math.exp(float(np.log(r).mean())))
        ax.plot(xs, gs, "-o", color=colour, label=f"{label} (geometric mean)")
    ax.axhline(1.0, color="k", lw=0.6)
    ax.set_xticks(range(len(budgets)), [f"{n:,}" for n, _ in budgets])
    ax.set_xlabel("labels (500, 1,400: procedural scenes; 3,000: the two labs)")
    ax.set_ylabel("test ME ratio")
    ax.set_title("A fresh dense layer pays once there are labels")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png, dpi=120)


if __name__ == "__main__":
    pairs = [a.split("=", 1) for a in sys.argv[2:]]
    main(Path(sys.argv[1]), [(int(n), Path(p)) for n, p in pairs])
