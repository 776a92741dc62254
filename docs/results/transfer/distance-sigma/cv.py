#!/usr/bin/env python3
"""The distance term's weight chosen in-sample (`fit_distance_weight`, as shipped) against
5-fold cross-validation on the validation split, on dump.py's runs: test NLL change over
the per-axis factor alone, and 1-sigma coverage.

    cv.py DUMP_DIR
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

from training.calibration import REF_WEIGHTS, fit_distance_weight, nll_factor
from training.nets import log_reference_distance


def nll(err: np.ndarray, sigma: np.ndarray) -> float:
    return float(np.mean(np.sum(0.5 * (err / sigma) ** 2 + np.log(sigma), axis=1)))


def cv_weight(err: np.ndarray, sigma: np.ndarray, log_d: np.ndarray) -> tuple[float, float]:
    fold = np.random.default_rng(0).permutation(len(err)) % 5
    centre = float(np.median(log_d))
    best, chosen = np.inf, 0.0
    for weight in REF_WEIGHTS:
        widened = sigma * np.exp(weight * (log_d - centre))[:, None]
        total = 0.0
        for k in range(5):
            fit, held = fold != k, fold == k
            total += held.sum() * nll(err[held], widened[held] * nll_factor(err[fit], widened[fit]))
        if total < best - 1e-12:
            best, chosen = total, weight
    return chosen, centre


def main(folder: str) -> None:
    rows = []
    for f in sorted(Path(folder).glob("*models*.npz")):
        z = {key: value.astype(np.float64) for key, value in np.load(f).items()}
        ref = torch.from_numpy(z["rf"])
        lv = log_reference_distance(torch.from_numpy(z["vf"]), ref).numpy()
        lt = log_reference_distance(torch.from_numpy(z["tf"]), ref).numpy()
        ev, et = z["vp"] - z["vt"], z["tp"] - z["tt"]
        base = nll(et, z["ts"] * nll_factor(ev, z["vs"]))
        row = []
        for rule in (fit_distance_weight, cv_weight):
            weight, centre = rule(ev, z["vs"], lv)
            scale = nll_factor(ev, z["vs"] * np.exp(weight * (lv - centre))[:, None])
            st = z["ts"] * np.exp(weight * (lt - centre))[:, None] * scale
            row += [weight, nll(et, st) - base, np.mean(np.sum((et / st) ** 2, axis=1) <= 1)]
        rows.append(row)
        sys.stdout.write(f"{f.stem:42s} in-sample w {row[0]:.2f} dNLL {row[1]:+.3f} | ")
        sys.stdout.write(f"cv w {row[3]:.2f} dNLL {row[4]:+.3f}\n")
    a = np.array(rows)
    sys.stdout.write(
        f"median dNLL in-sample {np.median(a[:, 1]):+.3f}, cv {np.median(a[:, 4]):+.3f}; "
        f"1 sigma {100 * a[:, 2].mean():.1f} / {100 * a[:, 5].mean():.1f} %\n"
    )


if __name__ == "__main__":
    main(sys.argv[1])
