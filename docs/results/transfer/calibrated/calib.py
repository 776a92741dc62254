#!/usr/bin/env python3
"""Sigma as served, and with the coverage factor, on run.py's saved predictions: for
each run the factors are fitted on its validation points (raw sigma) and scored on its
test set. ``served``: the product's per-axis NLL factor (`training.calibration`, below
`fusion.COVERAGE_MIN` validation points, as in every run here); ``coverage``: then the
one factor for both axes that fits the 1- and 2-sigma shares (`fusion.coverage_factor`,
what the product adds from 300 points), applied here at 100-200 points.

    calib.py PRED_DIR > calibration.md
"""

from __future__ import annotations

import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

from training.calibration import fit_sigma_scale
from training.fusion import coverage_factor


def shares(err: np.ndarray, sigma: np.ndarray) -> tuple[float, float]:
    d2 = np.sum(np.square(err / sigma), axis=1)
    return float(np.mean(d2 <= 1.0)), float(np.mean(d2 <= 4.0))


def main(pred: Path) -> None:
    cells: dict[tuple[str, str, str, str], list[tuple[float, ...]]] = defaultdict(list)
    for f in sorted(pred.glob("*.npz")):
        z = np.load(f)
        env, _seed, arm, labels, select = f.stem.rsplit("_", 4)
        where = env if env.startswith("lab") else "scenes"
        ev, et = z["vp"] - z["vt"], z["tp"] - z["tt"]
        served = fit_sigma_scale(ev, z["vs"])
        d2 = np.sum(np.square(ev / (z["vs"] * served)), axis=1)
        cover = served * np.sqrt(coverage_factor(d2))
        radius = np.log(np.linalg.norm(et, axis=1) + 1e-9)
        spread = np.log(np.linalg.norm(z["ts"], axis=1))
        cells[(where, labels, arm, select)].append(
            (
                *shares(et, z["ts"] * served),
                *shares(et, z["ts"] * cover),
                float(np.corrcoef(radius, spread)[0, 1]),
            )
        )
    out = [
        "| target | labels | arm | selection | runs | served 1 / 2 sigma (%) "
        "| coverage factor 1 / 2 sigma (%) | corr(log error, log sigma) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for (where, labels, arm, select), v in sorted(cells.items()):
        a = 100 * np.asarray(v)
        out.append(
            f"| {where} | {labels} | {arm} | {select} | {len(a)} | {a[:, 0].mean():.1f} / "
            f"{a[:, 1].mean():.1f} | {a[:, 2].mean():.1f} / {a[:, 3].mean():.1f} "
            f"| {a[:, 4].mean() / 100:.2f} |"
        )
    sys.stdout.write("\n".join(out) + "\n")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
