#!/usr/bin/env python3
# ruff: noqa: T201  (a results script: its output is the table)
"""Served on trajectories: one joint head against an ensemble, per site and seed, from
`scripts/evaluate-site-trust` outputs ``DIR/K<k>/SITE-sSEED-all.txt`` (the README
beside this file, "An ensemble of joint heads"): fused ME over the best single BS's,
tracked over fused, coverage, and the ensemble's fused ME over the single head's.

    python3 docs/results/site-trust/joint/ensemble_served.py DIR [--arms 1 5] > FILE
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parents[1] / "seeds"))
from ratios import FUSED, TRACKED, rows

Run = dict[str, float]


def read(path: Path) -> Run:
    r = rows(path)
    best = min(float(v[2]) for k, v in r.items() if re.fullmatch(r"bs\d+ alone", k))
    f, t = r[FUSED], r[TRACKED]
    pct = [float(c.split()[0].rstrip("%")) for c in (f[4], f[5], t[4], t[5])]
    return {
        "best": best,
        "fused": float(f[2]),
        "tracked": float(t[2]),
        "f1": pct[0],
        "f2": pct[1],
        "t1": pct[2],
        "t2": pct[3],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dir", type=Path)
    parser.add_argument("--arms", type=int, nargs=2, default=[1, 5])
    args = parser.parse_args()
    one, many = args.arms
    runs: dict[tuple[str, int], dict[int, Run]] = {}
    for k in (one, many):
        for path in sorted((args.dir / f"K{k}").glob("*-s[0-9]-all.txt")):
            m = re.fullmatch(r"(\w+)-s(\d+)-all", path.stem)
            assert m is not None
            runs.setdefault((m[1], int(m[2])), {})[k] = read(path)
    print(
        f"| site | seed | joint heads | fused / best BS | tracked / fused | fused 1 / 2 sigma "
        f"| tracked 1 / 2 sigma | fused ME x{many} / x{one} |"
    )
    print("|---|---|---|---|---|---|---|---|")
    sites = sorted({s for s, _ in runs})
    for site in sites:
        seeds = sorted(seed for s, seed in runs if s == site and len(runs[s, seed]) == 2)
        for seed in seeds:
            pair = runs[site, seed]
            for k in (one, many):
                r = pair[k]
                paired = f"{pair[many]['fused'] / pair[one]['fused']:.3f}" if k == many else ""
                print(
                    f"| {site} | {seed} | {k} | {r['fused'] / r['best']:.3f} | "
                    f"{r['tracked'] / r['fused']:.3f} | {r['f1']:.1f} / {r['f2']:.1f} | "
                    f"{r['t1']:.1f} / {r['t2']:.1f} | {paired} |"
                )
        paired = [runs[site, s][many]["fused"] / runs[site, s][one]["fused"] for s in seeds]
        for k in (one, many):
            a = np.array(
                [[runs[site, s][k][c] for c in ("best", "fused", "tracked")] for s in seeds]
            )
            ratio = a[:, 1] / a[:, 0]
            last = f"**{np.median(paired):.3f}**" if k == many else ""
            print(
                f"| **{site}** | median of {len(seeds)} | {k} | **{np.median(ratio):.3f}** "
                f"({ratio.min():.3f}-{ratio.max():.3f}) | {np.median(a[:, 2] / a[:, 1]):.3f} "
                f"| | | {last} |"
            )


if __name__ == "__main__":
    main()
