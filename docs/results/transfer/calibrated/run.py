#!/usr/bin/env python3
"""One fine-tuning run at a target (or scratch) with a checkpoint selection, on
`adapt_site`'s split (`target_split` of ../fresh-dense/pair.py): the held-out 20 % is the
test set, LABELS of the rest are labelled, 0.2 of those validate; the product's default
recipe otherwise (Gaussian NLL, plateau schedule, sigma calibrated on validation). Appends
one row (with the validation history) to OUT.jsonl and, with PRED_DIR, saves the raw
validation and test predictions for the calibration study (calib.py).

    run.py DATA ENV SEED ARM LABELS SELECT OUT.jsonl [PRED_DIR|-] [MODE]
    # ARM: a model repository (its default backbone) or `scratch`; SELECT: loss|calibrated|me;
    # MODE: finetune (the default) or auto (the default mode; auto.jsonl)
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from training.config import check_mode
from training.data.fingerprints import Fingerprints
from training.fit import predict
from training.metrics import evaluate_model, finish_head
from training.transfer import train_target

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "fresh-dense"))
from pair import arm_backbone, target_split  # the same split as the other transfer studies


def main(argv: list[str]) -> None:
    data, env, seed, arm, labels, select, out = argv[:7]
    pred_dir = Path(argv[7]) if len(argv) > 7 and argv[7] != "-" else None
    mode = check_mode(argv[8]) if len(argv) > 8 else "finetune"
    torch.set_num_threads(1)
    train, val, test, cfg = target_split(data, env, int(seed), int(labels))
    cfg = cfg.replace(select=select)
    backbone = arm_backbone(arm)
    t0 = time.time()
    r = train_target(backbone, train, val, cfg, mode=mode, quiet=True)
    name = "scratch" if arm == "scratch" else Path(arm).name
    if pred_dir is not None:  # raw sigma: `train_target` calibrated it, `finish_head` redoes it
        r.model.head.sigma_scale.fill_(1.0)

        def raw(d: Fingerprints) -> tuple[np.ndarray, np.ndarray]:
            pos, sigma = predict(r.model.backbone, r.model.head, torch.from_numpy(d.csi))
            assert sigma is not None
            return pos.numpy(), sigma.numpy()

        (vp, vs), (tp, ts) = raw(val), raw(test)
        pred_dir.mkdir(parents=True, exist_ok=True)
        tag = f"{env.replace('/', '_')}_{seed}_{name}_{labels}_{select}"
        np.savez_compressed(
            pred_dir / f"{tag}.npz", vp=vp, vs=vs, vt=val.pos, tp=tp, ts=ts, tt=test.pos
        )
    finish_head(r.model.backbone, r.model.head, val, cfg, reference=train)  # as train_target
    t = evaluate_model(r.model.backbone, r.model.head, test)
    row = {
        "env": env,
        "seed": int(seed),
        "arm": name,
        "labels": int(labels),
        "select": select,
        "mode": mode,
        "chosen": r.chosen,
        "me": t["me"],
        "crps": t.get("crps"),
        "c1": t.get("within_1sigma"),
        "c2": t.get("within_2sigma"),
        "degenerate": r.degenerate,
        "steps": r.report.steps,
        "best": [p.best_step for p in r.report.phases],
        "wall_s": round(time.time() - t0, 1),
        "history": [[h["step"], h["val_loss"], h["val_me"], h["lr"]] for h in r.report.history],
    }
    with Path(out).open("a") as f:
        f.write(json.dumps(row) + "\n")
    sys.stdout.write(json.dumps({k: v for k, v in row.items() if k != "history"}) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
