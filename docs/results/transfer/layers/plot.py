# ruff: noqa: T201  (a report script: it prints a markdown table)
"""Figure and table of the target fine-tuning variants (scripts/eval-unlabelled-tracks rows).

Each arm's test ME over plain MEML fine-tuning's on the same scene-seed: the L2-SP weights
(how firmly the pre-trained weights are held) and the re-initialised layers (how much of the
backbone transfers), with scratch for scale.

python3 docs/results/transfer/layers/plot.py docs/results/transfer/layers/results.jsonl \
    docs/results/transfer/layers/layers.png
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

ARMS = (
    ("meml+anchor:0.01", "L2-SP 0.01"),
    ("meml+anchor:0.1", "L2-SP 0.1"),
    ("meml+anchor:1", "L2-SP 1"),
    ("meml+reinit:dense", "dense re-init"),
    ("meml+reinit:block2", "block 2 + dense re-init"),
    ("scratch", "scratch"),
)


def main(results: Path, png: Path) -> None:
    rows = [json.loads(x) for x in results.read_text().splitlines() if x.startswith("{")]
    me = {(r["scene"], r["seed"], r["arm"]): float(r["me"]) for r in rows if "me" in r}
    crps = {(r["scene"], r["seed"], r["arm"]): float(r["crps"]) for r in rows if "crps" in r}
    base = {(s, seed): v for (s, seed, arm), v in me.items() if arm == "meml"}
    print("| arm / MEML fine-tuning | ME: geometric mean | median | range | better | n | CRPS |")
    print("|---|---|---|---|---|---|---|")
    fig, ax = plt.subplots(figsize=(7.5, 3.6))
    for i, (arm, label) in enumerate(ARMS):
        r = np.array(
            [me[(s, seed, arm)] / v for (s, seed), v in base.items() if (s, seed, arm) in me]
        )
        if not len(r):
            continue
        g = math.exp(float(np.log(r).mean()))
        c = [
            crps[(s, seed, arm)] / crps[(s, seed, "meml")]
            for s, seed in base
            if (s, seed, arm) in crps
        ]
        gc = math.exp(float(np.mean(np.log(c))))
        print(
            f"| {label} | {g:.3f} | {float(np.median(r)):.3f} | {r.min():.2f}-{r.max():.2f} "
            f"| {int((r < 1).sum())}/{len(r)} | {len(r)} | {gc:.3f} |"
        )
        jitter = np.linspace(-0.15, 0.15, len(r))
        ax.scatter(i + jitter, r, s=12, alpha=0.6, color="tab:blue")
        ax.hlines(g, i - 0.3, i + 0.3, color="black", lw=2)
    ax.axhline(1.0, color="grey", lw=0.8, ls="--")
    ax.set_xticks(range(len(ARMS)), [label for _, label in ARMS], rotation=20, fontsize=8)
    ax.set_ylabel("test ME / MEML fine-tuning")
    ax.set_title("500 labels, 8 held-out scenes x 2 seeds (bar: geometric mean)", fontsize=9)
    fig.tight_layout()
    fig.savefig(png, dpi=120)


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
