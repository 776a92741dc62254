#!/usr/bin/env python3
"""Coverage of the shipped rule (k-NN blend, distance term, per-axis likelihood factor) on
dump.py's default-selection runs, replayed with the product's functions, against the same
with the coverage factor fitted on the validation split (used only from 300 points).

    coverage.py DUMP_DIR
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

from training.calibration import fit_blend, fit_distance_weight, nll_factor
from training.fusion import coverage_factor
from training.nets import neighbour_position, reference_neighbours


def shares(d2: np.ndarray) -> tuple[float, float]:
    return float(np.mean(d2 <= 1)), float(np.mean(d2 <= 4))


def main(folder: str) -> None:
    res: dict[str, list[tuple[float, ...]]] = {}
    for f in sorted(Path(folder).glob("*models*_loss.npz")):
        z = {key: value.astype(np.float64) for key, value in np.load(f).items()}
        ref, ref_pos = torch.from_numpy(z["rf"]), torch.from_numpy(z["rt"])
        out = {}
        for part in ("v", "t"):
            distance, index = reference_neighbours(torch.from_numpy(z[part + "f"]), ref)
            nearby = neighbour_position(distance, index, ref_pos).numpy()
            out[part] = (nearby, distance.mean(dim=1).log().numpy())
        blend = fit_blend(z["vp"], out["v"][0], z["vt"])
        pos = {p: z[p + "p"] + blend * (out[p][0] - z[p + "p"]) for p in ("v", "t")}
        weight, centre = fit_distance_weight(pos["v"] - z["vt"], z["vs"], out["v"][1])
        sig = {p: z[p + "s"] * np.exp(weight * (out[p][1] - centre))[:, None] for p in ("v", "t")}
        scale = nll_factor(pos["v"] - z["vt"], sig["v"])
        d2 = {
            p: np.sum(((pos[p] - z[p + "t"]) / (sig[p] * scale)) ** 2, axis=1) for p in ("v", "t")
        }
        factor = coverage_factor(d2["v"])
        row = (*shares(d2["t"]), *shares(d2["t"] / factor), shares(d2["v"])[0])
        res.setdefault("labs" if f.stem.startswith("lab") else "scenes", []).append(row)
    for group, rows in res.items():
        a = 100 * np.array(rows)
        band = [
            int(np.sum((abs(a[:, i] - 39.3) <= 5) & (abs(a[:, i + 1] - 86.5) <= 5))) for i in (0, 2)
        ]
        sys.stdout.write(
            f"{group}: {len(a)} runs; as shipped {a[:, 0].mean():.1f} / {a[:, 1].mean():.1f} % "
            f"({band[0]} in band); coverage factor {a[:, 2].mean():.1f} / {a[:, 3].mean():.1f} % "
            f"({band[1]} in band); validation 1 sigma {a[:, 4].mean():.1f} %\n"
        )


if __name__ == "__main__":
    main(sys.argv[1])
