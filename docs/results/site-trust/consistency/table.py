#!/usr/bin/env python3
# ruff: noqa: T201  (a results script: its output is the table)
"""Out of site as served (median rule + cross-BS consistency) against the median rule
alone, per site and seed, from `scripts/evaluate-site-trust ... --foreign ...` outputs.

    python3 docs/results/site-trust/consistency/table.py docs/results/site-trust/consistency
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np

ROW = re.compile(r"^\| (.+?) \| (\d+) \| (\d+) \| \*\*([\d.]+) %\*\* \| ([\d.]+) % \|")


def read(path: Path) -> dict[str, tuple[float, float]]:
    """(as served, median rule alone) per row of the out-of-site table, in %."""
    out = {}
    for line in path.read_text().splitlines():
        m = ROW.match(line)
        if m:
            out[m.group(1)] = (float(m.group(4)), float(m.group(5)))
    return out


def main() -> None:
    folder = Path(sys.argv[1])
    print(
        "| site | seed | false alarms: trajectories / never-used | foreign sets >= 95 % | "
        "lowest foreign set | mean foreign |"
    )
    print("|---|---|---|---|---|---|")
    counts: dict[str, list[tuple[int, int, int]]] = {}
    for path in sorted(folder.glob("eval-*.txt")):
        site, seed = path.stem.split("-")[1:3]
        rows = read(path)
        own = [v for k, v in rows.items() if "false alarms" in k]
        foreign = {k: v for k, v in rows.items() if "false alarms" not in k}
        served = np.array([v[0] for v in foreign.values()])
        median = np.array([v[1] for v in foreign.values()])
        low_s, low_m = int(served.argmin()), int(median.argmin())
        names = list(foreign)
        fa = " / ".join(f"{a:.1f} ({b:.1f})" for a, b in own)
        n95 = f"{(served >= 95).sum()} ({(median >= 95).sum()}) of {len(served)}"
        low = (
            f"{served[low_s]:.1f} % {names[low_s].split(':')[0]} "
            f"({median[low_m]:.1f} % {names[low_m].split(':')[0]})"
        )
        mean = f"{served.mean():.1f} ({median.mean():.1f})"
        print(f"| {site} | {seed} | {fa} | {n95} | {low} | {mean} |")
        n = ((served >= 95).sum(), (median >= 95).sum(), len(served))
        counts.setdefault(site, []).append((int(n[0]), int(n[1]), n[2]))
    print("\nforeign sets >= 95 %, summed over the seeds: as served (median rule alone)")
    for site, c in counts.items():
        a, b, total = np.sum(c, axis=0)
        print(f"- {site}: {a} ({b}) of {total} ({len(c)} seeds)")


if __name__ == "__main__":
    main()
