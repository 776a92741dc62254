#!/usr/bin/env python3
# ruff: noqa: T201  (a results script: its output is the table)
"""Which target mode fuses best at a multi-BS site (issue 13): every BS adapted with the
product's `train_target` in one mode, then the BSs' robust late fusion (no joint head),
scored on the never-used labelled positions and on held-out trajectories.

One JSON line per mode: each BS's ME, the fused ME, fused / best BS, the fused 1/2-sigma
coverage with the inflation fitted on validation, and the fused validation ME and NLL
(what a site-level `auto` compares). The split is `training.multibs.split_site` with
no test holdout (as `../joint/joint.py`) and ``--seed`` (split and training, as
`csipos train site --seed`).

    python3 docs/results/site-trust/modes/modes.py SITE.h5 GROUP TRACKS.h5 \
        [--modes head finetune] [--seed 0] [--backbone models]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from training.checkpoint import load_backbone
from training.config import TrainConfig, check_mode
from training.data.site import SiteFingerprints, read_site
from training.data.splits import fraction_subset, train_val_test
from training.fit import predict
from training.fusion import coverage, diag_cov, fit_inflation, fuse_robust, nll
from training.multibs import split_site
from training.repository import ModelRepository
from training.transfer import train_target

FRACTION = 0.34  # the served versions' --fraction
VAL_FRACTION = 0.2  # `csipos train site`'s default


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("site", type=Path)
    parser.add_argument("group")
    parser.add_argument("tracks", type=Path)
    parser.add_argument("--modes", nargs="+", default=["head", "finetune"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--backbone", type=Path, default=Path("models"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    repo = ModelRepository(args.backbone)
    backbone = load_backbone(repo, repo.default_backbone(), None)
    data = read_site(args.site, args.group)
    # no augmented labels, as the recorded results ran (before they were the default)
    cfg = TrainConfig(loss="nll", seed=args.seed, val_fraction=VAL_FRACTION, augment_copies=0)
    train, val, _ = split_site(data, VAL_FRACTION, 0.0, FRACTION, args.seed)
    pool = fraction_subset(train_val_test(len(data), 0.0, 0.0, 0).train, FRACTION, 0)
    unused = data.subset(np.setdiff1d(np.arange(len(data)), pool))
    sets: dict[str, SiteFingerprints] = {
        "val": val,
        "unused": unused,
        "tracks": read_site(args.tracks, args.group),
    }
    for mode in args.modes:
        t0 = time.perf_counter()
        est: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {n: [] for n in sets}
        for bs in data.bs_ids:
            r = train_target(
                backbone, train.station(bs), val.station(bs), cfg, mode=check_mode(mode), quiet=True
            )
            for name, d in sets.items():
                pos, sigma = predict(
                    r.model.backbone, r.model.head, torch.from_numpy(d.stations[bs].data.csi)
                )
                assert sigma is not None
                est[name].append((pos.numpy().astype(float), sigma.numpy().astype(float)))
        stacked = {
            n: (np.stack([m for m, _ in v]), diag_cov(np.stack([s for _, s in v])))
            for n, v in est.items()
        }
        fm, fc = fuse_robust(*stacked["val"])
        inflation = fit_inflation(fm - val.pos, fc)
        err = fm - val.pos
        out: dict[str, object] = {
            "mode": mode,
            "seed": args.seed,
            "s": round(time.perf_counter() - t0),
            "val": {
                "me": round(float(np.linalg.norm(err, axis=1).mean()), 3),
                "nll": round(float(nll(err, fc * inflation).mean()), 3),
            },
        }
        for name in ("unused", "tracks"):
            truth = sets[name].pos
            means, covs = stacked[name]
            per = [float(np.linalg.norm(m - truth, axis=1).mean()) for m in means]
            fm, fc = fuse_robust(means, covs)
            e = fm - truth
            fused = float(np.linalg.norm(e, axis=1).mean())
            out[name] = {
                "per": np.round(per, 3).tolist(),
                "fused": round(fused, 3),
                "ratio": round(fused / min(per), 3),
                "cov": [
                    round(100 * coverage(e, fc * inflation, 1.0), 1),
                    round(100 * coverage(e, fc * inflation, 2.0), 1),
                ],
            }
        print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
