#!/usr/bin/env python3
# ruff: noqa: T201  (a results script: its output is the table)
"""Training-set variants of the subset joint head, on an adapted version's own split
(issue 13; section 4 of README.md).

Re-trains only the joint head (`training.multibs.train_joint`, as an adaptation does,
on the version's seeded split) with the BS-dropout copies varied, and fuses it (robust)
with the version's own BS models on the labelled positions the adaptation never used,
with every BS and with each BS left out (its block zero, as the service sends it):

- ``min2``: copies keep at least two BSs (the first product version);
- ``min1``: at least one (one BS left: its own view);
- ``drop0.5``: each BS left out with probability 0.5 (else 0.25);
- ``copies8``: 8 copies (else 4); ``min1-copies8``: both.

    python3 docs/results/site-trust/joint/variants.py REPO SITE SITE.h5 GROUP VARIANT
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

import training.multibs as mb
from training.checkpoint import load_backbone, load_site_model
from training.config import TrainConfig
from training.data.site import SiteFingerprints, read_site
from training.fusion import fuse_by
from training.repository import ModelRepository

VARIANTS = ("min2", "min1", "drop0.5", "copies8", "min1-copies8")


def without(data: SiteFingerprints, left_out: int | None) -> SiteFingerprints:
    """`data` with BS ``left_out`` hearing nothing."""
    if left_out is None:
        return data
    return data.only([bs for k, bs in enumerate(data.bs_ids) if k != left_out])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("repo")
    parser.add_argument("site")
    parser.add_argument("data")
    parser.add_argument("group")
    parser.add_argument("variant", choices=VARIANTS)
    parser.add_argument("--backbone", default="models", help="repository of the parent")
    args = parser.parse_args()
    torch.set_num_threads(1)
    repo = ModelRepository(args.repo)
    manifest = repo.manifest("site", args.site, repo.resolve("site", args.site))
    c = manifest["config"]
    cfg = TrainConfig.from_dict({k: c[k] for k in TrainConfig.__dataclass_fields__ if k in c})
    data = read_site(args.data, args.group)
    train, val, _ = mb.split_site(data, cfg.val_fraction, c["holdout"], c["fraction"], cfg.seed)
    used = set(map(int, train.sample_id)) | set(map(int, val.sample_id))
    unused = data.subset(np.flatnonzero([int(s) not in used for s in data.sample_id]))
    models = {bs: load_site_model(repo, args.site, bs=bs) for bs in data.bs_ids}
    least = 2 if "min2" in args.variant else 1
    drop = mb.drop_stations
    mb.drop_stations = lambda j, k, seed: drop(j, k, seed, least=least)  # type: ignore[assignment,misc]
    mb.JOINT_DROP = 0.5 if "drop0.5" in args.variant else 0.25
    mb.JOINT_COPIES = 8 if "copies8" in args.variant else 4
    start = load_backbone(ModelRepository(args.backbone), "meml")
    result = mb.train_joint(start, train, val, cfg, quiet=True, progress=None)
    assert result is not None
    rmse = dict.fromkeys(data.bs_ids, (1.0, 1.0))  # unused: NLL models give sigma
    cells = []
    for left_out in [None, *range(len(data.bs_ids))]:
        d = without(unused, left_out)
        means, covs, present = mb.station_estimates(models, d, rmse, result.model)

        def me(mean: np.ndarray, d: SiteFingerprints = d) -> float:
            return float(np.linalg.norm(mean - d.pos, axis=1).mean())

        alone = me(fuse_by(mb.FUSION, means[:-1], covs[:-1], present[:-1])[0])
        joint = me(fuse_by(mb.FUSION, means, covs, present)[0])
        tag = "every BS" if left_out is None else f"without {data.bs_ids[left_out]}"
        cells.append(f"{tag}: {alone:.3f} -> {joint:.3f} ({100 * (joint / alone - 1):+.1f} %)")
    print(f"{args.site} seed {cfg.seed} {args.variant} | " + " | ".join(cells))


if __name__ == "__main__":
    main()
