#!/usr/bin/env python3
"""The exploration's runs: run.py's fine-tuning (term off: calibrated afterwards by cues.py),
saving raw validation/test predictions and the backbone features of train, validation and
test for the cue study.

    dump.py DATA ENV SEED ARM LABELS SELECT OUT_DIR
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

from training.fit import predict
from training.novelty import backbone_features
from training.transfer import train_target

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "fresh-dense"))
from pair import arm_backbone, target_split  # the same split as the other transfer studies


def main(argv: list[str]) -> None:
    data, env, seed, arm, labels, select, out_dir = argv[:7]
    torch.set_num_threads(1)
    train, val, test, cfg = target_split(data, env, int(seed), int(labels))
    backbone = arm_backbone(arm)
    model = train_target(backbone, train, val, cfg.replace(select=select), quiet=True).model
    model.head.reset_calibration()  # sigma as trained
    out: dict[str, np.ndarray] = {}
    for key, d in (("r", train), ("v", val), ("t", test)):
        pos, sigma = predict(model.backbone, model.head, torch.from_numpy(d.csi))
        assert sigma is not None
        out[key + "p"], out[key + "s"], out[key + "t"] = pos.numpy(), sigma.numpy(), d.pos
        out[key + "f"] = backbone_features(model.backbone, d.csi).astype(np.float32)
    name = "scratch" if arm == "scratch" else "models"
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    tag = f"{env.replace('/', '_')}_{seed}_{name}_{labels}_{select}"
    np.savez_compressed(Path(out_dir) / f"{tag}.npz", **out)  # type: ignore[arg-type]


if __name__ == "__main__":
    main(sys.argv[1:])
