# ruff: noqa: T201  (prints the comparison's tables)
"""`transfer-wide-2core` against `transfer-2core` on the same splits (seeds 0-2, 500 labels):
per target the seed means of each arm, then geometric means over the procedural scenes, and
the figure ``figures/width.png``.

    python3 docs/results/transfer/wide/width.py TRANSFER_2CORE_DIR WIDE_DIR [FIGURE.png]
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from training.experiments.grid import get_preset
from training.experiments.store import ResultStore

SCRATCH, MEML = "scratch", "meml-nll@corpus"
Key = tuple[str, str, int]
RUNS = get_preset("transfer-wide-2core").runs()


def load(out_dir: Path) -> dict[Key, tuple[float, float]]:
    """(target, strategy, seed) -> (test ME, test CRPS) of the wide grid's runs that
    ``out_dir`` holds (its run ids are `transfer-2core`'s too, tested)."""
    return {
        (r.run.target, r.run.strategy, r.run.fold): (r.metrics["me"], r.metrics["crps"])
        for r in ResultStore(out_dir).load(RUNS)
    }


def gmean(values: list[float]) -> float:
    return float(np.exp(np.mean(np.log(values))))


def main(base_dir: Path, wide_dir: Path, figure: Path | None) -> None:
    base, wide = load(base_dir), load(wide_dir)
    targets = sorted({k[0] for k in wide})
    ratios: dict[str, list[float]] = {k: [] for k in ("base", "wide", "scratch", "meml", "crps")}
    print("| target | scratch | MEML | MEML / scratch | wide scratch | wide MEML |", end="")
    print(" wide MEML / wide scratch | scratch: wide / paper | MEML: wide / paper |")
    print("|---|---|---|---|---|---|---|---|---|")
    for t in targets:
        seeds = [
            s
            for s in range(3)
            if all((t, a, s) in d for a in (SCRATCH, MEML) for d in (base, wide))
        ]

        def mean(d: dict[Key, tuple[float, float]], arm: str, i: int = 0) -> float:
            return float(np.mean([d[(t, arm, s)][i] for s in seeds]))  # noqa: B023

        row = {
            "base": mean(base, MEML) / mean(base, SCRATCH),
            "wide": mean(wide, MEML) / mean(wide, SCRATCH),
            "scratch": mean(wide, SCRATCH) / mean(base, SCRATCH),
            "meml": mean(wide, MEML) / mean(base, MEML),
            "crps": (mean(wide, MEML, 1) / mean(wide, SCRATCH, 1))
            / (mean(base, MEML, 1) / mean(base, SCRATCH, 1)),
        }
        for k, v in row.items():
            ratios[k].append(v)
        print(
            f"| {t} | {mean(base, SCRATCH):.2f} | {mean(base, MEML):.2f} | {row['base']:.2f} "
            f"| {mean(wide, SCRATCH):.2f} | {mean(wide, MEML):.2f} | {row['wide']:.2f} "
            f"| {row['scratch']:.2f} | {row['meml']:.2f} |"
        )
    proc = [i for i, t in enumerate(targets) if t.startswith("proc/")]
    print("\nprocedural scenes, geometric means (range, how many below 1):")
    for k, v in ratios.items():
        sel = [v[i] for i in proc]
        below = sum(x < 1 for x in sel)
        print(f"  {k}: {gmean(sel):.3f} ({min(sel):.2f}-{max(sel):.2f}, {below}/{len(sel)})")
    for s in range(3):
        pairs = [
            (
                base[(t, MEML, s)][0] / base[(t, SCRATCH, s)][0],
                wide[(t, MEML, s)][0] / wide[(t, SCRATCH, s)][0],
            )
            for t in targets
            if t.startswith("proc/")
            and all((t, a, s) in d for a in (SCRATCH, MEML) for d in (base, wide))
        ]
        paper, wider = gmean([p[0] for p in pairs]), gmean([p[1] for p in pairs])
        print(f"  seed {s}: MEML / scratch {paper:.3f} (paper width), {wider:.3f} (wide)")
    if figure is not None:
        plot(targets, ratios, figure)


def plot(targets: list[str], ratios: dict[str, list[float]], figure: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [t.replace("proc/", "").replace("/bs0", "") for t in targets]
    x = np.arange(len(targets))
    fig, ax = plt.subplots(1, 2, figsize=(12, 4.2))
    ax[0].bar(x - 0.2, ratios["base"], 0.4, label="paper width (152,640)")
    ax[0].bar(x + 0.2, ratios["wide"], 0.4, label="2x channels (401,152)")
    ax[0].axhline(0.6, color="r", ls="--", lw=0.8, label="goal 0.6")
    ax[0].set_title("MEML(corpus) / scratch of the same width, test ME, 500 labels")
    ax[1].bar(x - 0.2, ratios["scratch"], 0.4, label="scratch: wide / paper width")
    ax[1].bar(x + 0.2, ratios["meml"], 0.4, label="MEML(corpus): wide / paper width")
    ax[1].set_title("What width does to each arm, test ME")
    for a in ax:
        a.axhline(1.0, color="k", lw=0.8)
        a.set_xticks(x, names, rotation=45, ha="right")
        a.legend(fontsize=8)
        a.set_ylim(0, 1.4)
    fig.suptitle("transfer-wide-2core against transfer-2core: seeds 0-2 (means per target)")
    fig.tight_layout()
    fig.savefig(figure, dpi=110)
    print("wrote", figure)


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]) if len(sys.argv) > 3 else None)
