#!/usr/bin/env python3
# ruff: noqa: T201  (a results script: its output is the table)
"""A multi-BS site adapted with and without its own unlabelled walks: per site and seed,
the trajectories' errors by estimate, their ratios, and out of site, from two folders of
`scripts/evaluate-site-trust` outputs (``eval-<site>-<seed>.txt``); a plot beside.

    python3 docs/results/site-trust/walks/table.py docs/results/site-trust/consistency \\
        docs/results/site-trust/walks [walks.png]
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np

SERVED = "fused (robust_student_t, as served)"
TRACKED = "fused + tracked (noise scale 1)"
JOINT = "joint head alone"
ERR = re.compile(
    r"^\| (.+?) \| \d+ \| ([\d.]+) \| [\d.]+ \| ([\d.]+) % \(\d+-\d+\) \| ([\d.]+) % \("
)
OOD = re.compile(r"^\| (.+?) \| (\d+) \| (\d+) \| \*\*([\d.]+) %\*\* \|")


def read(path: Path) -> tuple[dict[str, tuple[float, float, float]], dict[str, float]]:
    """(ME, 1-sigma %, 2-sigma %) per estimate; out of site as served (%) per row."""
    errors, ood = {}, {}
    for line in path.read_text().splitlines():
        if m := ERR.match(line):
            errors[m.group(1)] = (float(m.group(2)), float(m.group(3)), float(m.group(4)))
        elif m := OOD.match(line):
            ood[m.group(1)] = float(m.group(4))
    return errors, ood


def summary(path: Path) -> dict[str, float]:
    errors, ood = read(path)
    bss = [v[0] for k, v in errors.items() if re.fullmatch(r"bs\d+ alone", k)]
    foreign = [v for k, v in ood.items() if ".h5:" in k]
    alarms = [v for k, v in ood.items() if k.startswith("own")]
    return {
        "best_bs": min(bss),
        "mean_bs": float(np.mean(bss)),
        "joint": errors[JOINT][0],
        "fused": errors[SERVED][0],
        "fused_1s": errors[SERVED][1],
        "fused_2s": errors[SERVED][2],
        "tracked": errors[TRACKED][0],
        "sets": sum(v >= 95.0 for v in foreign),
        "n_sets": len(foreign),
        "fa_tracks": alarms[0],
        "fa_positions": alarms[1],
    }


def main() -> None:
    base, walks = Path(sys.argv[1]), Path(sys.argv[2])
    print(
        "| site | seed | BSs' mean ME (m) | joint head | fused as served | tracked | "
        "fused / best BS | tracked / fused | fused 1 / 2 sigma | foreign sets >= 95 % | "
        "false alarms: trajectories / never-used |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    ratios: dict[str, dict[str, list[float]]] = {}
    for path in sorted(walks.glob("eval-*.txt")):
        site, seed = path.stem.split("-")[1:3]
        before = base / path.name
        if not before.is_file():
            continue
        a, b = summary(before), summary(path)

        def pair(key: str, a: dict[str, float] = a, b: dict[str, float] = b) -> str:
            return f"{a[key]:.3f} -> **{b[key]:.3f}** ({b[key] / a[key]:.2f}x)"

        print(
            f"| {site} | {seed} | {pair('mean_bs')} | {pair('joint')} | {pair('fused')} | "
            f"{pair('tracked')} | {a['fused'] / a['best_bs']:.3f} -> "
            f"{b['fused'] / b['best_bs']:.3f} | {a['tracked'] / a['fused']:.3f} -> "
            f"{b['tracked'] / b['fused']:.3f} | {a['fused_1s']:.1f} / {a['fused_2s']:.1f} -> "
            f"{b['fused_1s']:.1f} / {b['fused_2s']:.1f} % | {a['sets']} -> {b['sets']} of "
            f"{b['n_sets']} | {a['fa_tracks']:.1f} / {a['fa_positions']:.1f} -> "
            f"{b['fa_tracks']:.1f} / {b['fa_positions']:.1f} % |"
        )
        r = ratios.setdefault(site, {})
        for key in ("mean_bs", "joint", "fused", "tracked"):
            r.setdefault(key, []).append(b[key] / a[key])
    print()
    print(
        "| site | seeds | with walks / without, median (range): BSs' mean | joint | fused "
        "| tracked |"
    )
    print("|---|---|---|---|---|---|")
    for site, r in ratios.items():
        cells = " | ".join(f"{np.median(v):.3f} ({min(v):.2f}-{max(v):.2f})" for v in r.values())
        print(f"| {site} | {len(r['fused'])} | {cells} |")
    if len(sys.argv) > 3:
        plot(ratios, Path(sys.argv[3]))


def plot(ratios: dict[str, dict[str, list[float]]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = ("mean_bs", "joint", "fused", "tracked")
    labels = ("BSs (mean)", "joint head", "fused (served)", "tracked")
    fig, ax = plt.subplots(figsize=(7, 3.6))
    width = 0.8 / len(ratios)
    for i, (site, r) in enumerate(ratios.items()):
        for j, key in enumerate(keys):
            x = j + (i - (len(ratios) - 1) / 2) * width
            ax.bar(x, np.median(r[key]), width * 0.9, color=f"C{i}", label=site if j == 0 else None)
            ax.plot([x] * len(r[key]), r[key], "k.", ms=4)
    ax.axhline(1.0, color="grey", lw=0.8)
    ax.set_xticks(range(len(keys)), labels)
    ax.set_ylim(0.7, 1.25)
    ax.set_ylabel("ME with walks / without")
    ax.set_title(
        "Unlabelled walks, three held-out multi-BS sites (bar: median, dots: seeds)", fontsize=9
    )
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=120)


if __name__ == "__main__":
    main()
