#!/usr/bin/env python3
# ruff: noqa: T201  (a results script: its output is the table)
"""Tables and plot of the UE-level out-of-site threshold from the site's walks
(README.md here).

usage: python3 table.py OUT.png RAW.npz...   (RAW: raw-<site>-<seed>.npz, each version's
unscaled median and cross-BS check scores on its walks, test trajectories, never-used
labelled positions and foreign sets, and its fitted scale; written by the exploration
script in README.md)

Each rule is a pair of thresholds (the median's, the check's): a UE alarms when its
median passes the first or its check the second; "as built" is the pair the product
fits (`training.walk_alarm`; the bootstrap seeded by the version's seed, the last part
of the file name), the others the designs it was chosen from. Bootstraps: 0.9 quantile
of 200 draws of whole tracks."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from training.novelty import conformal_threshold
from training.walk_alarm import part_scales, walk_scale

BUILT = "as built: median and check each at 0.5 %"
BEFORE = "served before (no scale)"
SETS = ("walks", "test", "unused")


def rules(d: Any, seed: int) -> dict[str, tuple[float, float]]:
    """Each rule's (median, check) thresholds from the walks, the version's ``seed`` as the
    product seeds its bootstrap (`training.walk_alarm.fit_walk_scale`)."""
    med, chk, t = d["walks_median"], d["walks_check"], d["walk_track"]
    scored = chk > 0.0

    def boot(x: Any, track: Any, a: float) -> float:
        return float(walk_scale(x, track, false_alarm=a, seed=seed) or 1.0)

    whole = boot(np.maximum(med, chk), t, 0.01)
    built = part_scales(med, chk, t, 0.005, 0.005, seed=seed)  # as the product fits them
    return {
        BEFORE: (1.0, 1.0),
        BUILT: (built[0] or 1.0, built[1] or 1.0),
        "each at 0.5 %, pooled (no bootstrap)": (
            conformal_threshold(med, 0.005),
            conformal_threshold(chk[scored], 0.005),
        ),
        "median alone at 0.5 % (check as fitted)": (boot(med, t, 0.005), 1.0),
        "median alone at 1 % (check as fitted)": (boot(med, t, 0.01), 1.0),
        "whole score at 1 %": (whole, whole),
    }


def main() -> None:
    png, files = Path(sys.argv[1]), [Path(f) for f in sys.argv[2:]]
    rows: dict[str, list[tuple[float, ...]]] = {}
    names = []
    print(
        "| site-seed | rule | median / check threshold | false alarms: walks | test "
        "trajectories | never-used | foreign sets >= 95 % | lowest set | mean |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for f in files:
        d = np.load(f)
        name = f.stem.removeprefix("raw-")
        names.append(name)
        sets = [k.removeprefix("fmedian:") for k in d.files if k.startswith("fmedian:")]
        for rule, (tm, tc) in rules(d, int(name.rsplit("-", 1)[1])).items():

            def alarm(median: Any, check: Any, tm: float = tm, tc: float = tc) -> Any:
                return (median > tm) | (check > tc)

            fa = [100 * float(np.mean(alarm(d[f"{k}_median"], d[f"{k}_check"]))) for k in SETS]
            det = {
                s: 100 * float(np.mean(alarm(d["fmedian:" + s], d["fcheck:" + s]))) for s in sets
            }
            low = min(det, key=lambda k: det[k])
            hits = sum(v >= 95 for v in det.values())
            mean = float(np.mean(list(det.values())))
            rows.setdefault(rule, []).append((*fa, hits, len(det), det[low], mean))
            print(
                f"| {name} | {rule} | {tm:.3f} / {tc:.3f} | {fa[0]:.1f} % | {fa[1]:.1f} % | "
                f"{fa[2]:.1f} % | {hits} of {len(det)} | {det[low]:.1f} % "
                f"{low.split(':')[0]} | {mean:.1f} % |"
            )
    print(
        "\n| rule | false alarms, test trajectories: median (max) | never-used: median (max) "
        "| readings over 2 % | foreign sets >= 95 % | mean detection |"
    )
    print("|---|---|---|---|---|---|")
    for rule, r in rows.items():
        a = np.array(r)
        over = int((a[:, 1:3] > 2.0).sum())
        print(
            f"| {rule} | {np.median(a[:, 1]):.1f} ({a[:, 1].max():.1f}) % | "
            f"{np.median(a[:, 2]):.1f} ({a[:, 2].max():.1f}) % | {over} of {2 * len(r)} | "
            f"{int(a[:, 3].sum())} of {int(a[:, 4].sum())} | {a[:, 6].mean():.1f} % |"
        )
    before, built = rows[BEFORE], rows[BUILT]
    x = np.arange(len(names))
    fig, ax = plt.subplots(1, 2, figsize=(11, 4))
    for k, (r, label) in enumerate(((before, BEFORE), (built, "walks' scale (as built)"))):
        ax[0].bar(x + (k - 0.5) * 0.38, [v[1] for v in r], 0.38, label=label)
        ax[1].bar(x + (k - 0.5) * 0.38, [v[3] for v in r], 0.38, label=label)
    ax[0].axhline(2.0, color="k", ls="--", lw=1, label="goal: at most 2 %")
    ax[0].set_ylabel("false alarms on the test trajectories (%)")
    ax[1].axhline(before[0][4], color="k", ls="--", lw=1, label="every foreign set")
    ax[1].set_ylabel("foreign sets detected on >= 95 % of UEs")
    ax[1].set_ylim(0, before[0][4] + 3)  # room for the legend above the bars
    for a, where in zip(ax, ("upper center", "upper right"), strict=True):
        a.set_xticks(x, names, rotation=45, ha="right")
        a.legend(fontsize=8, loc=where)
    fig.suptitle("Out of site: the UE-level thresholds fitted on the site's own walks")
    fig.tight_layout()
    fig.savefig(png, dpi=110)


if __name__ == "__main__":
    main()
