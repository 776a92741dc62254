#!/usr/bin/env python3
# ruff: noqa: T201  (a results script: its output is the table)
"""The joint head's neighbour terms, paired seed for seed: per site, the median over seeds
of each arm's best single BS, joint head alone, fused (as served) and tracked ME, the
goals' ratios and the served coverages, from `scripts/evaluate-site-trust` outputs named
``SITE-sSEED-all.txt`` in one folder per arm (README.md beside this file); a figure of
each arm's ratios to ``off``'s per seed, titled by its file name.

    python3 compare.py none=../../foreign/served off=off on=on on2=on2 every-BS-heard.png > table.md
    python3 compare.py off=bs0-out/off on=bs0-out/on on2=bs0-out/on2 bs0-left-out.png > bs0-out.md
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "seeds"))
from ratios import FUSED, TRACKED, rows

JOINT = "joint head alone"


def read(folder: Path) -> dict[tuple[str, int], dict[str, float]]:
    """(site, seed) -> the numbers of one arm's evaluation."""
    out = {}
    for path in sorted(folder.glob("*-s[0-9]-all.txt")):
        m = re.fullmatch(r"(\w+)-s(\d+)-all", path.stem)
        assert m is not None
        r = rows(path)
        cov = {k: [float(c.split()[0]) for c in r[k][4:6]] for k in (FUSED, TRACKED)}
        out[(m[1], int(m[2]))] = {
            "best": min(float(v[2]) for k, v in r.items() if re.fullmatch(r"bs\d+ alone", k)),
            "joint": float(r[JOINT][2]),
            "fused": float(r[FUSED][2]),
            "tracked": float(r[TRACKED][2]),
            "f1": cov[FUSED][0],
            "f2": cov[FUSED][1],
            "t1": cov[TRACKED][0],
            "t2": cov[TRACKED][1],
        }
    return out


def main() -> None:
    arms = {a.split("=")[0]: read(Path(a.split("=")[1])) for a in sys.argv[1:-1]}
    names = list(arms)
    last = arms[names[-1]]
    sites = sorted({site for site, _ in last})
    print(
        "| site (seeds) | arm | best BS ME | joint head ME | fused ME | fused / best BS | "
        "tracked / fused | fused 1 / 2 sigma | tracked 1 / 2 sigma |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for site in sites:
        seeds = sorted(
            s for (t, s) in last if t == site and all((t, s) in a for a in arms.values())
        )
        for name in names:
            v = {
                k: np.array([arms[name][(site, s)][k] for s in seeds])
                for k in last[(site, seeds[0])]
            }
            ratio = v["fused"] / v["best"]
            print(
                f"| {site} ({len(seeds)}) | {name} | {np.median(v['best']):.3f} | "
                f"{np.median(v['joint']):.3f} | {np.median(v['fused']):.3f} | "
                f"{np.median(ratio):.3f} ({ratio.min():.2f}-{ratio.max():.2f}) | "
                f"{np.median(v['tracked'] / v['fused']):.3f} | "
                f"{np.median(v['f1']):.1f} / {np.median(v['f2']):.1f} % | "
                f"{np.median(v['t1']):.1f} / {np.median(v['t2']):.1f} % |"
            )
    base = "off"
    tried = [n for n in names if n not in (base, "none")]
    print(f"\nPaired against `{base}`, median over seeds (range; lower in):\n")
    print("| site | arm | joint head ME | fused ME | tracked ME |")
    print("|---|---|---|---|---|")
    _, ax = plt.subplots(figsize=(7, 3.6))
    shapes = {"joint": "o", "fused": "s", "tracked": "^"}
    for i, site in enumerate(sites):
        for j, arm in enumerate(tried):
            seeds = sorted(s for (t, s) in arms[arm] if t == site and (t, s) in arms[base])
            cells = []
            for m, k in enumerate(("joint", "fused", "tracked")):
                r = np.array([arms[arm][(site, s)][k] / arms[base][(site, s)][k] for s in seeds])
                x = i + 0.25 * (j - (len(tried) - 1) / 2) + 0.07 * (m - 1)
                label = f"{arm}: {k}" if i == 0 else None
                ax.scatter(
                    np.full(len(r), x), r, color=f"C{j}", marker=shapes[k], s=16, label=label
                )
                lower = int((r < 1).sum())
                cells.append(
                    f"{np.median(r):.3f} ({r.min():.3f}-{r.max():.3f}; {lower} of {len(r)})"
                )
            print(f"| {site} | {arm} | " + " | ".join(cells) + " |")
    ax.axhline(1.0, color="grey", lw=0.8)
    ax.set_xticks(range(len(sites)), sites)
    ax.set_ylabel(f"ME / {base}'s (per seed)")
    ax.set_title(Path(sys.argv[-1]).stem.replace("-", " "))
    ax.legend(fontsize=7, ncol=2)
    plt.tight_layout()
    plt.savefig(sys.argv[-1], dpi=120)


if __name__ == "__main__":
    main()
