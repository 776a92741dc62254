#!/usr/bin/env python3
# ruff: noqa: T201  (a command-line script: its output is the lines and the table)
"""The tracker's adaptive noise scale (preregistered.md beside this file).

One served multi-BS version, its labelled upload and its held-out trajectories
(../error-length/study.py's `served`): the fused estimates as served, filtered with the
shipped tracker (`TrackerConfig.for_site` at the version's label spacing) and with the
adaptive noise scale added (``noise_time_s`` 10 s). One JSON line per version; ``table``
writes the per-site medians, the rule's checks and a figure.

    python3 study.py track REPO SITE LABELLED.h5 TRACKS.h5 >> track.jsonl
    python3 study.py table track.jsonl [noise-scale.png]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
from pathlib import Path
from typing import Any

from training.tracking import TrackerConfig

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "error-length"))
from study import Served, filtered, fused_summary, served  # noqa: E402  (the error-length study's loader)

CANDIDATE = {"noise_time_s": 10.0, "noise_scale_max": 4.0}
"""Fixed in preregistered.md before any run."""
ARMS = ("shipped", "adaptive")
NOMINAL = (0.393, 0.865)


def tracked(s: Served) -> dict[str, Any]:
    shipped = TrackerConfig().for_site(s.spacing)
    adaptive = dataclasses.replace(shipped, **CANDIDATE)
    return {
        "site": s.site,
        "seed": s.seed,
        "fused": fused_summary(s),
        "shipped": filtered(s, shipped),
        "adaptive": filtered(s, adaptive),
    }


def table(path: str, png: str | None) -> None:
    rows = [json.loads(x) for x in Path(path).read_text().splitlines() if x.strip()]
    sites = sorted({r["site"] for r in rows})
    # the seeds every site has (preregistered.md: the same seeds on every site)
    common = set.intersection(*({r["seed"] for r in rows if r["site"] == s} for s in sites))
    rows = [r for r in rows if r["seed"] in common]
    print(
        "| site | seeds | arm | tracked / fused ME | in 1 sigma | in 2 sigma | gated "
        "| restarts | final scale (median, range) |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    checks: dict[str, list[bool]] = {"(1)": [], "(2)": [], "(3)": []}
    med: dict[tuple[str, str], tuple[float, float]] = {}
    for site in sites:
        rs = [r for r in rows if r["site"] == site]
        seeds = ",".join(str(r["seed"]) for r in sorted(rs, key=lambda r: r["seed"]))
        f1 = statistics.median(r["fused"]["within_1sigma"] for r in rs)
        f2 = statistics.median(r["fused"]["within_2sigma"] for r in rs)
        print(f"| {site} | {seeds} | fused input | 1 | {100 * f1:.1f} % | {100 * f2:.1f} % | | | |")
        for arm in ARMS:
            c1 = statistics.median(r[arm]["within_1sigma"] for r in rs)
            c2 = statistics.median(r[arm]["within_2sigma"] for r in rs)
            med[(site, arm)] = (c1, c2)
            ratio = statistics.median(r[arm]["me_over_fused"] for r in rs)
            gated = statistics.median(r[arm]["gated"] for r in rs)
            restarts = statistics.median(r[arm]["restarts"] for r in rs)
            fs = [x for r in rs for x in r[arm].get("final_scales", [])]
            scale = f"{statistics.median(fs):.2f} ({min(fs):.2f}-{max(fs):.2f})" if fs else ""
            print(
                f"| {site} | {seeds} | {arm} | {ratio:.3f} | {100 * c1:.1f} % | {100 * c2:.1f} % "
                f"| {100 * gated:.1f} % | {restarts:g} | {scale} |"
            )
        (s1, s2), (a1, a2) = med[(site, "shipped")], med[(site, "adaptive")]
        paired = statistics.median(r["adaptive"]["me_m"] / r["shipped"]["me_m"] for r in rs)
        checks["(1)"].append(abs(a2 - NOMINAL[1]) < abs(s2 - NOMINAL[1]))
        checks["(2)"].append(
            abs(a1 - NOMINAL[0]) <= 0.05 or abs(a1 - NOMINAL[0]) <= abs(s1 - NOMINAL[0])
        )
        checks["(3)"].append(paired <= 1.02)
        print(f"| {site} | | adaptive / shipped ME, paired | {paired:.3f} | | | | | |")
    print()
    names = {
        "(1)": "2 sigma nearer 86.5 % on every site",
        "(2)": "1 sigma within 5 points or no farther on every site",
        "(3)": "paired ME <= 1.02x on every site",
    }
    for k, ok in checks.items():
        print(f"- {k} {names[k]}: {'yes' if all(ok) else 'no'} ({sum(ok)} of {len(ok)} sites)")
    if png:
        plot(sites, med, png)


def plot(sites: list[str], med: dict[tuple[str, str], tuple[float, float]], png: str) -> None:
    """Median 1 / 2-sigma coverage per site and arm against the nominal band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    band = plt.Rectangle(
        (100 * NOMINAL[0] - 5, 100 * NOMINAL[1] - 5), 10, 10, color="0.9", label="within 5 points"
    )
    ax.add_patch(band)
    for site in sites:
        (s1, s2), (a1, a2) = med[(site, "shipped")], med[(site, "adaptive")]
        ax.plot(100 * s1, 100 * s2, "o", color="tab:blue")
        ax.plot(100 * a1, 100 * a2, "x", color="tab:orange")
        ax.annotate("", (100 * a1, 100 * a2), (100 * s1, 100 * s2), arrowprops={"arrowstyle": "->"})
        ax.text(100 * s1, 100 * s2, f" {site}", fontsize=8, va="top")
    ax.plot(100 * NOMINAL[0], 100 * NOMINAL[1], "k+", label="nominal")
    ax.plot([], [], "o", color="tab:blue", label="shipped")
    ax.plot([], [], "x", color="tab:orange", label="adaptive scale")
    ax.set_xlim(30, 50)
    ax.set_ylim(70, 92)
    ax.legend(fontsize=7, loc="lower right")
    ax.set_xlabel("tracked, inside 1 sigma (%)")
    ax.set_ylabel("tracked, inside 2 sigma (%)")
    ax.set_title("Adaptive noise scale: shipped -> adaptive (median over seeds)")
    fig.tight_layout()
    fig.savefig(png, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("command", choices=["track", "table"])
    parser.add_argument("args", nargs="+")
    a = parser.parse_args()
    if a.command == "track":
        repo, site, labelled, tracks = a.args
        print(json.dumps(tracked(served(repo, site, Path(labelled), Path(tracks)))))
    else:
        table(a.args[0], a.args[1] if len(a.args) > 1 else None)


if __name__ == "__main__":
    main()
