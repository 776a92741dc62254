#!/usr/bin/env python3
"""One 500-label target run of one backbone, on `adapt_site`'s split (`target_split` of
../fresh-dense/pair.py), so every arm of a (target, seed) trains and is tested on the
same samples: the held-out 20 % is the test set, LABELS of the rest are labelled, 0.2 of
those validate; the product's default recipe (Gaussian NLL, sigma calibrated on
validation), fine-tuning.

    arm.py DATA ENV SEED ARM OUT.jsonl [LABELS]   # ARM: a model repository, or `scratch`
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from training.metrics import evaluate_model, finish_head
from training.repository import ModelRepository
from training.transfer import starting_backbone, train_target

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "fresh-dense"))
from pair import target_split  # the same split as the fresh-dense pairs


def main(data: str, env: str, seed: int, arm: str, out: Path, labels: int) -> None:
    train, val, test, cfg = target_split(data, env, seed, labels)
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
        "labels": len(train) + len(val),
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
