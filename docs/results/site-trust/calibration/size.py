#!/usr/bin/env python3
# ruff: noqa: T201  (a results script: its output is the table)
"""How many validation points, and which rule, calibrate the fused covariance (issue 13;
README.md beside this file, "How many points").

Reads the same ``--save`` files as ``calibration.py`` (every UE's served fusion before
the inflation, 9 site-seeds x every BS / one left out / one alone). Two questions:

1. **Independent positions.** A factor fitted on n labelled positions the adaptation
   never used (drawn at random, 30 draws a case), judged on the other never-used
   positions: the same distribution as a validation split, n from the 82 of today's
   splits to 400. Rules: ``likelihood`` (mean(d^2) / 2 >= 1, `fit_inflation` below
   `COVERAGE_MIN` points) and ``coverage`` (`training.fusion.coverage_factor`, what
   `fit_inflation` uses from `COVERAGE_MIN` points).
2. **Trajectories.** Each rule fitted on the 82 validation UEs and on every never-used
   position (~1,100), judged on the trajectories; and (3.) the trajectories' error
   against the never-used positions', also where the trajectories go (the 5 nearest).

UEs flagged out of site (covariance widened to the site's spread) are left out.

    python3 docs/results/site-trust/calibration/size.py DIR > size.txt
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
from scipy.spatial import cKDTree  # type: ignore[import-untyped]

from training.fusion import NOMINAL, coverage_factor, mahalanobis2

DRAWS = 30
SIZES = (82, 164, 246, 400)
HEARD = {"all": "every BS", "bs": "one left out", "only": "one BS alone"}
Rule = Callable[[np.ndarray], float]
RULES: dict[str, Rule] = {
    "likelihood": lambda d2: max(1.0, float(np.mean(d2)) / 2.0),
    "coverage": coverage_factor,
}


def shares(d2: np.ndarray, s: float) -> tuple[float, float]:
    return float(np.mean(d2 / s <= 1.0)), float(np.mean(d2 / s <= 4.0))


def in_band(c: tuple[float, float]) -> bool:
    return all(abs(got - share) <= 0.05 for got, (_, share) in zip(c, NOMINAL, strict=True))


def rows(z: np.lib.npyio.NpzFile, kind: str, idx: np.ndarray | None = None) -> np.ndarray:
    """Squared Mahalanobis distances of one kind's UEs (``idx``: those rows only)."""
    keep = ~z[f"{kind}_widened"]
    pick = np.flatnonzero(keep) if idx is None else idx[keep[idx]]
    err = (z[f"{kind}_mean"] - z[f"{kind}_truth"])[pick]
    return np.asarray(mahalanobis2(err, z[f"{kind}_cov"][pick]))


def errors(z: np.lib.npyio.NpzFile, kind: str, idx: np.ndarray | None = None) -> np.ndarray:
    pick = slice(None) if idx is None else idx
    return np.asarray(np.linalg.norm((z[f"{kind}_mean"] - z[f"{kind}_truth"])[pick], axis=1))


def near_error(z: np.lib.npyio.NpzFile, k: int = 5) -> float:
    """The never-used positions' error where the trajectories go: each trajectory sample
    stands for the mean error of its k nearest never-used positions."""
    unused = z["lab_unused"]
    _, nearest = cKDTree(z["lab_truth"][unused]).query(z["trk_truth"], k=k)
    return float(errors(z, "lab", unused)[nearest].mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dir", type=Path)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    # per heard-kind, per row name: one (in band share, 1 sigma, 2 sigma) per case
    independent: dict[str, dict[str, list[np.ndarray]]] = {h: {} for h in HEARD}
    trajectories: dict[str, dict[str, list[np.ndarray]]] = {h: {} for h in HEARD}
    shift: list[tuple[str, float, float, float, float]] = []
    for path in sorted(args.dir.glob("*.npz")):
        heard = re.sub(r"\d+$", "", path.stem.split("-")[-1])
        z = np.load(path)
        unused = rows(z, "lab", z["lab_unused"])
        val, trk = rows(z, "lab", z["lab_val"]), rows(z, "trk")
        for name, rule in RULES.items():
            for n in SIZES:
                got = []
                for _ in range(DRAWS):
                    order = rng.permutation(len(unused))
                    c = shares(unused[order[n:]], rule(unused[order[:n]]))
                    got.append((in_band(c), *c))
                independent[heard].setdefault(f"{name}, n = {n}", []).append(np.mean(got, axis=0))
            for fit_on, d2 in (("82 validation UEs", val), ("every never-used position", unused)):
                c = shares(trk, rule(d2))
                trajectories[heard].setdefault(f"{name} on {fit_on}", []).append(
                    np.array([in_band(c), *c])
                )
        if heard == "all":
            me_trk, me_unused = errors(z, "trk").mean(), errors(z, "lab", z["lab_unused"]).mean()
            d2_ratio = float(np.median(trk) / np.median(unused))
            shift.append((path.stem, me_trk, me_unused, near_error(z), d2_ratio))

    for title, table in (
        ("1. Fitted on n never-used positions, judged on the other never-used ones", independent),
        ("2. Judged on the trajectories", trajectories),
    ):
        print(f"## {title}\n")
        print("median over cases; in band: cases with both within 5 points (mean over draws)\n")
        print("| BSs heard | rule | 1 sigma | 2 sigma | in band |")
        print("|---|---|---|---|---|")
        for heard, by_row in table.items():
            for name, cases in by_row.items():
                a = np.array(cases)
                print(
                    f"| {HEARD[heard]} | {name} | {100 * np.median(a[:, 1]):.1f} % | "
                    f"{100 * np.median(a[:, 2]):.1f} % | {a[:, 0].sum():.1f} of {len(a)} |"
                )
        print()
    print("## 3. Trajectories against never-used positions (every BS heard)\n")
    print(
        "| version | fused ME, trajectories | never-used positions | ratio | never-used "
        "nearest the trajectories | median d^2, trajectories / never-used |"
    )
    print("|---|---|---|---|---|---|")
    for name, me_trk, me_unused, me_near, d2_ratio in shift:
        print(
            f"| {name} | {me_trk:.2f} m | {me_unused:.2f} m | {me_trk / me_unused:.2f} | "
            f"{me_near:.2f} m | {d2_ratio:.2f} |"
        )


if __name__ == "__main__":
    main()
