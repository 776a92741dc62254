#!/usr/bin/env python3
"""ensemble.png: served fused ME over the best single BS's with one joint head and with
an ensemble of five, per site and adaptation seed (a line joins a seed's two versions),
read from the `scripts/evaluate-site-trust` outputs in served-ensemble/.

    python3 docs/results/site-trust/joint/ensemble_plot.py
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import matplotlib
from ensemble_served import read

matplotlib.use("Agg")
import matplotlib.pyplot as plt

HERE = Path(__file__).parent

SITES = {"hall": "hall (4 BSs)", "corridor": "corridor (3 BSs)", "lab": "lab (3 BSs)"}
ARMS = (1, 5)


def main() -> None:
    fig, ax = plt.subplots(figsize=(7, 4))
    for i, site in enumerate(SITES):
        for seed in (0, 1, 2):
            runs = [
                read(HERE / "served-ensemble" / f"K{k}" / f"{site}-s{seed}-all.txt") for k in ARMS
            ]
            y = [r["fused"] / r["best"] for r in runs]
            ax.plot(
                [i - 0.15, i + 0.15],
                y,
                "o-",
                color=f"C{seed}",
                label=f"seed {seed}" if i == 0 else None,
            )
    ax.axhline(0.6, color="grey", ls="--", lw=1, label="goal 0.6")
    ax.set_xticks(range(len(SITES)), [f"{name}\n1 head | 5 heads" for name in SITES.values()])
    ax.set_ylabel("fused ME / best single BS's ME")
    ax.set_title("Served on held-out trajectories: one joint head against five")
    ax.legend(loc="lower center", fontsize=8)
    fig.tight_layout()
    fig.savefig(HERE / "ensemble.png", dpi=120)


if __name__ == "__main__":
    main()
