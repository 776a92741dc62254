# ruff: noqa: T201  (prints the comparison's tables)
"""`transfer-big-2core` beside `transfer-nb-2core` on the same splits (seeds 0-2, 500
labels, the 8 held-out procedural scenes): MEML / scratch per N_B, the big corpus's
scratch checked against the N_B grid's (the same runs, re-trained on re-simulated data),
and the figure ``figures/scale.png`` (ratio against N_B). Every ratio is over the N_B
grid's scratch (the runs MEML 8/24/55 were compared with); one more row divides by the
re-trained scratch of this grid.

    python3 docs/results/transfer/big/scale.py NB_RESULTS.csv BIG_DIR [FIGURE.png [PRESET]]

NB_RESULTS.csv is `docs/results/transfer/nb/results.csv` (one row per run); BIG_DIR the
`csipos experiment --preset transfer-big-2core` directory. PRESET: another cut paired
the same way (`transfer-many-2core`: its one MEML arm, on the seeds it ran).
"""

from __future__ import annotations

import csv
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from training.experiments.grid import get_preset
from training.experiments.store import ResultStore

NB_ARMS = {"meml-nll@corpus8": 8, "meml-nll@corpus24": 24, "meml-nll@corpus": 55}
Key = tuple[str, str, int]


@dataclass(frozen=True)
class Cut:
    """The paired cut compared with the N_B grid: its preset, its seeds, its one MEML arm."""

    preset: str
    seeds: tuple[int, ...]
    arm: str

    @classmethod
    def of(cls, name: str) -> Cut:
        preset = get_preset(name)
        (source_set,) = preset.source_sets
        return cls(name, preset.folds, f"meml-nll@{source_set.name}")


def load_nb(path: Path, seeds: tuple[int, ...]) -> dict[Key, float]:
    """(target, strategy, seed) -> test ME of the N_B grid's procedural runs."""
    with path.open() as f:
        return {
            (r["target"], r["strategy"], int(r["fold"])): float(r["me"])
            for r in csv.DictReader(f)
            if r["target"].startswith("proc/") and int(r["fold"]) in seeds
        }


def load_big(out_dir: Path, cut: Cut) -> tuple[dict[Key, float], list[str]]:
    """The big grid's runs (test ME) and which of them were flagged degenerate."""
    results = ResultStore(out_dir).load(get_preset(cut.preset).runs())
    me = {(r.run.target, r.run.strategy, r.run.fold): r.metrics["me"] for r in results}
    degenerate = [r.run.id for r in results if r.metrics.get("degenerate")]
    return me, degenerate


def gmean(values: list[float]) -> float:
    return float(np.exp(np.mean(np.log(values))))


def ratio(
    d: dict[Key, float], arm: str, scratch: dict[Key, float], seeds: tuple[int, ...]
) -> list[float]:
    """Per target: the seed mean of ``arm`` over the seed mean of scratch."""
    targets = sorted({k[0] for k in scratch})
    return [
        float(np.mean([d[(t, arm, s)] for s in seeds]))
        / float(np.mean([scratch[(t, "scratch", s)] for s in seeds]))
        for t in targets
    ]


def main(nb_csv: Path, big_dir: Path, figure: Path | None, cut: Cut) -> None:
    big_arm, run_seeds = cut.arm, cut.seeds
    nb = load_nb(nb_csv, run_seeds)
    big, degenerate = load_big(big_dir, cut)
    source = json.loads((big_dir / "sources" / big_arm / "source.json").read_text())
    n_big = len(source["envs"])
    scratch_nb = {k: v for k, v in nb.items() if k[1] == "scratch"}
    scratch_big = {k: v for k, v in big.items() if k[1] == "scratch"}
    shared = sorted(set(scratch_nb) & set(scratch_big))
    diff = max(abs(scratch_nb[k] - scratch_big[k]) for k in shared)
    same = sum(abs(scratch_nb[k] - scratch_big[k]) < 1e-3 for k in shared)
    print(
        f"scratch runs in both grids: {len(shared)}; {same} within 1 mm; "
        f"largest |ME difference| {diff:.2f} m"
    )
    steps = sum(source["steps"].values())
    print(f"big corpus: {n_big} environments, {steps} steps, {source['wall_s']:.0f} s")
    print(f"degenerate runs in the big grid: {len(degenerate)} {degenerate}\n")

    arms = {**{a: (n, nb) for a, n in NB_ARMS.items()}, big_arm: (n_big, big)}
    targets = sorted({k[0] for k in scratch_big})
    print("| arm | N_B | MEML / scratch (geometric mean of 8 scenes) | range | better | per seed |")
    print("|---|---|---|---|---|---|")
    points = []
    for arm, (n, d) in arms.items():
        r = ratio(d, arm, scratch_nb, run_seeds)
        seeds = [gmean(ratio(d, arm, scratch_nb, (s,))) for s in run_seeds]
        per_seed = " / ".join(f"{v:.2f}" for v in seeds)
        below = sum(x < 1 for x in r)
        print(
            f"| {arm} | {n} | {gmean(r):.3f} | {min(r):.2f}-{max(r):.2f} | {below}/{len(r)} "
            f"| {per_seed} |"
        )
        points.append((n, gmean(r), min(seeds), max(seeds), arm))
    own = ratio(big, big_arm, scratch_big, run_seeds)
    print(
        f"| {big_arm} / this grid's scratch | {n_big} | {gmean(own):.3f} | "
        f"{min(own):.2f}-{max(own):.2f} | {sum(x < 1 for x in own)}/{len(own)} | |"
    )
    paired = [
        big[(t, big_arm, s)] / nb[(t, "meml-nll@corpus", s)] for t in targets for s in run_seeds
    ]
    better = sum(x < 1 for x in paired)
    print(
        f"\nbig / 55-environment MEML, paired over {len(paired)} scene-seeds: "
        f"{gmean(paired):.3f} (median {np.median(paired):.2f}, "
        f"{min(paired):.2f}-{max(paired):.2f}, {better} better)"
    )
    print("\n| scene | scratch | MEML 55 | MEML big | big / 55 |\n|---|---|---|---|---|")
    for t in targets:
        s = np.mean([scratch_nb[(t, "scratch", i)] for i in run_seeds])
        a = np.mean([nb[(t, "meml-nll@corpus", i)] for i in run_seeds])
        b = np.mean([big[(t, big_arm, i)] for i in run_seeds])
        print(f"| {t} | {s:.2f} | {a:.2f} | {b:.2f} | {b / a:.2f} |")
    if figure is not None:
        plot(points, figure, cut)


def plot(points: list[tuple[int, float, float, float, str]], figure: Path, cut: Cut) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    same = [p for p in points if p[4] != cut.arm]
    ax.plot([p[0] for p in same], [p[1] for p in same], "o-", label="1,200 source steps")
    for n, _m, lo, hi, arm in points:
        ax.vlines(n, lo, hi, color="C1" if arm == cut.arm else "C0", alpha=0.5)
    big = [p for p in points if p[4] == cut.arm]
    ax.plot(
        [p[0] for p in big],
        [p[1] for p in big],
        "s",
        color="C1",
        label="48 scenes, budget 2,400 steps" if cut.preset == "transfer-big-2core" else cut.preset,
    )
    ax.axhline(0.6, ls="--", color="grey", lw=1, label="goal (0.6)")
    ax.axhline(1.0, color="black", lw=0.6)
    ax.set_xscale("log")
    ax.set_xlabel("source environments N_B")
    ax.set_ylabel("MEML / scratch ME (8 held-out scenes)")
    ax.set_title(f"500 labels, seeds {cut.seeds[0]}-{cut.seeds[-1]} (bars: per-seed range)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    figure.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(figure, dpi=130)
    print(f"\nwrote {figure}")


if __name__ == "__main__":
    main(
        Path(sys.argv[1]),
        Path(sys.argv[2]),
        Path(sys.argv[3]) if len(sys.argv) > 3 else None,
        Cut.of(sys.argv[4] if len(sys.argv) > 4 else "transfer-big-2core"),
    )
