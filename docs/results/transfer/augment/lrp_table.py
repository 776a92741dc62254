#!/usr/bin/env python3
"""The plateau schedule's patience in the product (preregistered.md, that section): rows
with target `lr_patience` 9 against the product's rows with 4 on the same target-seeds,
per label budget, labs and scenes apart; the fair ratio `auto` / scratch-pd with both
values; coverage; the rule's checks (1)-(3) ((4), the time, is config_time.py's).

    python3 lrp_table.py lrp.jsonl lrp750.jsonl lrp1000.jsonl \\
        passes.jsonl scratchlab.jsonl passes750.jsonl epochs.jsonl lrp.png > lrp.md
"""

# ruff: noqa: T201
from __future__ import annotations

import statistics
import sys
from typing import Any

from passes_table import group, ratio_cell, rows

Row = dict[str, Any]
Key = tuple[str, int, str, int]  # env, seed, arm, labels
COLOURS = {"lab-los": "tab:blue", "lab-nlos": "tab:orange", "scene": "tab:green"}


def key(r: Row) -> Key:
    return (r["env"], r["seed"], r["arm"], r["labels"])


def old_rows(passes: str, scratch: str, passes750: str, epochs: str) -> dict[Key, Row]:
    """The product's rows with `lr_patience` 4: `auto` under the budget over the labels at
    500 and 750, scratch-pd at 500, `auto` at 1,000 with the 100-epoch cap."""
    out = [r for r in rows(passes) + rows(passes750) if r.get("budget") == "labelled"]
    out += rows(scratch)
    out += [r for r in rows(epochs) if r["labels"] == 1000 and "epochs" not in r]
    return {key(r): r for r in out}


def main(new_paths: list[str], old: dict[Key, Row], png: str | None) -> None:
    new = {key(r): r for path in new_paths for r in rows(path)}
    flagged = [k for k, r in new.items() if r["degenerate"]]
    print(
        "| target | seed | arm | labels | ME 4 | ME 9 | ratio | CRPS ratio | steps 9 "
        "| wall 4, 9 s |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    cells: dict[tuple[str, int, str], dict[str, list[float]]] = {}
    envs: dict[tuple[str, int, str], list[str]] = {}  # the target of each ratio, to colour it
    for k in sorted(new):
        n, o = new[k], old.get(k)
        if o is None:
            continue
        c = cells.setdefault((k[2], k[3], group(k[0])), {m: [] for m in ("me", "crps", "wall")})
        envs.setdefault((k[2], k[3], group(k[0])), []).append(k[0])
        c["me"].append(n["me"] / o["me"])
        c["crps"].append(n["crps"] / o["crps"])
        c["wall"].append(n["wall_s"] / o["wall_s"])
        print(
            f"| {k[0]} | {k[1]} | {k[2]} | {k[3]} | {o['me']:.3f} | {n['me']:.3f} "
            f"| {c['me'][-1]:.3f} | {c['crps'][-1]:.3f} | {n['steps']} "
            f"| {o['wall_s']}, {n['wall_s']} |"
        )
    print()
    print("| 9 / 4 (median [range], lower / n) | ME | CRPS | wall |")
    print("|---|---|---|---|")
    for (arm, labels, g), c in sorted(cells.items()):
        print(
            f"| {arm}, {labels} labels, {g} | {ratio_cell(c['me'])} | {ratio_cell(c['crps'])} "
            f"| {statistics.median(c['wall']):.2f} |"
        )
    print()
    for env in ("lab-los", "lab-nlos"):  # check (1): neither lab's median above 1.02
        ks = [k for k in new if k in old and k[0] == env and k[2] == "corpus" and k[3] == 500]
        ratios = [new[k]["me"] / old[k]["me"] for k in ks]
        print(f"- {env}, `auto`, 500 labels, ME 9 / 4: {ratio_cell(ratios)}")
    print()
    print("| `auto` / scratch-pd, 500 labels, ME | labs | scenes |")
    print("|---|---|---|")
    for name, src in (("lr_patience 4 (the product)", old), ("lr_patience 9", new)):
        fair: dict[str, list[float]] = {"labs": [], "scenes": []}
        for k, r in src.items():
            s = src.get((k[0], k[1], "scratch-pd", 500))
            if k[2] == "corpus" and k[3] == 500 and s is not None:
                fair[group(k[0])].append(r["me"] / s["me"])
        print(f"| {name} | {ratio_cell(fair['labs'])} | {ratio_cell(fair['scenes'])} |")
    print()
    print("| inside 1 / 2 sigma, median | lr_patience 4 | lr_patience 9 |")
    print("|---|---|---|")
    for arm, labels in sorted({(k[2], k[3]) for k in new}):
        ks = [k for k in new if k[2] == arm and k[3] == labels and k in old]
        cov = [
            " / ".join(
                f"{100 * statistics.median(src[k][c] for k in ks):.1f}" for c in ("c1", "c2")
            )
            + " %"
            for src in (old, new)
        ]
        print(f"| {arm}, {labels} labels (n {len(ks)}) | {cov[0]} | {cov[1]} |")
    print()
    print(f"Degenerate runs: {len(flagged)} {flagged if flagged else ''}".rstrip())
    if png:
        plot(cells, envs, png)


def plot(
    cells: dict[tuple[str, int, str], dict[str, list[float]]],
    envs: dict[tuple[str, int, str], list[str]],
    png: str,
) -> None:
    """The per-target-seed ME ratios, one column per (arm, labels, group), coloured by lab."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = sorted(cells)
    fig, ax = plt.subplots(figsize=(8, 3.6))
    for i, name in enumerate(names):
        values = cells[name]["me"]
        colours = [COLOURS.get(e, COLOURS["scene"]) for e in envs[name]]
        ax.scatter([i] * len(values), values, s=18, alpha=0.7, c=colours)
        ax.hlines(statistics.median(values), i - 0.3, i + 0.3, color="black")
    ax.axhline(1.0, color="grey", lw=0.8, ls="--")
    for label, colour in COLOURS.items():
        ax.scatter([], [], c=colour, s=18, label=label)
    ax.legend(fontsize=7, loc="upper right")
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels([f"{a}\n{n} labels, {g}" for a, n, g in names], fontsize=7)
    ax.set_ylabel("ME, lr_patience 9 / 4")
    ax.set_title("Target plateau schedule: halve after 10 validations, not 5 (per target-seed)")
    fig.tight_layout()
    fig.savefig(png, dpi=120)


if __name__ == "__main__":
    a = sys.argv[1:]
    main(a[:3], old_rows(*a[3:7]), a[7] if len(a) > 7 else None)
