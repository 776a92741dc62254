#!/usr/bin/env python3
# ruff: noqa: T201  (a results script: its output is the table)
"""Calibration rules for the fused covariance, on the fused estimates the served site
versions gave (issue 13; README.md beside this file).

Reads ``SITE-sSEED-all.npz``, ``SITE-sSEED-bsK.npz`` (BS K left out) and
``SITE-sSEED-onlyK.npz`` (BS K alone) (`scripts/evaluate-site-trust ... --labelled
SITE.h5 [--without BS ...] --save FILE`): every UE's fused mean and
covariance before the inflation, on held-out trajectories and on the labelled file with
the adaptation's validation rows and the rows it never used. Each rule is fitted on the
82 validation UEs only, as an adaptation would fit it, and judged by the 1- and 2-sigma
coverage on the trajectories and the never-used positions, with every BS heard, one
left out, or one alone:

- ``served``: one factor s >= 1, the Gaussian maximum likelihood mean(d^2) / 2 on
  validation with every BS heard (`training.fusion.fit_inflation`), for every set of BSs;
- ``per-set``: the same, fitted on validation with the same BSs heard as the UE;
- ``coverage``: one factor chosen so the validation 1- and 2-sigma coverage are closest
  (least squares) to 39.3 % and 86.5 %;
- ``power``: a factor a * (g / median g)^p for a covariance of area g = sqrt(det C),
  fitted by likelihood: lets larger ellipses grow faster (or slower) than predicted;
- ``oracle``: one factor fitted on the very UEs it is judged on (coverage least squares):
  what any single factor could reach; the gap to 39.3 / 86.5 is the error distribution's
  shape (its tails), not the fit.

UEs that the served site flags out of site (their covariance is widened to the site's
spread; <= 0.7 % here) are left out of every row.

    python3 docs/results/site-trust/calibration/calibration.py DIR [--plot FILE.png]
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
from scipy.optimize import minimize

from training.fusion import fit_inflation, mahalanobis2

T1, T2 = 0.393, 0.865  # a calibrated 2-D Gaussian's 1- and 2-sigma coverage
BAND = 0.05
RULES = ("served", "per-set", "coverage", "power", "oracle")
HEARD = {"all": "every BS", "bs": "one left out", "only": "one BS alone"}
Scale = Callable[[np.ndarray], np.ndarray]  # covariances [N,2,2] -> factor [N]
Row = tuple[str, str, str, str, str, float, float]  # site, seed, heard, kind, rule, c1, c2


class Split:
    """One file's rows of one kind (trajectories or labelled positions)."""

    def __init__(self, z: np.lib.npyio.NpzFile, kind: str, rows: np.ndarray | None = None):
        keep = ~z[f"{kind}_widened"]
        idx = np.flatnonzero(keep) if rows is None else rows[keep[rows]]
        self.err = (z[f"{kind}_mean"] - z[f"{kind}_truth"])[idx]
        self.cov = z[f"{kind}_cov"][idx]
        self.d2 = mahalanobis2(self.err, self.cov)

    def coverage(self, scale: Scale) -> tuple[float, float]:
        d = self.d2 / scale(self.cov)
        return float(np.mean(d <= 1.0)), float(np.mean(d <= 4.0))


def area(cov: np.ndarray) -> np.ndarray:
    return np.asarray(np.sqrt(np.linalg.det(cov)))


def by_coverage(d2: np.ndarray) -> float:
    """The factor whose 1- and 2-sigma coverage of ``d2`` are closest to the targets."""
    grid = np.exp(np.linspace(-3.0, 4.0, 3501))
    miss = [(np.mean(d2 / s <= 1) - T1) ** 2 + (np.mean(d2 / s <= 4) - T2) ** 2 for s in grid]
    return float(grid[int(np.argmin(miss))])


def constant(s: float) -> Scale:
    return lambda cov: np.full(len(cov), s)


def power(val: Split) -> Scale:
    g = area(val.cov)
    ref = float(np.median(g))

    def nll(theta: np.ndarray) -> float:
        s = np.exp(theta[0]) * (g / ref) ** theta[1]
        return float(np.mean(val.d2 / s / 2 + np.log(s)))

    a, p = minimize(nll, np.zeros(2), method="Nelder-Mead").x
    return lambda cov: np.exp(a) * (area(cov) / ref) ** p


def study(root: Path) -> list[Row]:
    """(site, seed, left out, kind, rule, 1-sigma, 2-sigma) for every file under ``root``."""
    out = []
    for every in sorted(root.glob("*-all.npz")):
        site, seed = re.match(r"(.+)-s(\d+)-all", every.stem).groups()  # type: ignore[union-attr]
        files = {"all": every} | {
            p.stem.rsplit("-", 1)[1]: p
            for part in ("bs", "only")
            for p in sorted(root.glob(f"{site}-s{seed}-{part}*.npz"))
        }
        val_all = None
        for left, path in files.items():
            z = np.load(path)
            val = Split(z, "lab", z["lab_val"])
            if left == "all":
                val_all = val
            assert val_all is not None
            tests = {
                "trajectories": Split(z, "trk"),
                "never-used": Split(z, "lab", z["lab_unused"]),
            }
            for kind, test in tests.items():
                scales = {
                    "served": constant(fit_inflation(val_all.err, val_all.cov)),
                    "per-set": constant(fit_inflation(val.err, val.cov)),
                    "coverage": constant(by_coverage(val_all.d2)),
                    "power": power(val_all),
                    "oracle": constant(by_coverage(test.d2)),
                }
                for rule in RULES:
                    c1, c2 = test.coverage(scales[rule])
                    out.append((site, seed, HEARD[left.rstrip("0123456789")], kind, rule, c1, c2))
    return out


def cases(rows: list[Row], rule: str, kind: str, heard: str) -> np.ndarray:
    """[n, 2] 1- and 2-sigma coverage of one rule on one kind of UE and set of BSs."""
    return np.array([(r[5], r[6]) for r in rows if r[2:5] == (heard, kind, rule)]).reshape(-1, 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dir", type=Path)
    parser.add_argument("--plot", type=Path)
    args = parser.parse_args()
    rows = study(args.dir)
    print(
        "| rule | UEs | BSs heard | cases | 1 sigma: median (range) | 2 sigma: median (range) "
        "| mean miss (points) | both within 5 points |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for rule in RULES:
        for kind in ("trajectories", "never-used"):
            for heard in HEARD.values():
                c = cases(rows, rule, kind, heard)
                if not len(c):
                    continue
                miss = np.abs(c[:, 0] - T1) + np.abs(c[:, 1] - T2)
                both = np.sum((np.abs(c[:, 0] - T1) <= BAND) & (np.abs(c[:, 1] - T2) <= BAND))
                print(
                    f"| {rule} | {kind} | {heard} | {len(c)} | {100 * np.median(c[:, 0]):.1f} "
                    f"({100 * c[:, 0].min():.0f}-{100 * c[:, 0].max():.0f}) % | "
                    f"{100 * np.median(c[:, 1]):.1f} ({100 * c[:, 1].min():.0f}-"
                    f"{100 * c[:, 1].max():.0f}) % | {100 * miss.mean():.1f} | "
                    f"{both} of {len(c)} |"
                )
    if args.plot is not None:
        plot(rows, args.plot)


def plot(rows: list[Row], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = ("served", "per-set", "oracle")
    colours = dict(zip(shown, ("tab:blue", "tab:orange", "black"), strict=True))
    markers = dict(zip(HEARD.values(), ("o", "x", "^"), strict=True))
    fig, axes = plt.subplots(1, 2, figsize=(11, 5), sharex=True, sharey=True)
    for ax, kind in zip(axes, ("trajectories", "never-used"), strict=True):
        ax.add_patch(
            plt.Rectangle(
                (100 * (T1 - BAND), 100 * (T2 - BAND)),
                200 * BAND,
                200 * BAND,
                color="0.85",
                zorder=0,
                label="goal: within 5 points of both",
            )
        )
        for rule in shown:
            for heard, marker in markers.items():
                c = cases(rows, rule, kind, heard)
                if len(c):
                    ax.scatter(
                        100 * c[:, 0],
                        100 * c[:, 1],
                        s=20,
                        marker=marker,
                        color=colours[rule],
                        alpha=0.8,
                        label=f"{rule}: {heard}",
                    )
        ax.set_title("trajectories" if kind == "trajectories" else "never-used labelled positions")
        ax.set_xlabel("fused UEs within 1 sigma (%)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("fused UEs within 2 sigma (%)")
    axes[1].legend(fontsize=7, loc="lower right", ncol=2)
    fig.suptitle("Covariance inflation fitted on 82 validation UEs: 3 held-out sites x 3 seeds")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
