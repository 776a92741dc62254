#!/usr/bin/env python3
"""One target run on `adapt_site`'s split (`target_split` of ../fresh-dense/pair.py), scored
on the test set three times from the same trained model: as `train_target` ships it
(the neighbour blend of positions and sigma's distance term, ``blend``), with the
distance term only (``term``: the blends tried limited to 0) and with neither (``off``:
calibrated without the reference, as before both). Appends one row to OUT.jsonl.

    run.py DATA ENV SEED ARM LABELS SELECT OUT.jsonl
    # ARM: a model repository (its default backbone) or `scratch`; SELECT: loss|calibrated

Rows written before the blend existed (results.jsonl) hold ``on`` (the term) and ``off``.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

import training.calibration as calibration
from training.metrics import evaluate_model
from training.transfer import train_target

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "fresh-dense"))
from pair import arm_backbone, target_split  # the same split as the other transfer studies

SCORES = ("me", "crps", "nll", "within_1sigma", "within_2sigma")


def main(argv: list[str]) -> None:
    data, env, seed, arm, labels, select, out = argv[:7]
    torch.set_num_threads(1)
    train, val, test, cfg = target_split(data, env, int(seed), int(labels))
    cfg = cfg.replace(select=select)
    backbone = arm_backbone(arm)
    t0 = time.time()
    model = train_target(backbone, train, val, cfg, mode="finetune", quiet=True).model
    wall = time.time() - t0
    head, bb = model.head, model.backbone
    blend = evaluate_model(bb, head, test)
    shares = {k: float(getattr(head, k).item()) for k in ("ref_blend", "ref_weight")}
    rows = int(head.ref_features.shape[0])
    kept = calibration.REF_BLENDS
    calibration.REF_BLENDS = (0.0,)  # the same head with the distance term only
    calibration.calibrate_sigma(bb, head, val, reference=train, seed=cfg.seed)
    calibration.REF_BLENDS = kept
    term = evaluate_model(bb, head, test)
    calibration.calibrate_sigma(bb, head, val)  # neither
    off = evaluate_model(bb, head, test)
    row = {
        "env": env,
        "seed": int(seed),
        "arm": "scratch" if arm == "scratch" else Path(arm).name,
        "labels": int(labels),
        "select": select,
        "val": len(val),
        "blend_share": shares["ref_blend"],
        "weight": shares["ref_weight"],
        "rows": rows,
        "blend": {k: blend[k] for k in SCORES},
        "term": {k: term[k] for k in SCORES},
        "off": {k: off[k] for k in SCORES},
        "wall_s": round(wall, 1),
    }
    with Path(out).open("a") as f:
        f.write(json.dumps(row) + "\n")
    sys.stdout.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
