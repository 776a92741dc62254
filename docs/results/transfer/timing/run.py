#!/usr/bin/env python3
"""Pilot: the timing the phase-delay input removes, given back to the head as one feature.

`phase-delay` inputs remove each sample's phase slope over subcarriers (its mean delay),
so a backbone on them cannot use the absolute time of arrival where a site's receiver has
it (the labs' `paper` chain: raw scratch beats phase-delay scratch by 1.05-1.31x,
../every-budget). Here the backbone's 128 features get a 129th: that slope, standardised
on the site's labelled fingerprints, so a fresh head can learn to use it where it says
something (absolute timing) and to ignore it where it is noise (random offsets).

    run.py DATA ENV SEED ARM OUT.jsonl [LABELS] [MODE] [COPIES]

ARM: ``corpus``, ``scratch-pd`` or ``scratch`` (raw inputs; ../sources-mix/arm.py's arms),
or the first two with ``+t`` (the timing feature). The split and row are arm.py's.
"""

from __future__ import annotations

import copy
import dataclasses
import sys
import time
from pathlib import Path

import torch

import training.meml as meml
from training.config import check_mode
from training.data.fingerprints import Fingerprints
from training.inputs import delay_slope
from training.nets import Backbone, BackboneConfig, HeadConfig
from training.transfer import train_target

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "sources-mix"))
from arm import augment_note, write_row
from pair import arm_start, target_split


class TimingBackbone(Backbone):
    """A backbone whose features end with the standardised delay slope."""

    slope_mean: torch.Tensor
    slope_scale: torch.Tensor

    def forward(self, csi: torch.Tensor) -> torch.Tensor:
        features = super().forward(csi)
        s = (delay_slope(csi) - self.slope_mean) / self.slope_scale
        return torch.cat((features, s.unsqueeze(1)), dim=1)


def with_timing(backbone: Backbone, train: Fingerprints) -> TimingBackbone:
    out = copy.deepcopy(backbone)
    out.__class__ = TimingBackbone
    s = delay_slope(torch.from_numpy(train.csi))
    out.register_buffer("slope_mean", s.mean().reshape(()))
    out.register_buffer("slope_scale", s.std().clamp_min(1e-6).reshape(()))
    out.config = dataclasses.replace(backbone.config, features=backbone.config.features + 1)
    return out  # type: ignore[return-value]


def main(
    data: str, env: str, seed: int, arm: str, out: Path, labels: int, mode: str, copies: int
) -> None:
    train, val, test, cfg = target_split(data, env, seed, labels)
    cfg = cfg.replace(augment_copies=copies)
    base, timing = arm.removesuffix("+t"), arm.endswith("+t")
    backbone, config = arm_start(base)
    head_config = None
    if timing:
        head_config = HeadConfig(in_features=129)
        if backbone is not None:
            backbone = with_timing(backbone, train)
        else:
            assert config is not None
            built = meml.Backbone

            def factory(c: BackboneConfig | None, seed: int | None = None) -> Backbone:
                return with_timing(built(c, seed=seed), train)

            meml.Backbone = factory  # type: ignore[assignment,misc]
    t0 = time.time()
    r = train_target(
        backbone, train, val, cfg, mode=check_mode(mode), quiet=True,
        backbone_config=config, head_config=head_config,
    )  # fmt: skip
    write_row(out, env, seed, arm, mode, r, len(train) + len(val), test, t0,
              augment=augment_note(copies))  # fmt: skip


if __name__ == "__main__":
    a = sys.argv
    main(
        a[1], a[2], int(a[3]), a[4], Path(a[5]),
        int(a[6]) if len(a) > 6 else 500,
        a[7] if len(a) > 7 else "finetune",
        int(a[8]) if len(a) > 8 else 3,
    )  # fmt: skip
