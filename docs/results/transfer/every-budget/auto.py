#!/usr/bin/env python3
"""One target run in the default mode (`auto`) with its scratch and fresh-dense candidates
from MIN labelled samples (`TrainConfig.auto_scratch_min`; the product's is 2,000), on
`adapt_site`'s split, as ../sources-mix/arm.py runs the other arms.

    auto.py DATA ENV SEED ARM OUT.jsonl LABELS MIN   # ARM: a model repository
"""

# ruff: noqa: T201
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from training.metrics import evaluate_model, finish_head
from training.repository import ModelRepository
from training.transfer import starting_backbone, train_target

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "fresh-dense"))
from pair import target_split  # the same split as arm.py's


def main(data: str, env: str, seed: int, arm: str, out: Path, labels: int, least: int) -> None:
    train, val, test, cfg = target_split(data, env, seed, labels)
    cfg = cfg.replace(auto_scratch_min=least)
    _, backbone, _ = starting_backbone(ModelRepository(Path(arm)), None)
    t0 = time.time()
    r = train_target(backbone, train, val, cfg, mode="auto", quiet=True)
    finish_head(r.model.backbone, r.model.head, val, cfg)
    t = evaluate_model(r.model.backbone, r.model.head, test)
    row = {
        "env": env,
        "seed": seed,
        "arm": arm,
        "mode": f"auto@{least}",
        "chosen": r.chosen,
        "labels": len(train) + len(val),
        "me": t["me"],
        "crps": t.get("crps"),
        "c1": t.get("within_1sigma"),
        "c2": t.get("within_2sigma"),
        "degenerate": r.degenerate,
        "wall_s": round(time.time() - t0, 1),
    }
    with out.open("a") as f:
        f.write(json.dumps(row) + "\n")
    print(json.dumps(row))


if __name__ == "__main__":
    a = sys.argv
    main(a[1], a[2], int(a[3]), a[4], Path(a[5]), int(a[6]), int(a[7]))
