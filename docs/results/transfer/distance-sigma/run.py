#!/usr/bin/env python3
"""One target run on `adapt_site`'s split (`target_split` of ../fresh-dense/pair.py), scored
on the test set twice from the same trained model: sigma calibrated with the distance term
(what `train_target` ships) and without it (the calibration before it). Appends one row to
OUT.jsonl.

    run.py DATA ENV SEED ARM LABELS SELECT OUT.jsonl
    # ARM: a model repository (its default backbone) or `scratch`; SELECT: loss|calibrated
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

from training.calibration import calibrate_sigma
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
    head = model.head
    on = evaluate_model(model.backbone, head, test)
    weight, rows = float(head.ref_weight.item()), int(head.ref_features.shape[0])
    calibrate_sigma(model.backbone, head, val)  # the same head, without the term
    off = evaluate_model(model.backbone, head, test)
    row = {
        "env": env,
        "seed": int(seed),
        "arm": "scratch" if arm == "scratch" else Path(arm).name,
        "labels": int(labels),
        "select": select,
        "val": len(val),
        "weight": weight,
        "rows": rows,
        "on": {k: on[k] for k in SCORES},
        "off": {k: off[k] for k in SCORES},
        "wall_s": round(wall, 1),
    }
    with Path(out).open("a") as f:
        f.write(json.dumps(row) + "\n")
    sys.stdout.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
