"""MEML training throughput against its ceiling: a bare forward+backward loop of the same model.

MEML here is the real `training.meml.train_sources` (validation every ``eval_every``
steps, early-stopping bookkeeping, best-state snapshots included). The ceiling runs the same
backbone and heads on random tensors of the same batch shape with the same
optimizer and no data handling at all. Both count training samples per second
(all environments together).

    python3 bench/train_throughput.py [--envs 4] [--samples 1000] [--batch-size 64]
        [--rounds 5] [--threads N] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import logging
import math
import time

import numpy as np
import torch

from training.config import TrainConfig
from training.data.fingerprints import Fingerprints
from training.losses import mse_loss
from training.meml import SourceData, train_sources
from training.nets import Backbone, Head


def synthetic_env(n: int, seed: int) -> Fingerprints:
    rng = np.random.default_rng(seed)
    csi = rng.standard_normal((n, 8, 103, 2), dtype=np.float32)
    pos = rng.uniform(0, 30, (n, 2)).astype(np.float32)
    return Fingerprints(csi=csi, pos=pos)


def ceiling(envs: int, batch: int, steps: int, device: torch.device) -> float:
    """Samples/s of forward+backward+Adam on random tensors, no data pipeline."""
    backbone = Backbone(seed=0).to(device)
    heads = [Head(seed=1 + k).to(device) for k in range(envs)]
    params = list(backbone.parameters()) + [p for h in heads for p in h.parameters()]
    opt = torch.optim.Adam(params, lr=1e-3)
    csi = torch.randn(envs * batch, 8, 103, 2, device=device)
    pos = torch.randn(envs * batch, 2, device=device)

    def step() -> None:
        feats = torch.split(backbone(csi), batch)
        targets = torch.split(pos, batch)
        total = torch.zeros((), device=device)
        for head, f, p in zip(heads, feats, targets, strict=True):
            total = total + mse_loss(head(f)[0], p)
        opt.zero_grad(set_to_none=True)
        total.backward()  # type: ignore[no-untyped-call]
        opt.step()

    for _ in range(3):  # warm-up
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps * envs * batch / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--envs", type=int, default=4)
    ap.add_argument("--samples", type=int, default=1000, help="samples per environment")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    logging.basicConfig(level=logging.WARNING)

    cfg = TrainConfig(
        epochs=1, min_steps=0, patience=1, batch_size=args.batch_size, val_fraction=0.1
    )
    envs = {
        f"env{k}": SourceData.split(synthetic_env(args.samples, k), cfg.val_fraction, 0)
        for k in range(args.envs)
    }
    steps = math.ceil(args.samples * 0.9 / args.batch_size)
    # Rounds alternate one MEML epoch and one ceiling burst of the same number of
    # steps, so load from other processes hits both alike; the best round of each
    # is the least disturbed one.
    meml: list[float] = []
    top: list[float] = []
    for _ in range(args.rounds):
        meml.append(train_sources(envs, cfg, quiet=True, device=device).report.samples_per_s)
        top.append(ceiling(args.envs, args.batch_size, steps, device))
    print(
        f"device {device}, threads {torch.get_num_threads()}, {args.envs} envs x "
        f"{args.samples} samples, batch {args.batch_size}/env, {args.rounds} rounds"
    )
    print(f"MEML training     best {max(meml):7.0f}  median {np.median(meml):7.0f} samples/s")
    print(f"bare fwd+bwd loop best {max(top):7.0f}  median {np.median(top):7.0f} samples/s")
    print(
        f"ratio             best {max(meml) / max(top):7.2f}  median "
        f"{np.median(meml) / np.median(top):7.2f}"
    )


if __name__ == "__main__":
    main()
