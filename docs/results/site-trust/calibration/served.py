#!/usr/bin/env python3
# ruff: noqa: T201  (a results script: its output is the table)
"""Served fused and tracked coverage by the BSs heard, from `scripts/evaluate-site-trust`
outputs named ``SITE-sSEED-{all,bsK,onlyK}.txt`` (every BS heard, BS K left out, BS K
alone; README.md beside this file).

    python3 docs/results/site-trust/calibration/served.py DIR [DIR ...]
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import numpy as np

T1, T2 = 39.3, 86.5
HEARD = {"all": "every BS", "bs": "one left out", "only": "one BS alone"}
ROWS = {
    "fused": "fused (robust_student_t, as served)",
    "tracked": "fused + tracked (noise scale 1)",
}


def table(path: Path) -> dict[str, list[str]]:
    """The estimate rows of one evaluation, by name."""
    rows = {}
    for line in path.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| ") and "---" not in line and cells[0] != "estimate":
            rows[cells[0]] = cells
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dirs", nargs="+", type=Path)
    args = parser.parse_args()
    for root in args.dirs:
        cases: dict[tuple[str, str], list[tuple[float, float, float]]] = {}
        for path in sorted(root.glob("*-s*-*.txt")):
            heard = HEARD[re.sub(r"\d+$", "", path.stem.rsplit("-", 1)[1])]
            rows = table(path)
            for estimate, name in ROWS.items():
                me, c1, c2 = (rows[name][i] for i in (2, 4, 5))
                cell = (float(c1.split(" %")[0]), float(c2.split(" %")[0]), float(me))
                cases.setdefault((estimate, heard), []).append(cell)
        print(f"\n{root}\n")
        print(
            "| estimate | BSs heard | cases | ME median (m) | 1 sigma | 2 sigma | miss | in band |"
        )
        print("|---|---|---|---|---|---|---|---|")
        for (estimate, heard), got in cases.items():
            c = np.array(got)
            miss = np.abs(c[:, 0] - T1) + np.abs(c[:, 1] - T2)
            band = int(np.sum((np.abs(c[:, 0] - T1) <= 5) & (np.abs(c[:, 1] - T2) <= 5)))
            print(
                f"| {estimate} | {heard} | {len(c)} | {np.median(c[:, 2]):.3f} | "
                f"{np.median(c[:, 0]):.1f} ({c[:, 0].min():.0f}-{c[:, 0].max():.0f}) % | "
                f"{np.median(c[:, 1]):.1f} ({c[:, 1].min():.0f}-{c[:, 1].max():.0f}) % | "
                f"{miss.mean():.1f} | {band} of {len(c)} |"
            )


if __name__ == "__main__":
    main()
