#!/usr/bin/env python3
# ruff: noqa: T201  (a results script: its output is the table)
"""Fused ME against the best single BS, and tracked against fused, per site and seed, from
`scripts/evaluate-site-trust` outputs named ``SITE-sSEED-all.txt`` (README.md beside
this file): the issue's ratios with every BS heard, as served.

    python3 docs/results/site-trust/seeds/ratios.py DIR ... > ratios.txt
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np

FUSED = "fused (robust_student_t, as served)"
TRACKED = "fused + tracked (noise scale 1)"


def rows(path: Path) -> dict[str, list[str]]:
    """The table rows of one evaluation, keyed by the estimate's name."""
    out = {}
    for line in path.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| ") and len(cells) == 6 and cells[1].isdigit():
            out[cells[0]] = cells
    return out


def main() -> None:
    by_site: dict[str, list[tuple[int, float, float, float, float]]] = {}
    for d in sys.argv[1:]:
        for path in sorted(Path(d).glob("*-s[0-9]-all.txt")):
            m = re.fullmatch(r"(\w+)-s(\d+)-all", path.stem)
            assert m is not None
            r = rows(path)
            best = min(float(v[2]) for k, v in r.items() if re.fullmatch(r"bs\d+ alone", k))
            fused, tracked = float(r[FUSED][2]), float(r[TRACKED][2])
            by_site.setdefault(m[1], []).append((int(m[2]), best, fused, tracked, fused / best))
    print("| site | seed | best BS ME | fused ME | fused / best | tracked ME | tracked / fused |")
    print("|---|---|---|---|---|---|---|")
    for site, runs in sorted(by_site.items()):
        for seed, best, fused, tracked, ratio in sorted(runs):
            print(
                f"| {site} | {seed} | {best:.3f} | {fused:.3f} | {ratio:.3f} | {tracked:.3f} | "
                f"{tracked / fused:.3f} |"
            )
        a = np.array([r[1:] for r in runs])
        print(
            f"| **{site}** | median of {len(runs)} | | | **{np.median(a[:, 3]):.3f}** "
            f"({a[:, 3].min():.2f}-{a[:, 3].max():.2f}) | | "
            f"**{np.median(a[:, 2] / a[:, 1]):.3f}** |"
        )


if __name__ == "__main__":
    main()
