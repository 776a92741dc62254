#!/usr/bin/env python3
"""One 500-label target run of one backbone, on `adapt_site`'s split, so every arm of a
(target, seed) trains and is tested on the same samples: the held-out 20 % is the test
set, LABELS of the rest are labelled, 0.2 of those validate; the product's default
recipe (Gaussian NLL, sigma calibrated on validation), fine-tuning.

    arm.py DATA ENV SEED ARM OUT.jsonl [LABELS]   # ARM: a model repository, or `scratch`
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from training.config import TrainConfig
from training.data.fingerprints import read_environment
from training.data.splits import split_train_val, train_val_test
from training.metrics import evaluate_model, finish_head
from training.repository import ModelRepository
from training.transfer import holdout_split, starting_backbone, train_target

HOLDOUT = 0.2


def main(data: str, env: str, seed: int, arm: str, out: Path, labels: int) -> None:
    fps = read_environment(data, env)
    pool_n = len(train_val_test(len(fps), 0.0, HOLDOUT, seed).train)
    pool, test = holdout_split(fps, HOLDOUT, min(1.0, labels / pool_n), seed)
    assert test is not None
    cfg = TrainConfig().replace(loss="nll", seed=seed, val_fraction=0.2)
    train, val = split_train_val(pool, cfg.val_fraction, cfg.seed)
    backbone = None
    if arm != "scratch":
        _, backbone, _ = starting_backbone(ModelRepository(Path(arm)), None)
    t0 = time.time()
    r = train_target(backbone, train, val, cfg, mode="finetune", quiet=True)
    finish_head(r.model.backbone, r.model.head, val, cfg)
    t = evaluate_model(r.model.backbone, r.model.head, test)
    row = {
        "env": env,
        "seed": seed,
        "arm": arm,
        "mode": "finetune",
        "chosen": r.chosen,
        "labels": len(pool),
        "n_test": len(test),
        "me": t["me"],
        "crps": t.get("crps"),
        "c1": t.get("within_1sigma"),
        "c2": t.get("within_2sigma"),
        "degenerate": r.degenerate,
        "steps": r.report.steps,
        "wall_s": round(time.time() - t0, 1),
    }
    with out.open("a") as f:
        f.write(json.dumps(row) + "\n")
    sys.stdout.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    a = sys.argv
    main(a[1], a[2], int(a[3]), a[4], Path(a[5]), int(a[6]) if len(a) > 6 else 500)
