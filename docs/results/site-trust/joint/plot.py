#!/usr/bin/env python3
"""joint.png: each served estimate's trajectory ME over the best single BS's, per site,
read from the `scripts/evaluate-site-trust` outputs in served/ (so the figure is the
tables, not a copy of them).

    python3 docs/results/site-trust/joint/plot.py
"""

from __future__ import annotations

import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

HERE = Path(__file__).parent
SITES = {
    "hall": "hall s200003 (4 BSs)",
    "corridor": "corridor s200005 (3 BSs)",
    "lab": "lab s200006 (3 BSs)",
}
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


def main() -> None:
    fig, ax = plt.subplots(figsize=(8, 4))
    width = 0.8 / len(ARMS)
    for i, site in enumerate(SITES):
        rows = table(HERE / "served" / f"{site}.txt")
        best = min(v for k, v in rows.items() if re.fullmatch(r"bs\d+ alone", k))
        for j, (arm, pattern) in enumerate(ARMS.items()):
            me = next(v for k, v in rows.items() if re.match(pattern, k))
            bar = ax.bar(i + (j - 1.5) * width, me / best, width, color=f"C{j}",
                         label=arm if i == 0 else None)  # fmt: skip
            ax.bar_label(bar, fmt="%.2f", fontsize=7)
    ax.axhline(0.6, color="k", ls="--", lw=0.8, label="goal: fused <= 0.6 x best BS")
    ax.set_xticks(range(len(SITES)), list(SITES.values()))
    ax.set_ylabel("trajectory ME / best single BS's ME")
    ax.set_title("Held-out multi-BS sites, 10 trajectories each (served versions)")
    ax.legend(fontsize=8, loc="upper right")
    ax.set_ylim(0, 1.05)
    fig.tight_layout()
    fig.savefig(HERE / "joint.png", dpi=120)


if __name__ == "__main__":
    main()
