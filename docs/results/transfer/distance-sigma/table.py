#!/usr/bin/env python3
"""table.md and distance-sigma.png from results.jsonl (run.py's rows): per group of runs the
test NLL, CRPS and coverage with sigma's distance term (on) against the same heads without
it (off).  table.py [results.jsonl]"""

from __future__ import annotations

import collections
import json
import sys
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


def main(path: Path) -> None:
    rows = [json.loads(line) for line in path.open()]
    groups: dict[tuple[str, str, int, str], list[dict]] = collections.defaultdict(list)
    for r in rows:
        groups[group(r)].append(r)
    lines = [
        "| target | arm | labels | select | runs | test NLL on - off (median, lower in) | "
        "CRPS on / off (median) | 1 sigma off -> on (%) | 2 sigma off -> on (%) | "
        "weight (median, > 0 in) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for key in sorted(groups, key=lambda k: (k[0], k[2], k[1], k[3])):
        g = groups[key]
        d = np.array([r["on"]["nll"] - r["off"]["nll"] for r in g])
        crps = np.array([r["on"]["crps"] / r["off"]["crps"] for r in g])
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
    by_run = {(r["env"], r["seed"], r["arm"], r["labels"], r["select"]): r for r in rows}
    pairs: dict[tuple[str, int], list[tuple[dict, dict]]] = collections.defaultdict(list)
    for (env, seed, arm, labels, select), r in by_run.items():
        other = by_run.get((env, seed, arm, labels, "loss"))
        if select == "calibrated" and other is not None and arm != "scratch":
            pairs[group(r)[0], labels].append((r["on"], other["on"]))
    for (target, labels), ps in sorted(pairs.items()):
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

    keys = sorted(groups, key=lambda k: (k[0], k[2], k[1], k[3]))
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(14, 5))
    for i, key in enumerate(keys):
        d = [r["on"]["nll"] - r["off"]["nll"] for r in groups[key]]
        ax1.scatter(np.full(len(d), i) + np.linspace(-0.2, 0.2, len(d)), d, s=12)
        for r in groups[key]:
            for k, colour in (("within_1sigma", "tab:blue"), ("within_2sigma", "tab:red")):
                ax2.annotate(
                    "",
                    xy=(i + 0.15, 100 * r["on"][k]),
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


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE / "results.jsonl")
