#!/usr/bin/env python3
"""One 500-label target run of one backbone, on `adapt_site`'s split (`target_split` of
../fresh-dense/pair.py), so every arm of a (target, seed) trains and is tested on the
same samples: the held-out 20 % is the test set, LABELS of the rest are labelled, 0.2 of
those validate; the product's default recipe (Gaussian NLL, sigma calibrated on
validation), fine-tuning unless MODE says otherwise (every-budget/ runs `auto`, the
default mode, beside it).

    arm.py DATA ENV SEED ARM OUT.jsonl [LABELS] [MODE] [AUTO_SCRATCH_MIN] [COPIES] [SELECT]
           [EPOCHS] [PATIENCE] [LR_PATIENCE]

AUTO_SCRATCH_MIN: `auto`'s scratch and fresh-dense candidates from this many labelled
samples (`TrainConfig.auto_scratch_min`; the product's is 2,000, also ``-``); the row's
mode is then ``auto@N``. COPIES: `TrainConfig.augment_copies` (the product's target
loop, ../augment); the row then carries ``augment``. SELECT: `TrainConfig.select` (the
checkpoint's score: ``loss``, the default, ``calibrated`` or ``me``; ../calibrated); the
row then carries ``select``. EPOCHS: `TrainConfig.epochs` (the cap on passes over the
labelled fingerprints per phase; ../augment, "The epoch cap"); the row then carries
``epochs``. PATIENCE: `TrainConfig.patience` (validations without a better score
before a phase stops); the row then carries ``patience``. LR_PATIENCE:
`TrainConfig.lr_patience` (validations without improvement before the plateau schedule
halves the rate); the row then carries ``lr_patience``.

ARM: a model repository, `scratch` (random initialisation on `raw` inputs, the
`BackboneConfig` default and what every study here ran as scratch until 2026-12-06), or
`scratch-pd` (on the backbone's `phase-delay` inputs: the fair baseline the issue asks
for, ../every-budget/README.md).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from training.augment import GAIN_DB, PHASE_DEG, SNR_DB
from training.config import TargetMode, check_mode
from training.data.fingerprints import Fingerprints
from training.metrics import evaluate_model
from training.transfer import TargetResult, train_target

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "fresh-dense"))
from pair import arm_start, target_split  # the same split and arms as the fresh-dense pairs


def main(
    data: str,
    env: str,
    seed: int,
    arm: str,
    out: Path,
    labels: int,
    mode: TargetMode,
    scratch_min: int | None = None,
    copies: int = 0,
    select: str = "loss",
    epochs: int | None = None,
    patience: int | None = None,
    lr_patience: int | None = None,
) -> None:
    train, val, test, cfg = target_split(data, env, seed, labels)
    if scratch_min is not None:
        cfg = cfg.replace(auto_scratch_min=scratch_min)
    extra: dict[str, Any] = {}
    if copies:
        cfg = cfg.replace(augment_copies=copies)
        extra["augment"] = augment_note(copies)
    if select != cfg.select:
        cfg = cfg.replace(select=select)  # checked by TrainConfig
        extra["select"] = select
    if epochs is not None and epochs != cfg.epochs:
        cfg = cfg.replace(epochs=epochs)
        extra["epochs"] = epochs
    if patience is not None and patience != cfg.patience:
        cfg = cfg.replace(patience=patience)
        extra["patience"] = patience
    if lr_patience is not None and lr_patience != cfg.lr_patience:
        cfg = cfg.replace(lr_patience=lr_patience)
        extra["lr_patience"] = lr_patience
    backbone, config = arm_start(arm)
    t0 = time.time()
    # `train_target` finishes the head as the product does (sigma calibrated, with the
    # neighbour terms fitted on `train`); finishing it again without `reference` dropped
    # the terms (rows without "finished" below: every-budget/README.md, "Neighbour terms")
    r = train_target(backbone, train, val, cfg, mode=mode, quiet=True, backbone_config=config)
    mode_name = mode if scratch_min is None else f"{mode}@{scratch_min}"
    write_row(out, env, seed, arm, mode_name, r, len(train) + len(val), test, t0, **extra)


def augment_note(copies: int) -> dict[str, Any]:
    """A row's ``augment``: the copies and the perturbation they were drawn with."""
    return {"copies": copies, "snr_db": SNR_DB, "gain_db": GAIN_DB, "phase_deg": PHASE_DEG}


def write_row(
    out: Path,
    env: str,
    seed: int,
    arm: str,
    mode: str,
    r: TargetResult,
    labels: int,
    test: Fingerprints,
    t0: float,
    **extra: Any,
) -> None:
    """Test ``r``'s model on ``test`` and append its row to ``out`` (and print it)."""
    t = evaluate_model(r.model.backbone, r.model.head, test)
    row = {
        "env": env,
        "seed": seed,
        "arm": arm,
        "mode": mode,
        **extra,
        "chosen": r.chosen,
        "labels": labels,
        "n_test": len(test),
        "me": t["me"],
        "crps": t.get("crps"),
        "c1": t.get("within_1sigma"),
        "c2": t.get("within_2sigma"),
        "degenerate": r.degenerate,
        "finished": "train_target",
        "neighbour_rows": int(r.model.head.ref_features.shape[0]),
        "steps": r.report.steps,
        "wall_s": round(time.time() - t0, 1),
    }
    with out.open("a") as f:
        f.write(json.dumps(row) + "\n")
    sys.stdout.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    a = sys.argv
    main(
        a[1],
        a[2],
        int(a[3]),
        a[4],
        Path(a[5]),
        int(a[6]) if len(a) > 6 else 500,
        check_mode(a[7]) if len(a) > 7 else "finetune",
        int(a[8]) if len(a) > 8 and a[8] != "-" else None,
        int(a[9]) if len(a) > 9 else 0,
        a[10] if len(a) > 10 else "loss",
        int(a[11]) if len(a) > 11 and a[11] != "-" else None,
        int(a[12]) if len(a) > 12 and a[12] != "-" else None,
        int(a[13]) if len(a) > 13 else None,
    )
