"""Late fusion of a multi-BS site: fused error and calibration against the best single BS.

Adapts one model per BS of a multi-BS site (`adapt_site` on a `SiteFingerprints`, the
service's pipeline) from `--labels` labelled positions, then on the held-out test
positions compares, per UE heard by at least one BS:

- each BS alone (the baseline: the best single BS by test ME),
- the equal-weight mean of the BSs that heard the UE (fusion without uncertainty),
- the product of Gaussians (`training.fusion.fuse`),
- the product of Gaussians with the covariance inflation fitted on validation (what the
  service serves).

Coverage is the share of test errors inside the 1- and 2-sigma ellipses of the full
covariance (a calibrated Gaussian gives 39.3 % and 86.5 %).

    python3 bench/fusion.py --data /work/data10/targets.h5 --site proc/s100007 \\
        --backbone-repo /work/main/models --labels 500 --mode head
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from training.checkpoint import load_site_model
from training.config import TrainConfig
from training.data.site import read_site
from training.fusion import coverage, fuse
from training.multibs import split_site, station_estimates
from training.repository import ModelRepository
from training.transfer import adapt_site


def _row(name: str, err: np.ndarray, cov: np.ndarray | None) -> list[str]:
    dist = np.hypot(err[:, 0], err[:, 1])
    cells = [name, f"{dist.mean():.3f}", f"{np.percentile(dist, 90):.3f}"]
    if cov is None:
        return [*cells, "", ""]
    return [*cells, f"{100 * coverage(err, cov, 1.0):.1f}", f"{100 * coverage(err, cov, 2.0):.1f}"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--site", required=True, help="the group holding the BS environments")
    ap.add_argument("--backbone-repo", type=Path, default=Path("models"))
    ap.add_argument("--backbone", default=None)
    ap.add_argument("--labels", type=int, default=500, help="labelled positions (train + val)")
    ap.add_argument("--holdout", type=float, default=0.2)
    ap.add_argument("--mode", default="auto")
    ap.add_argument("--loss", default="nll")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.WARNING)

    site = read_site(args.data, args.site)
    pool = len(site) - round(args.holdout * len(site))
    fraction = min(1.0, args.labels / pool)
    cfg = TrainConfig(loss=args.loss, seed=args.seed)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        repo = ModelRepository(Path(tmp) / "models")
        result = adapt_site(
            repo,
            "bench",
            site,
            backbone=args.backbone,
            source_repo=ModelRepository(args.backbone_repo),
            mode=args.mode,
            loss=args.loss,
            seed=args.seed,
            config=cfg,
            holdout=args.holdout,
            fraction=fraction,
        )
        models = {bs: load_site_model(repo, "bench", bs=bs) for bs in site.bs_ids}
    wall = time.perf_counter() - t0
    _, _, test = split_site(site, cfg.val_fraction, args.holdout, fraction, args.seed)
    assert test is not None
    rmse = {bs: (float(m["rmse_x"]), float(m["rmse_y"])) for bs, m in result.metrics["bs"].items()}
    means, covs, present = station_estimates(models, test, rmse)
    truth = test.pos.astype(np.float64)
    heard = present.any(axis=0)
    rows = []
    best = np.inf
    for k, bs in enumerate(site.bs_ids):
        on = present[k]
        err = means[k, on] - truth[on]
        rows.append(_row(f"{bs} alone ({int(on.sum())} UEs)", err, covs[k, on]))
        best = min(best, float(np.hypot(err[:, 0], err[:, 1]).mean()))
    weights = present[:, heard, None].astype(np.float64)
    avg = (means[:, heard] * weights).sum(axis=0) / weights.sum(axis=0)
    rows.append(_row("equal-weight mean", avg - truth[heard], None))
    mean, cov = fuse(means[:, heard], covs[:, heard], present[:, heard])
    err = mean - truth[heard]
    rows.append(_row("product of Gaussians", err, cov))
    inflation = float(result.metrics["fusion"]["inflation"])
    rows.append(_row(f"PoG x{inflation:.2f} (val-fitted)", err, cov * inflation))
    fused_me = float(np.hypot(err[:, 0], err[:, 1]).mean())

    print(
        f"site {args.data}:{args.site}: {len(site)} positions, BSs {site.bs_ids}, "
        f"{int(heard.sum())} test UEs heard; labels {args.labels} (fraction {fraction:.3f}), "
        f"mode {args.mode} -> {result.chosen_mode}, loss {args.loss}, "
        f"threads {args.threads}, adaptation {wall:.0f} s"
    )
    print(f"{'estimate':34} {'ME m':>7} {'p90 m':>7} {'1sig %':>7} {'2sig %':>7}")
    for r in rows:
        print(f"{r[0]:34} {r[1]:>7} {r[2]:>7} {r[3]:>7} {r[4]:>7}")
    print(f"fused ME / best single-BS ME = {fused_me / best:.3f}")
    print(f"load: {os.getloadavg()}")


if __name__ == "__main__":
    main()
