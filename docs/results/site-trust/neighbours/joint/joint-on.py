#!/usr/bin/env python3
"""`csipos` with the joint head's neighbour terms on, as measured here and not shipped:
the five-head ensemble calibrated over its first member's training rows (dropped copies
included); with ``--copies`` (arm ``on2``) on the validation UEs and their dropped copies
(two or more BSs each), scored on the UEs as heard.

    joint-on.py [--copies] train site ...  (as csipos)
"""

import sys
from typing import Any

import training.multibs as multibs
from service.cli import main
from training.metrics import evaluate_model, finish_head

COPIES = "--copies" in sys.argv
if COPIES:
    sys.argv.remove("--copies")
state: dict[str, Any] = {}
train_joint = multibs.train_joint


def stash(start: Any, train: Any, *args: Any, **kw: Any) -> Any:
    state["train"] = train
    return train_joint(start, train, *args, **kw)


def finish(backbone: Any, head: Any, val: Any, cfg: Any, **kw: Any) -> Any:
    """`finish_head` of the ensemble (`multibs._joint_ensemble`) with the terms."""
    k, subsets = backbone.stations, backbone.subsets
    _, jt = multibs.joint_fingerprints(state["train"], subsets)
    reference = multibs.drop_stations(jt, k, cfg.seed) if subsets else jt  # member 0's rows
    calibration = val
    if COPIES and subsets:
        least = multibs.JOINT_MIN_HEARD
        calibration = multibs.drop_stations(val, k, cfg.seed + 999, least=least)
    metrics = finish_head(backbone, head, calibration, cfg, reference=reference)
    if calibration is not val:
        metrics.update(evaluate_model(backbone, head, val))
    return metrics


multibs.train_joint = stash  # type: ignore[assignment]
multibs.finish_head = finish  # type: ignore[assignment]
sys.exit(main())
