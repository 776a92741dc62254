#!/usr/bin/env python3
"""Which neighbourhood cue says how wrong a fingerprint is: on dump.py's runs, fits
``log sigma' = log sigma + b_axis + w . cues`` on validation (Gaussian NLL, BFGS) and
scores the test set. Cues against the K nearest training fingerprints in feature space:
dk (log mean feature distance), sp (log spread of their positions), dg (log distance
from the head's position to their mean).

    cues.py DUMP_DIR [K]
"""

from __future__ import annotations

import collections
import sys
from pathlib import Path

import numpy as np
from scipy.optimize import minimize

SETS = {"base": [], "dk": ["dk"], "sp": ["sp"], "dg": ["dg"], "all": ["dk", "sp", "dg"]}


def cues(feat: np.ndarray, pos: np.ndarray, ref: np.ndarray, ref_pos: np.ndarray, k: int) -> dict:
    d2 = (feat**2).sum(1)[:, None] + (ref**2).sum(1)[None] - 2 * feat @ ref.T
    idx = np.argsort(d2, axis=1)[:, :k]
    dk = np.sqrt(np.maximum(np.take_along_axis(d2, idx, 1), 1e-12)).mean(1)
    near = ref_pos[idx]
    mu = near.mean(1)
    sp = np.sqrt(((near - mu[:, None]) ** 2).sum(2).mean(1))
    dg = np.linalg.norm(pos - mu, axis=1)
    return {"dk": np.log(dk), "sp": np.log(sp + 1e-3), "dg": np.log(dg + 1e-3)}


def nll(err: np.ndarray, sigma: np.ndarray) -> float:
    return float(np.mean(np.sum(0.5 * (err / sigma) ** 2 + np.log(sigma), axis=1)))


def widened(theta: np.ndarray, sigma: np.ndarray, x: np.ndarray) -> np.ndarray:
    return sigma * np.exp(theta[:2][None] + (x @ theta[2:])[:, None])


def main(folder: str, k: int) -> None:
    res: dict[tuple, list] = collections.defaultdict(list)
    for f in sorted(Path(folder).glob("*.npz")):
        z = {key: value.astype(np.float64) for key, value in np.load(f).items()}
        name = f.stem.split("_")
        grp = ("lab" if name[0].startswith("lab") else "scene", name[-3], name[-1])
        cv = cues(z["vf"], z["vp"], z["rf"], z["rt"], k)
        ct = cues(z["tf"], z["tp"], z["rf"], z["rt"], k)
        ev, et = z["vp"] - z["vt"], z["tp"] - z["tt"]
        log_err = np.log(np.linalg.norm(et, axis=1) + 1e-6)
        for nm, cols in SETS.items():
            xv = np.stack([cv[c] for c in cols], 1) if cols else np.zeros((len(ev), 0))
            xt = np.stack([ct[c] for c in cols], 1) if cols else np.zeros((len(et), 0))
            mu = xv.mean(0)
            theta0 = np.concatenate([np.log(np.sqrt(np.mean((ev / z["vs"]) ** 2, 0))), 0 * mu])
            theta = minimize(
                lambda th, xv=xv, mu=mu, ev=ev, vs=z["vs"]: (
                    nll(ev, widened(th, vs, xv - mu)) + 0.01 * np.sum(th[2:] ** 2)
                ),
                theta0,
                method="BFGS",
            ).x
            st = widened(theta, z["ts"], xt - mu)
            d2 = np.sum((et / st) ** 2, axis=1)
            corr = np.corrcoef(log_err, np.log(np.linalg.norm(st, axis=1)))[0, 1]
            res[(*grp, nm)].append((nll(et, st), np.mean(d2 <= 1), np.mean(d2 <= 4), corr))
    for key, v in sorted(res.items()):
        a = np.array(v)
        sys.stdout.write(
            f"{key} n={len(a)} test nll {a[:, 0].mean():.3f} c1 {100 * a[:, 1].mean():.1f} "
            f"c2 {100 * a[:, 2].mean():.1f} corr(log err, log sigma) {a[:, 3].mean():.2f}\n"
        )


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 5)
