#!/usr/bin/env python3
# ruff: noqa: T201  (a results script: its output is the table)
"""An ensemble of joint heads against one (issue 13; offline, on frozen features).

The joint head sets most of a site's fused error, and it is trained on ~400 labels:
its error moves by 10-15 % with the head's initialisation alone (`joint.py`, per seed).
Averaging heads that differ only in initialisation and batch order removes that part
of the error at no cost in labels. Here K joint heads (seeds ``1000 s + i``) are
combined as one Gaussian (the mixture's moments per axis: mean of the means, variance
the mean variance plus the means' spread), their sigma scale refitted on validation;
each is fused with the per-BS heads as `joint.py` fuses one head (same features, split,
step budget). Scored on the never-used labelled positions.

    python3 docs/results/site-trust/joint/ensemble.py SITE.h5 GROUP [--backbone models]
        [--seeds 0 1 2] [--steps 3000] [--members 1 3 5]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from joint import features, load_split, run, score, site_arguments, train_head

from training.calibration import fit_sigma_scale
from training.fusion import diag_cov, fit_inflation, fuse_robust


def combine(outs: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """Moment-matched (mean, sigma) of equal-weight Gaussians, per axis."""
    m = np.stack([o[0] for o in outs])
    s = np.stack([o[1] for o in outs])
    return m.mean(axis=0), np.sqrt((s**2).mean(axis=0) + m.var(axis=0))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    site_arguments(parser)
    parser.add_argument("--members", type=int, nargs="+", default=[1, 3, 5])
    args = parser.parse_args()
    backbone, data, train, val, unused = load_split(args)
    ftr, fva, fte = (features(d, backbone) for d in (train, val, unused))
    k = len(data.bs_ids)
    cat = np.concatenate
    xtr, xva, xte = (cat(list(f), axis=1) for f in (ftr, fva, fte))
    rows: dict[str, list[float]] = {}
    for seed in args.seeds:
        t0 = time.perf_counter()
        heads = [
            train_head(ftr[j], train.pos, fva[j], val.pos, args.steps, seed + 100 * j)
            for j in range(k)
        ]
        vb = [run(h, fva[j]) for j, h in enumerate(heads)]
        tb = [run(h, fte[j]) for j, h in enumerate(heads)]
        best = min(score(m, diag_cov(s), unused.pos)[0] for m, s in tb)
        fm, fc = fuse_robust(np.stack([m for m, _ in tb]), diag_cov(np.stack([s for _, s in tb])))
        vm, vc = fuse_robust(np.stack([m for m, _ in vb]), diag_cov(np.stack([s for _, s in vb])))
        late = score(fm, fc * fit_inflation(vm - val.pos, vc), unused.pos)
        rows.setdefault("late fusion (robust)", []).append(late[0] / best)
        joints = [
            train_head(xtr, train.pos, xva, val.pos, args.steps, 1000 * seed + i)
            for i in range(max(args.members))
        ]
        for n in args.members:
            members = joints[:n]
            jv = combine([run(h, xva) for h in members])
            jt = combine([run(h, xte) for h in members])
            if n > 1:  # one head's sigma is already scaled on validation by train_head
                scale = fit_sigma_scale(jv[0] - val.pos, jv[1])
                jv, jt = (jv[0], jv[1] * scale), (jt[0], jt[1] * scale)
            alone = score(jt[0], diag_cov(jt[1]), unused.pos)
            am, ac = fuse_robust(
                np.stack([*(m for m, _ in vb), jv[0]]),
                diag_cov(np.stack([*(s for _, s in vb), jv[1]])),
            )
            infl = fit_inflation(am - val.pos, ac)
            tm, tc = fuse_robust(
                np.stack([*(m for m, _ in tb), jt[0]]),
                diag_cov(np.stack([*(s for _, s in tb), jt[1]])),
            )
            fused = score(tm, tc * infl, unused.pos)
            rows.setdefault(f"joint head x{n} alone", []).append(alone[0] / best)
            rows.setdefault(f"BSs + joint head x{n}", []).append(fused[0] / best)
            rows.setdefault(f"BSs + joint head x{n}: 1 sigma", []).append(100 * fused[1])
            rows.setdefault(f"BSs + joint head x{n}: 2 sigma", []).append(100 * fused[2])
        print(f"seed {seed}: {time.perf_counter() - t0:.0f} s", flush=True)
    print(
        f"\n{args.site} {args.group}: {k} BSs, {len(train)} train / {len(val)} val"
        f" / {len(unused)} test"
    )
    print("| arm | / best BS's ME (or coverage %), median over seeds | per seed |")
    print("|---|---|---|")
    for name, v in rows.items():
        print(f"| {name} | {np.median(v):.3f} | {' '.join(f'{x:.3f}' for x in v)} |")


if __name__ == "__main__":
    main()
