#!/usr/bin/env python3
"""Augmented / plain error by label budget (preregistered.md, "Other label budgets"): the
rows of `run.py` (3 copies, fine-tuned) against `../every-budget`'s plain rows on the same
splits (the head as `train_target` finishes it); a table on stdout and budgets.png.

    budgets.py budgets-aug.jsonl aug.jsonl ../every-budget/budgets.jsonl \\
        ../every-budget/scenes.jsonl > budgets.md
"""

# ruff: noqa: T201
from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

Key = tuple[str, int, str, int]  # (env, seed, arm, labels)


def load(paths: list[Path], augmented: bool) -> dict[Key, dict[str, Any]]:
    out: dict[Key, dict[str, Any]] = {}
    for path in paths:
        for line in path.open():
            r = json.loads(line)
            if ("augment" in r) != augmented or r.get("finished") != "train_target":
                continue
            if r.get("mode") != "finetune":
                continue
            out[(r["env"], r["seed"], r["arm"], r["labels"])] = r
    return out


def group(env: str) -> str:
    return "scenes" if env.startswith("proc/") else env


def main(aug_paths: list[Path], plain_paths: list[Path]) -> None:
    aug, plain = load(aug_paths, True), load(plain_paths, False)
    ratios: dict[tuple[str, str, int], list[tuple[float, float]]] = defaultdict(list)
    for k, r in aug.items():
        if k in plain:
            p = plain[k]
            ratios[(k[2], group(k[0]), k[3])].append((r["me"] / p["me"], r["crps"] / p["crps"]))
    print("| arm | target | labels | n | augmented / plain ME: median [range] (lower) | CRPS |")
    print("|---|---|---|---|---|---|")
    for (arm, g, labels), v in sorted(ratios.items()):
        me = np.array([x[0] for x in v])
        crps = np.median([x[1] for x in v])
        print(
            f"| {arm} | {g} | {labels} | {len(v)} | {np.median(me):.3f} "
            f"[{me.min():.2f}-{me.max():.2f}] ({int((me < 1).sum())}/{len(v)}) | {crps:.3f} |"
        )
    print()
    print("| target | labels | corpus / scratch-pd: plain | both augmented |")
    print("|---|---|---|---|")
    for labels in sorted({k[3] for k in aug if k[2] == "scratch-pd"}):
        for g in ("lab-los", "lab-nlos"):
            cells = []
            for d in (plain, aug):
                r = [
                    d[k]["me"] / d[(k[0], k[1], "scratch-pd", labels)]["me"]
                    for k in d
                    if k[2] == "corpus"
                    and k[3] == labels
                    and group(k[0]) == g
                    and (k[0], k[1], "scratch-pd", labels) in d
                    and (k[0], k[1], "corpus", labels) in aug
                ]
                cells.append(f"{np.median(r):.3f} ({len(r)})" if r else "")
            print(f"| {g} | {labels} | " + " | ".join(cells) + " |")
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for g, marker in (("lab-los", "o"), ("lab-nlos", "s"), ("scenes", "^")):
        pts = sorted((n, v) for (arm, gg, n), v in ratios.items() if arm == "corpus" and gg == g)
        if not pts:
            continue
        xs = [lab for lab, _ in pts]
        med = [np.median([x[0] for x in v]) for _, v in pts]
        lo = [min(x[0] for x in v) for _, v in pts]
        hi = [max(x[0] for x in v) for _, v in pts]
        ax.plot(xs, med, marker=marker, label=g)
        ax.fill_between(xs, lo, hi, alpha=0.15)
    ax.axhline(1.0, color="k", lw=0.8)
    ax.axvline(1000, color="grey", ls="--", lw=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("labelled fingerprints")
    ax.set_ylabel("ME augmented / plain (median, range)")
    ax.set_title("Shipped backbone, fine-tuned, 3 perturbed copies per label")
    ax.legend()
    fig.tight_layout()
    fig.savefig(Path(__file__).with_name("budgets.png"), dpi=120)


if __name__ == "__main__":
    paths = [Path(p) for p in sys.argv[1:]]
    main(paths[:2], paths[2:])
