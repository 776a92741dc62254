#!/usr/bin/env python3
"""One target run with the labelled training CSI augmented (pilot, issue 10): as
`../sources-mix/arm.py` (the same split, recipe and arms), but each training fingerprint
also enters as COPIES perturbed copies of itself, at the same position:

- white noise at an SNR drawn from U(10, 30) dB of the fingerprint's own mean power per
  entry (the `paper` and corpus chains cap SNR at 15-35 dB: a new site's SNR differs);
- a complex gain error per antenna, amplitude N(0, 0.5 dB) and phase N(0, 5 deg) (the
  array's calibration drifts; phase-delay inputs remove only what is common to all
  antennas).

The values are chosen a priori, not tuned. Validation and test stay clean; the head's
neighbour terms are fitted on the clean training fingerprints (the copies would be each
other's nearest neighbours).

    run.py DATA ENV SEED ARM OUT.jsonl LABELS [COPIES] [same]

ARM: a model repository, scratch or scratch-pd (../fresh-dense/pair.py, `arm_start`).
``same``: the copies are exact (the control: the same training-set size, hence the same
evaluation interval and patience in steps, with nothing perturbed).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

from training.augment import augmented
from training.data.fingerprints import Fingerprints
from training.metrics import finish_head
from training.transfer import train_target

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "fresh-dense"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "sources-mix"))
from arm import augment_note, write_row  # the same rows as every-budget's
from pair import arm_start, target_split  # the same split and arms as every-budget's


def copies_of(train: Fingerprints, copies: int, seed: int, perturb: bool) -> Fingerprints:
    """``train`` and ``copies`` perturbed copies (`training.augment.augmented`, which this
    pilot's own copy of the code became: the same draws, the same result) or exact ones."""
    if not perturb:
        return Fingerprints.concat([train] * (copies + 1))
    return augmented(train, copies, seed)


def main(
    data: str, env: str, seed: int, arm: str, out: Path, labels: int, copies: int, perturb: bool
) -> None:
    torch.set_num_threads(1)
    train, val, test, cfg = target_split(data, env, seed, labels)
    plain = Fingerprints(csi=train.csi, pos=train.pos)
    big = copies_of(plain, copies, seed, perturb)
    backbone, config = arm_start(arm)
    t0 = time.time()
    r = train_target(backbone, big, val, cfg, mode="finetune", quiet=True, backbone_config=config)
    finish_head(r.model.backbone, r.model.head, val, cfg, reference=plain)
    augment = augment_note(copies) if perturb else {"copies": copies, "same": True}
    labels = len(train) + len(val)
    write_row(out, env, seed, arm, "finetune", r, labels, test, t0, augment=augment)


if __name__ == "__main__":
    a = sys.argv[1:]
    copies = int(a[6]) if len(a) > 6 else 3
    main(a[0], a[1], int(a[2]), a[3], Path(a[4]), int(a[5]), copies, a[7:8] != ["same"])
