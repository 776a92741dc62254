# ruff: noqa: T201  (a report script: it prints markdown tables)
"""Tables and figure of the distance pilot (scripts/pilot-distance), from its JSON lines.

python3 docs/results/transfer/distance/table.py docs/results/transfer/distance
"""

from __future__ import annotations

import json
import math
import sys
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

METRICS = ("rank_corr", "rank_corr_5m", "nn1_m", "nn10_m", "mutual_within_1m")
ARMS = (
    ("meml_learned", "meml", "MEML + learned-distance pairs / MEML"),
    ("meml_spatial", "meml", "MEML + spatial-covariance pairs / MEML"),
    ("scratch_spatial", "scratch", "scratch + spatial-covariance pairs / scratch"),
    ("meml", "scratch", "MEML / scratch"),
    ("meml_spatial", "scratch_spatial", "MEML + pairs / scratch + pairs (spatial)"),
    ("meml_spatial", "scratch", "MEML + pairs / scratch (spatial)"),
)


def rows(path: Path) -> list[dict[str, object]]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.startswith("{")]


def ratio_line(name: str, r: np.ndarray) -> str:
    g = math.exp(float(np.log(r).mean()))
    return (
        f"| {name} | {g:.3f} | {float(np.median(r)):.3f} | {r.min():.2f}-{r.max():.2f} "
        f"| {int((r < 1).sum())}/{len(r)} |"
    )


def main(out: Path) -> None:
    ev = rows(out / "eval.jsonl")
    by: dict[str, list[dict[str, object]]] = defaultdict(list)
    for r in ev:
        by[str(r["dissimilarity"])].append(r)
    print("| dissimilarity (8 held-out scenes, median) | " + " | ".join(METRICS) + " |")
    print("|---" * (len(METRICS) + 1) + "|")
    for name, got in by.items():
        cells = [f"{float(np.median([float(str(g[m])) for g in got])):.2f}" for m in METRICS]
        print(f"| {name} | " + " | ".join(cells) + " |")
    oracle = np.median([float(str(g["oracle_nn1_m"])) for g in by["learned"]])
    print(f"\n(true nearest neighbour: {oracle:.2f} m at the median)\n")

    ad = rows(out / "adapt-0.jsonl") + rows(out / "adapt-1.jsonl")
    print(
        "| scene | fold | unlabelled | pairs found (spatial) | within 1 m | scratch | "
        "scratch + pairs | MEML | MEML + pairs | MEML + learned pairs |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in sorted(ad, key=lambda r: (str(r["target"]), int(str(r["fold"])))):
        print(
            f"| {str(r['target'])[5:12]} | {r['fold']} | {r['n_unlabelled']} | "
            f"{r['spatial_pairs']} | {float(str(r['spatial_within_1m'])):.2f} | "
            f"{float(str(r['scratch_me'])):.2f} | {float(str(r['scratch_spatial_me'])):.2f} | "
            f"{float(str(r['meml_me'])):.2f} | {float(str(r['meml_spatial_me'])):.2f} | "
            f"{float(str(r['meml_learned_me'])):.2f} |"
        )
    print("\n| ratio of test ME over scene-folds | geometric mean | median | range | better |")
    print("|---|---|---|---|---|")
    ratios = {}
    for a, b, name in ARMS:
        ratio = np.array([float(str(x[f"{a}_me"])) / float(str(x[f"{b}_me"])) for x in ad])
        ratios[name] = ratio
        print(ratio_line(name, ratio))
    c = np.array([float(str(x["meml_spatial_crps"])) / float(str(x["meml_crps"])) for x in ad])
    print(ratio_line("CRPS: MEML + pairs / MEML (spatial)", c))

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    names = list(by)
    x = np.arange(len(names))
    for k, (m, label) in enumerate((("nn1_m", "nearest"), ("nn10_m", "10 nearest"))):
        v = [np.median([float(str(g[m])) for g in by[n]]) for n in names]
        axes[0].bar(x + 0.4 * k - 0.2, v, 0.4, label=f"true distance to the {label}")
    axes[0].set_xticks(x, names)
    axes[0].set_ylabel("m (median over 8 held-out scenes)")
    axes[0].set_title("Which samples does a dissimilarity call near?")
    axes[0].legend()
    keys = [n for _, _, n in ARMS[:3]]
    for k, n in enumerate(keys):
        axes[1].scatter(np.full(len(ratios[n]), k), ratios[n], alpha=0.6)
    axes[1].axhline(1.0, color="grey", lw=0.8)
    axes[1].set_xticks(
        range(len(keys)), ["MEML +\nlearned", "MEML +\nspatial", "scratch +\nspatial"]
    )
    axes[1].set_ylabel("test ME ratio (with / without pairs)")
    axes[1].set_title("500 labels, 8 scenes x 2 folds")
    fig.tight_layout()
    fig.savefig(out / "distance.png", dpi=110)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
