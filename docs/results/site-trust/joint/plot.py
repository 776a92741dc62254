#!/usr/bin/env python3
"""joint.png: each served estimate's trajectory ME over the best single BS's, per site,
median over the three adaptation seeds (bars) with their range (lines), read from the
`scripts/evaluate-site-trust` outputs in served/ (so the figure is the tables, not a
copy of them). The tracked bar is over the best BS too, not over the fused.

    python3 docs/results/site-trust/joint/plot.py
"""

from __future__ import annotations

import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

HERE = Path(__file__).parent
SITES = {
    "hall": "hall s200003 (4 BSs)",
    "corridor": "corridor s200005 (3 BSs)",
    "lab": "lab s200006 (3 BSs)",
}
SEEDS = (0, 1, 2)
ARMS = {
    "fused, BSs only": r"fused \(robust_student_t\) without the joint head, the served",
    "joint head alone": r"joint head alone",
    "fused with the joint head (served)": r"fused \(robust_student_t, as served\)",
    "fused + tracked (served)": r"fused \+ tracked \(noise scale 1\)",
}


def table(path: Path) -> dict[str, float]:
    """{estimate: ME} of the markdown rows of one evaluation output."""
    rows = {}
    for line in path.read_text().splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) >= 3 and re.fullmatch(r"\d+\.\d+", cells[2]):
            rows[cells[0]] = float(cells[2])
    return rows


def ratios(site: str, seed: int) -> list[float]:
    """Each arm's ME over the best BS's, for one adapted version."""
    rows = table(HERE / "served" / f"{site}-s{seed}.txt")
    best = min(v for k, v in rows.items() if re.fullmatch(r"bs\d+ alone", k))
    return [next(v for k, v in rows.items() if re.match(p, k)) / best for p in ARMS.values()]


def main() -> None:
    fig, ax = plt.subplots(figsize=(8, 4))
    width = 0.8 / len(ARMS)
    for i, site in enumerate(SITES):
        per_seed = np.array([ratios(site, seed) for seed in SEEDS])  # [seed, arm]
        for j, arm in enumerate(ARMS):
            x = i + (j - 1.5) * width
            med = float(np.median(per_seed[:, j]))
            bar = ax.bar(x, med, width, color=f"C{j}", label=arm if i == 0 else None)
            ax.vlines(x, per_seed[:, j].min(), per_seed[:, j].max(), color="k", lw=1)
            ax.bar_label(bar, fmt="%.2f", fontsize=7, label_type="center")
    ax.axhline(0.6, color="k", ls="--", lw=0.8, label="goal: fused <= 0.6 x best BS")
    ax.set_xticks(range(len(SITES)), list(SITES.values()))
    ax.set_ylabel("trajectory ME / best single BS's ME")
    ax.set_title(
        "Held-out multi-BS sites, 10 trajectories each: served versions,\n"
        f"median (range) over {len(SEEDS)} adaptation seeds"
    )
    ax.legend(fontsize=8, loc="upper right")
    ax.set_ylim(0, 1.1)
    fig.tight_layout()
    fig.savefig(HERE / "joint.png", dpi=120)


if __name__ == "__main__":
    main()
