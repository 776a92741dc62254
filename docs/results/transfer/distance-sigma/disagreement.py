#!/usr/bin/env python3
# ruff: noqa: T201  (a study script: its output is the table)
"""A second sigma cue after the k-NN blend: the head's disagreement with its neighbours'
position, on dump.py's default-selection runs (500 labels), replayed with the product's
functions.

    disagreement.py DUMP_DIR [models|scratch]

Per run: the shipped rule (blend, distance term, per-axis likelihood factor), then two
ways of widening sigma by the disagreement ``d = |k-NN position - head position|``,
each fitted on the validation split by its Gaussian NLL: a power term
``sigma * exp(w (log(d + f) - median))`` (w in `REF_WEIGHTS`, f a tenth of the
validation median of d) and an added variance ``sqrt(sigma^2 + (b d)^2 / 2)`` (b in 0, 0.05,
..., 2). Prints each run's test NLL and 1 / 2-sigma coverage, and per group the median
NLL change and mean coverage.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

from training.calibration import REF_WEIGHTS, fit_blend, fit_distance_weight, nll_factor
from training.nets import neighbour_position, reference_neighbours


def nll(err: np.ndarray, sig: np.ndarray) -> float:
    return float(np.mean(np.sum(0.5 * (err / sig) ** 2 + np.log(sig), axis=1)) + np.log(2 * np.pi))


def coverage(err: np.ndarray, sig: np.ndarray) -> tuple[float, float]:
    d2 = np.sum((err / sig) ** 2, axis=1)
    return 100 * float(np.mean(d2 <= 1)), 100 * float(np.mean(d2 <= 4))


def profile_nll(err: np.ndarray, sig: np.ndarray) -> float:
    """NLL up to a constant with each axis at its likelihood factor."""
    return float(np.log(nll_factor(err, sig)).sum() + np.log(sig).sum(axis=1).mean())


def main(folder: str, arm: str) -> None:
    groups: dict[str, list[dict[str, tuple[float, float, float]]]] = {}
    for f in sorted(Path(folder).glob(f"*_{arm}_500_loss.npz")):
        z = {k: v.astype(np.float64) for k, v in np.load(f).items()}
        ref, ref_pos = torch.from_numpy(z["rf"]), torch.from_numpy(z["rt"])
        near, log_d = {}, {}
        for p in "vt":
            distance, index = reference_neighbours(torch.from_numpy(z[p + "f"]), ref)
            near[p] = neighbour_position(distance, index, ref_pos).numpy()
            log_d[p] = distance.mean(dim=1).log().numpy()
        share = fit_blend(z["vp"], near["v"], z["vt"])
        err = {p: z[p + "p"] + share * (near[p] - z[p + "p"]) - z[p + "t"] for p in "vt"}
        dis = {p: np.linalg.norm(near[p] - z[p + "p"], axis=1) for p in "vt"}
        w, c = fit_distance_weight(err["v"], z["vs"], log_d["v"])
        sig = {p: z[p + "s"] * np.exp(w * (log_d[p] - c))[:, None] for p in "vt"}
        floor = 0.1 * float(np.median(dis["v"])) + 1e-6
        cue = {p: np.log(dis[p] + floor) for p in "vt"}
        centre = float(np.median(cue["v"]))
        power = min(
            REF_WEIGHTS,
            key=lambda v: profile_nll(
                err["v"], sig["v"] * np.exp(v * (cue["v"] - centre))[:, None]
            ),
        )
        added = min(
            np.arange(0, 2.01, 0.05),
            key=lambda b: profile_nll(
                err["v"], np.sqrt(sig["v"] ** 2 + (b * dis["v"][:, None]) ** 2 / 2)
            ),
        )
        ways = {
            "shipped": {p: sig[p] for p in "vt"},
            "power": {p: sig[p] * np.exp(power * (cue[p] - centre))[:, None] for p in "vt"},
            "added": {p: np.sqrt(sig[p] ** 2 + (added * dis[p][:, None]) ** 2 / 2) for p in "vt"},
        }
        row = {}
        for name, s in ways.items():
            scaled = s["t"] * nll_factor(err["v"], s["v"])
            row[name] = (nll(err["t"], scaled), *coverage(err["t"], scaled))
        groups.setdefault("labs" if f.stem.startswith("lab") else "scenes", []).append(row)
        cells = " ".join(f"{k} {v[0]:.3f} {v[1]:.1f}/{v[2]:.1f}" for k, v in row.items())
        print(
            f"{f.stem}: share {share:.1f}, w {w:.2f}, power {power:.2f}, added {added:.2f}: {cells}"
        )
    for group, rows in groups.items():
        for name in ("shipped", "power", "added"):
            a = np.array([r[name] for r in rows])
            change = a[:, 0] - np.array([r["shipped"][0] for r in rows])
            print(
                f"{group} {name}: {len(a)} runs, test NLL change median {np.median(change):+.3f} "
                f"(lower in {int(np.sum(change < 0))}), 1 / 2 sigma {a[:, 1].mean():.1f} / "
                f"{a[:, 2].mean():.1f} %"
            )


if __name__ == "__main__":
    if len(sys.argv) not in (2, 3):
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2] if len(sys.argv) == 3 else "models")
