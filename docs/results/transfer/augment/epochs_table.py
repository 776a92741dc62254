#!/usr/bin/env python3
"""The epoch-cap study's tables and plot (preregistered.md, "The epoch cap"): `auto` and
the fair scratch with `epochs` 200 against 100, per target-seed, median [range]
(lower / n) per group, which runs reached either cap, and the pre-registered rule.

    python3 epochs_table.py epochs.jsonl passes.jsonl scratchlab.jsonl epochs.png > epochs.md

At 500 labels the `epochs` 100 rows are passes.jsonl's ``labelled`` rows (`auto`, the
product's budget) and scratchlab.jsonl (scratch-pd); at 1,000 labels both caps are in
epochs.jsonl.
"""

# ruff: noqa: T201
from __future__ import annotations

import math
import statistics
import sys
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from passes_table import ratio_cell as cell
from passes_table import rows

from training.config import TrainConfig

Row = dict[str, Any]
Key = tuple[str, int]


def cap(labels: int, epochs: int) -> int:
    """The step cap of a phase: the product's budget over the 80 % of the labels that train."""
    return TrainConfig(epochs=epochs).budget(round(labels * 0.8)).max_steps


def at_cap(r: Row, epochs: int) -> bool:
    return max(r["steps"].values()) >= cap(r["labels"], epochs)


def steps(r: Row) -> str:
    return "+".join(str(v) for v in r["steps"].values())


def groups(env: str) -> list[str]:
    return ["labs", env] if env.startswith("lab-") else ["scenes"]


def pair_table(
    title: str, old: dict[Key, Row], new: dict[Key, Row]
) -> dict[str, dict[str, list[float]]]:
    """Print one arm's per-target-seed rows; return its ratios by group."""
    out: dict[str, dict[str, list[float]]] = {}
    print(f"### {title}\n")
    print(
        "| target | seed | ME e100 | ME e200 | ratio | CRPS ratio | chosen (e100, e200) "
        "| steps e100 | steps e200 | wall s (e100, e200) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for key in sorted(new):
        a, b = old.get(key), new[key]
        if a is None:
            continue
        r_me, r_crps = b["me"] / a["me"], b["crps"] / a["crps"]
        for g in groups(key[0]):
            d = out.setdefault(g, {"me": [], "crps": []})
            d["me"].append(r_me)
            d["crps"].append(r_crps)
        flag_a = " (cap)" if at_cap(a, 100) else ""
        flag_b = " (cap)" if at_cap(b, 200) else ""
        print(
            f"| {key[0]} | {key[1]} | {a['me']:.3f} | {b['me']:.3f} | {r_me:.3f} "
            f"| {r_crps:.3f} | {a['chosen']}, {b['chosen']} | {steps(a)}{flag_a} "
            f"| {steps(b)}{flag_b} | {a['wall_s']}, {b['wall_s']} |"
        )
    print()
    print("| e200 / e100 | ME | CRPS |")
    print("|---|---|---|")
    for g in ("labs", "lab-los", "lab-nlos", "scenes"):
        if g in out:
            print(f"| {g} | {cell(out[g]['me'])} | {cell(out[g]['crps'])} |")
    n_cap = sum(at_cap(r, 100) for k, r in old.items() if k in new)
    n_cap2 = sum(at_cap(r, 200) for r in new.values())
    print(f"\nAt the cap: {n_cap} of {len(new)} runs with 100, {n_cap2} with 200.\n")
    return out


def fair(auto: dict[Key, Row], scratch: dict[Key, Row]) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {}
    for key, a in auto.items():
        if key in scratch:
            for g in groups(key[0]):
                out.setdefault(g, []).append(a["me"] / scratch[key]["me"])
    return out


def main(epochs_path: str, passes: str, scratchlab: str, png: str) -> None:
    new = rows(epochs_path)

    def pick(rs: list[Row], labels: int, arm: str, epochs: int | None) -> dict[Key, Row]:
        return {
            (r["env"], r["seed"]): r
            for r in rs
            if r["labels"] == labels and r["arm"] == arm and r.get("epochs") == epochs
        }

    auto100 = {(r["env"], r["seed"]): r for r in rows(passes) if r.get("budget") == "labelled"}
    auto200 = pick(new, 500, "corpus", 200)
    scratch100 = {(r["env"], r["seed"]): r for r in rows(scratchlab)}
    scratch200 = pick(new, 500, "scratch-pd", 200)
    k100 = pick(new, 1000, "corpus", None)  # 100 is the default: the row carries no epochs
    k200 = pick(new, 1000, "corpus", 200)

    print("## 500 labels\n")
    a = pair_table("`auto` (corpus backbone, 3 copies)", auto100, auto200)
    s = pair_table("scratch-pd (fine-tuned, 3 copies)", scratch100, scratch200)
    f100, f200 = fair(auto100, scratch100), fair(auto200, scratch200)
    print("### The fair ratio, `auto` / scratch-pd ME\n")
    print("| group | both at 100 | both at 200 |")
    print("|---|---|---|")
    for g in ("labs", "lab-los", "lab-nlos", "scenes"):
        if g in f200:
            print(f"| {g} | {cell(f100.get(g, []))} | {cell(f200[g])} |")
    print("\n## 1,000 labels (no copies)\n")
    k = pair_table("`auto` (corpus backbone)", k100, k200)

    def med(d: dict[str, dict[str, list[float]]], g: str, m: str = "me") -> float:
        return statistics.median(d[g][m]) if g in d and d[g][m] else math.nan

    checks = {
        "(a) ME <= 1.00 on the labs and the scenes, <= 1.02 on each lab": med(a, "labs") <= 1.0
        and med(a, "scenes") <= 1.0
        and med(a, "lab-los") <= 1.02
        and med(a, "lab-nlos") <= 1.02,
        "(b) CRPS <= 1.01 on the labs and the scenes": med(a, "labs", "crps") <= 1.01
        and med(a, "scenes", "crps") <= 1.01,
        "(c) 1,000 labels ME <= 1.02": med(k, "labs") <= 1.02,
    }
    print("## The rule ((d), the time, is bench/adapt_time.py's)\n")
    for name, ok in checks.items():
        print(f"- {name}: {'yes' if ok else 'no'}")

    fig, ax = plt.subplots(figsize=(7, 3.6))
    series = [("auto, 500", a), ("scratch-pd, 500", s), ("auto, 1,000", k)]
    for i, (_name, d) in enumerate(series):
        for j, g in enumerate(("lab-los", "lab-nlos", "scenes")):
            vals = d.get(g, {"me": []})["me"]
            x = [i * 4 + j + (n - len(vals) / 2) * 0.05 for n in range(len(vals))]
            ax.scatter(x, vals, s=14, color=f"C{j}", label=g if i == 0 else None)
    ax.axhline(1.0, color="grey", lw=0.8)
    ax.set_xticks([1, 5, 9], [n for n, _ in series])
    ax.set_ylabel("ME, epochs 200 / 100")
    ax.set_title("The epoch cap: each target-seed's error ratio")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png, dpi=120)


if __name__ == "__main__":
    main(*sys.argv[1:5])
