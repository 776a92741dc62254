#!/usr/bin/env python3
"""Monotone reshaping of the head's own sigma, on ../calibrated's dumped predictions
(run.py's PRED_DIR): the per-axis likelihood factor (nll), ``a * g * (sigma / g)^p``
(power; g the validation sigmas' geometric mean) and ``sqrt(a^2 sigma^2 + b^2)`` (floor),
fitted on validation by the Gaussian NLL; power-oracle fits the power on the test set.

    reshape.py PRED_DIR
"""

from __future__ import annotations

import collections
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
from scipy.optimize import minimize

Fn = Callable[[np.ndarray], np.ndarray]


def nll(err: np.ndarray, sigma: np.ndarray) -> float:
    return float(np.mean(np.sum(0.5 * (err / sigma) ** 2 + np.log(sigma), axis=1)))


def cover(err: np.ndarray, sigma: np.ndarray) -> tuple[float, float]:
    d2 = np.sum((err / sigma) ** 2, axis=1)
    return float(np.mean(d2 <= 1)), float(np.mean(d2 <= 4))


def fit_power(err: np.ndarray, sigma: np.ndarray) -> Fn:
    g = np.exp(np.mean(np.log(sigma), axis=0))

    def shaped(p: float, s: np.ndarray) -> np.ndarray:
        return g * (s / g) ** p

    def loss(th: np.ndarray) -> float:
        s = shaped(th[0], sigma)
        return nll(err, s * np.sqrt(np.mean((err / s) ** 2, axis=0)))

    p = float(np.clip(minimize(loss, [1.0], method="Nelder-Mead").x[0], 0, 3))
    a = np.sqrt(np.mean((err / shaped(p, sigma)) ** 2, axis=0))
    return lambda s: a * shaped(p, s)


def fit_floor(err: np.ndarray, sigma: np.ndarray) -> Fn:
    best = (np.inf, 1.0, np.zeros(2))
    rms = np.sqrt(np.mean(err**2, axis=0))
    for fb in np.linspace(0, 1.0, 21):
        for la in np.linspace(-1.5, 1.5, 61):
            v = nll(err, np.sqrt((np.exp(la) * sigma) ** 2 + (fb * rms) ** 2))
            if v < best[0]:
                best = (v, np.exp(la), fb * rms)
    _, a, b = best
    return lambda s: np.sqrt((a * s) ** 2 + b**2)


def main(folder: str) -> None:
    res: dict[tuple, list] = collections.defaultdict(list)
    for f in sorted(Path(folder).glob("*.npz")):
        z = np.load(f)
        name = f.stem.split("_")
        grp = ("lab" if name[0].startswith("lab") else "scene", name[-2], name[-3], name[-1])
        ev, et = z["vp"] - z["vt"], z["tp"] - z["tt"]
        scale = np.sqrt(np.mean((ev / z["vs"]) ** 2, axis=0))
        rules: dict[str, Fn] = {
            "nll": lambda s, scale=scale: s * scale,
            "power": fit_power(ev, z["vs"]),
            "floor": fit_floor(ev, z["vs"]),
            "power-oracle": fit_power(et, z["ts"]),
        }
        for rule, fn in rules.items():
            res[(*grp, rule)].append(cover(et, fn(z["ts"])))
    for key, v in sorted(res.items()):
        a = 100 * np.array(v)
        sys.stdout.write(
            f"{key} n={len(a)} 1 sigma {a[:, 0].mean():.1f} 2 sigma {a[:, 1].mean():.1f}\n"
        )


if __name__ == "__main__":
    main(sys.argv[1])
