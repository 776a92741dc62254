#!/usr/bin/env python3
"""modes.png: fused ME per site and seed, fine-tuning every BS against the site-level
`auto` (served, with the joint head), and frozen heads against fine-tuning offline
(the BSs only). Reads the stored outputs beside this script and ../joint/served.

    python3 docs/results/site-trust/modes/plot.py
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

HERE = Path(__file__).parent
SITES = ("hall", "corridor", "lab")
SEEDS = (0, 1, 2)
SERVED_ROW = "| fused (robust_student_t, as served) |"


def served_fused(path: Path) -> float:
    """The served fused ME (m) of an `evaluate-site-trust` output."""
    for line in path.read_text().splitlines():
        if line.startswith(SERVED_ROW):
            return float(re.split(r"\s*\|\s*", line)[3])
    raise ValueError(f"{path}: no served fused row")


def offline(site: str) -> dict[tuple[str, int], float]:
    """(mode, seed) -> fused ME on the trajectories, BSs only."""
    out = {}
    for path in sorted(HERE.glob(f"{site}*.jsonl")):
        for line in path.read_text().splitlines():
            row = json.loads(line)
            out[(row["mode"], row["seed"])] = row["tracks"]["fused"]
    return out


def main() -> None:
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    labels = [f"{site}\ns{s}" for site in SITES for s in SEEDS]
    x = range(len(labels))
    names = [f"{site}-s{s}.txt" for site in SITES for s in SEEDS]
    before = [served_fused(HERE.parent / "joint" / "served" / n) for n in names]
    after = [served_fused(HERE / "served" / n) for n in names]
    ax = axes[0]
    ax.plot(x, [a / b for a, b in zip(after, before, strict=True)], "o", color="C0")
    ax.axhline(1.0, color="grey", lw=0.8)
    ax.set_xticks(list(x), labels, fontsize=8)
    ax.set_ylabel("fused ME, site auto / finetune")
    ax.set_title("served, with the joint head (trajectories)", fontsize=10)
    ax = axes[1]
    ratios = []
    for site in SITES:
        off = offline(site)
        ratios += [off[("head", s)] / off[("finetune", s)] for s in SEEDS]
    ax.plot(x, ratios, "o", color="C1")
    ax.axhline(1.0, color="grey", lw=0.8)
    ax.set_xticks(list(x), labels, fontsize=8)
    ax.set_ylabel("fused ME, head / finetune")
    ax.set_title("offline, BSs only (trajectories)", fontsize=10)
    fig.tight_layout()
    fig.savefig(HERE / "modes.png", dpi=120)


if __name__ == "__main__":
    main()
