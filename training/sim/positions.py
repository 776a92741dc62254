"""Where the UEs stand: uniform over a scene's UE area, never inside an obstacle."""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

from training.sim.scene import SceneSpec


def sample_ue_positions(
    spec: SceneSpec,
    n: int,
    rng: np.random.Generator,
    *,
    height_jitter_std_m: float = 0.0,
) -> npt.NDArray[np.float64]:
    """`n` UE positions [n, 3] drawn uniformly over the UE area, rejecting blocked spots.

    UEs inside a metal cuboid would get exactly zero CSI, so positions closer than
    `spec.clearance` to an obstacle or wall (or outside the area's polygons) are
    redrawn. The height spread combines `height_jitter_std_m` and the area's own
    `height_jitter` (independent Gaussians). Draws in fixed-size rounds from `rng`, so
    the same generator state gives the same positions.
    """
    if n < 1:
        raise ValueError(f"n: expected at least one position, got {n}")
    if height_jitter_std_m < 0:
        raise ValueError(f"height_jitter_std_m: expected >= 0, got {height_jitter_std_m}")
    area = spec.ue_area
    jitter = math.hypot(height_jitter_std_m, area.height_jitter)
    z_lo, z_hi = 0.1, spec.size[2] - 0.1
    found: list[npt.NDArray[np.float64]] = []
    have = 0
    for _ in range(1000):
        m = max(64, 2 * (n - have))
        cand = np.column_stack(
            [
                rng.uniform(area.x[0], area.x[1], m),
                rng.uniform(area.y[0], area.y[1], m),
                np.clip(area.height + rng.normal(0.0, 1.0, m) * jitter, z_lo, z_hi),
            ]
        )
        keep = np.fromiter((spec.ue_allowed(*p) for p in cand), dtype=bool, count=m)
        found.append(cand[keep])
        have += int(keep.sum())
        if have >= n:
            return np.concatenate(found)[:n]
    raise ValueError(
        f"scene {spec.name!r}: could not place {n} UEs; obstacles cover (almost) all of the UE area"
    )
