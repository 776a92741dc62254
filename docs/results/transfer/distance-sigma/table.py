#!/usr/bin/env python3
"""table.md and distance-sigma.png from results.jsonl (run.py's rows): per group of runs the
test NLL, CRPS and coverage with sigma's distance term (on) against the same heads without
it (off); blend.md and blend.png from blend.jsonl (rows with the neighbour blend): error,
CRPS and coverage of the three versions, and the backbone's ratio to scratch with and
without the blend.  table.py [results.jsonl] [blend.jsonl]"""

from __future__ import annotations

import collections
import json
import sys
from collections.abc import Callable
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

HERE = Path(__file__).resolve().parent


def group(row: dict) -> tuple[str, str, int, str]:
    target = "labs" if row["env"].startswith("lab") else "8 scenes"
    arm = "backbone" if row["arm"] != "scratch" else "scratch"
    return target, arm, row["labels"], row["select"]


def read(path: Path) -> tuple[list[dict], dict[tuple[str, str, int, str], list[dict]]]:
    """The rows of a jsonl file and the rows by `group`."""
    rows = [json.loads(line) for line in path.open()]
    groups: dict[tuple[str, str, int, str], list[dict]] = collections.defaultdict(list)
    for r in rows:
        groups[group(r)].append(r)
    return rows, groups


def ordered(groups: dict) -> list:
    """The groups' keys by target, labels, arm and selection."""
    return sorted(groups, key=lambda k: (k[0], k[2], k[1], k[3]))


def paired(rows: list[dict], partner: Callable[[tuple], tuple | None]) -> dict:
    """(target group, labels) -> [(row, its partner's row)]: ``partner`` maps a run's key
    (env, seed, arm, labels, select) to its partner's key, or None for no pair."""
    by_run = {(r["env"], r["seed"], r["arm"], r["labels"], r["select"]): r for r in rows}
    pairs: dict[tuple[str, int], list[tuple[dict, dict]]] = collections.defaultdict(list)
    for key, r in by_run.items():
        other = partner(key)
        if other is not None and other in by_run:
            pairs[group(r)[0], key[3]].append((r, by_run[other]))
    return pairs


def term(row: dict) -> dict:
    """The scores with the distance term: ``term`` in rows with the blend, ``on`` before."""
    return row["term"] if "term" in row else row["on"]


def main(path: Path) -> None:
    rows, groups = read(path)
    lines = [
        "| target | arm | labels | select | runs | test NLL on - off (median, lower in) | "
        "CRPS on / off (median) | 1 sigma off -> on (%) | 2 sigma off -> on (%) | "
        "weight (median, > 0 in) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for key in ordered(groups):
        g = groups[key]
        d = np.array([term(r)["nll"] - r["off"]["nll"] for r in g])
        crps = np.array([term(r)["crps"] / r["off"]["crps"] for r in g])
        c = {
            (s, k): 100 * np.mean([r[s][k] for r in g])
            for s in ("off", "on")
            for k in ("within_1sigma", "within_2sigma")
        }
        w = np.array([r["weight"] for r in g])
        lines.append(
            f"| {key[0]} | {key[1]} | {key[2]} | {key[3]} | {len(g)} | "
            f"{np.median(d):+.3f} ({np.sum(d < 0)}/{len(g)}) | {np.median(crps):.3f} | "
            f"{c['off', 'within_1sigma']:.1f} -> {c['on', 'within_1sigma']:.1f} | "
            f"{c['off', 'within_2sigma']:.1f} -> {c['on', 'within_2sigma']:.1f} | "
            f"{np.median(w):.2f} ({np.sum(w > 0)}/{len(g)}) |"
        )
    lines += [
        "",
        "The two checkpoint selections with the term, paired by run (same split and seed):",
        "",
        "| target | labels | pairs | ME calibrated / loss (median) | CRPS (median) | "
        "NLL calibrated - loss (median) | 1 / 2 sigma, loss (%) | 1 / 2 sigma, calibrated (%) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    pairs = paired(
        rows, lambda k: (*k[:4], "loss") if k[4] == "calibrated" and k[2] != "scratch" else None
    )
    for (target, labels), runs in sorted(pairs.items()):
        ps = [(term(c), term(lo)) for c, lo in runs]
        me = np.median([c["me"] / lo["me"] for c, lo in ps])
        crps = np.median([c["crps"] / lo["crps"] for c, lo in ps])
        nll = np.median([c["nll"] - lo["nll"] for c, lo in ps])
        cov = {
            who: "{:.1f} / {:.1f}".format(
                *(100 * np.mean([p[i][k] for p in ps]) for k in ("within_1sigma", "within_2sigma"))
            )
            for i, who in ((0, "calibrated"), (1, "loss"))
        }
        lines.append(
            f"| {target} | {labels} | {len(ps)} | {me:.3f} | {crps:.3f} | {nll:+.3f} | "
            f"{cov['loss']} | {cov['calibrated']} |"
        )
    (HERE / "table.md").write_text("\n".join(lines) + "\n")
    sys.stdout.write("\n".join(lines) + "\n")

    keys = ordered(groups)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(14, 5))
    for i, key in enumerate(keys):
        d = [term(r)["nll"] - r["off"]["nll"] for r in groups[key]]
        ax1.scatter(np.full(len(d), i) + np.linspace(-0.2, 0.2, len(d)), d, s=12)
        for r in groups[key]:
            for k, colour in (("within_1sigma", "tab:blue"), ("within_2sigma", "tab:red")):
                ax2.annotate(
                    "",
                    xy=(i + 0.15, 100 * term(r)[k]),
                    xytext=(i - 0.15, 100 * r["off"][k]),
                    arrowprops={"arrowstyle": "->", "color": colour, "alpha": 0.35},
                )
    labels = [f"{k[0]}\n{k[1]} {k[2]}\n{k[3]}" for k in keys]
    for ax in (ax1, ax2):
        ax.set_xticks(range(len(keys)), labels, fontsize=7)
        ax.set_xlim(-0.6, len(keys) - 0.4)
    ax1.axhline(0, color="k", lw=0.8)
    ax1.set_ylabel("test NLL with the term - without (nats)")
    ax1.set_title("Per run: below 0 = the distance term helps", fontsize=10)
    for level in (39.3, 86.5):
        ax2.axhspan(level - 5, level + 5, color="0.9", zorder=0)
    ax2.set_ylabel("test points inside the ellipse (%)")
    ax2.set_ylim(20, 100)
    ax2.set_title("1 (blue), 2 sigma (red) coverage, without -> with; grey: goals", fontsize=10)
    fig.tight_layout()
    fig.savefig(HERE / "distance-sigma.png", dpi=110)


def blend_tables(path: Path) -> None:
    rows, groups = read(path)
    lines = [
        "| target | arm | labels | select | runs | ME blend / off (median, lower in) | "
        "ME term / off | CRPS blend / off | NLL blend - off | 1 / 2 sigma off (%) | "
        "1 / 2 sigma blend (%) | blend share (median, > 0 in) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for key in ordered(groups):
        g = groups[key]

        def ratio(a: str, b: str, score: str, g: list[dict] = g) -> np.ndarray:
            return np.array([r[a][score] / r[b][score] for r in g])

        me = ratio("blend", "off", "me")
        cov = {
            v: "{:.1f} / {:.1f}".format(
                *(100 * np.mean([r[v][k] for r in g]) for k in ("within_1sigma", "within_2sigma"))
            )
            for v in ("off", "blend")
        }
        nll = np.median([r["blend"]["nll"] - r["off"]["nll"] for r in g])
        share = np.array([r["blend_share"] for r in g])
        lines.append(
            f"| {key[0]} | {key[1]} | {key[2]} | {key[3]} | {len(g)} | "
            f"{np.median(me):.3f} ({np.sum(me < 1)}/{len(g)}) | "
            f"{np.median(ratio('term', 'off', 'me')):.3f} | "
            f"{np.median(ratio('blend', 'off', 'crps')):.3f} | {nll:+.3f} | {cov['off']} | "
            f"{cov['blend']} | {np.median(share):.1f} ({np.sum(share > 0)}/{len(g)}) |"
        )
    lines += [
        "",
        "Backbone / scratch, paired by target, seed and labels (default selection):",
        "",
        "| target | labels | pairs | ME ratio off (median) | ME ratio blend (median) | "
        "CRPS ratio off | CRPS ratio blend | backbone lower (off / blend) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    pairs = paired(
        rows,
        lambda k: (*k[:2], "scratch", *k[3:]) if k[2] != "scratch" and k[4] == "loss" else None,
    )
    figure = []
    for (target, labels), ps in sorted(pairs.items()):
        rat = {
            (v, s): np.array([b[v][s] / sc[v][s] for b, sc in ps])
            for v in ("off", "blend")
            for s in ("me", "crps")
        }
        figure.append((f"{target}\n{labels}", rat["off", "me"], rat["blend", "me"]))
        lines.append(
            f"| {target} | {labels} | {len(ps)} | {np.median(rat['off', 'me']):.3f} | "
            f"{np.median(rat['blend', 'me']):.3f} | {np.median(rat['off', 'crps']):.3f} | "
            f"{np.median(rat['blend', 'crps']):.3f} | {np.sum(rat['off', 'me'] < 1)} / "
            f"{np.sum(rat['blend', 'me'] < 1)} of {len(ps)} |"
        )
    (HERE / "blend.md").write_text("\n".join(lines) + "\n")
    sys.stdout.write("\n".join(lines) + "\n")

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for i, (_, off, blend) in enumerate(figure):
        ax.scatter(np.full(len(off), i - 0.12), off, s=14, color="tab:grey")
        ax.scatter(np.full(len(blend), i + 0.12), blend, s=14, color="tab:green")
    ax.scatter([], [], color="tab:grey", label="without the neighbour terms")
    ax.scatter([], [], color="tab:green", label="with them (as shipped)")
    ax.axhline(1.0, color="k", lw=0.8)
    ax.axhline(0.6, color="tab:red", lw=0.8, ls="--", label="goal at 500 labels")
    ax.set_xticks(range(len(figure)), [f[0] for f in figure], fontsize=8)
    ax.set_ylabel("backbone ME / scratch ME (same split)")
    ax.set_title("The shipped backbone against scratch, per run", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(HERE / "blend.png", dpi=110)


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE / "results.jsonl")
    blend_tables(Path(sys.argv[2]) if len(sys.argv) > 2 else HERE / "blend.jsonl")
