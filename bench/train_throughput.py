"""MEML training throughput against its ceiling: a bare forward+backward loop of the same model.

MEML here is the real `training.meml.train_sources` (one validation of every
environment, early-stopping bookkeeping and best-state snapshots included). The
ceiling runs the same backbone and heads on random tensors of the same batch
shape with the same optimizer and no data handling at all. Both count training
samples per second (all environments together).

``--envs-per-step k`` draws k environments a step (`TrainConfig.envs_per_step`);
``--batched on`` trains the heads as one `BatchedHeads` (gather + bmm, row-wise
Adam), and the ceiling then uses the batched heads too; ``off`` separate heads
(the ceiling too); ``auto`` (default) as `TrainConfig` decides (batched above 8
environments or when sampling). ``--lazy`` writes the environments to an HDF5
file and trains from `LazyRows` (CSI read from the file as batches are drawn).

    python3 bench/train_throughput.py [--envs 4] [--envs-per-step 0] [--samples 1000]
        [--batch-size 64] [--steps 0] [--rounds 5] [--batched auto|on|off] [--lazy]
        [--threads N] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import logging
import math
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from training.config import TrainConfig
from training.data.fingerprints import EnvironmentMeta, Fingerprints, write_environment
from training.fit import BATCH_HEADS_ABOVE, _RowAdam
from training.losses import mse_loss
from training.meml import SourceData, train_sources
from training.nets import Backbone, BatchedHeads, Head


def synthetic_env(n: int, seed: int) -> Fingerprints:
    rng = np.random.default_rng(seed)
    csi = rng.standard_normal((n, 8, 103, 2), dtype=np.float32)
    pos = rng.uniform(0, 30, (n, 2)).astype(np.float32)
    return Fingerprints(csi=csi, pos=pos)


def ceiling(
    envs: int, per_step: int, batch: int, steps: int, batched: bool, device: torch.device
) -> float:
    """Samples/s of forward+backward+Adam on random tensors, no data pipeline.

    ``per_step`` of the ``envs`` heads take part in a step (the first ones: which
    ones does not change the cost); the others still sit in the optimizer.
    """
    backbone = Backbone(seed=0).to(device)
    heads = [Head(seed=1 + k).to(device) for k in range(envs)]
    csi = torch.randn(per_step * batch, 8, 103, 2, device=device)
    pos = torch.randn(per_step, batch, 2, device=device)
    if batched:
        stacked = BatchedHeads(heads)
        rows = torch.arange(per_step, device=device)
        row_opt = _RowAdam(stacked.parameters(), lr=1e-3)
        row_opt.rows = rows
        opts: list[torch.optim.Optimizer] = [
            torch.optim.Adam(backbone.parameters(), lr=1e-3),
            row_opt,
        ]
    else:
        params = list(backbone.parameters()) + [p for h in heads for p in h.parameters()]
        opts = [torch.optim.Adam(params, lr=1e-3)]

    def step() -> None:
        feats = backbone(csi)
        if batched:
            out, _ = stacked(feats.view(per_step, batch, -1), rows)
            total = (out - pos).square().sum(-1).mean(1).sum()
        else:
            total = torch.zeros((), device=device)
            for head, f, p in zip(heads, torch.split(feats, batch), pos, strict=False):
                total = total + mse_loss(head(f)[0], p)
        for o in opts:
            o.zero_grad(set_to_none=True)
        total.backward()  # type: ignore[no-untyped-call]
        for o in opts:
            o.step()

    for _ in range(3):  # warm-up
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps * per_step * batch / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--envs", type=int, default=4)
    ap.add_argument("--envs-per-step", type=int, default=0, help="0: all environments")
    ap.add_argument("--samples", type=int, default=1000, help="samples per environment")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--steps", type=int, default=0, help="steps per round (0: one epoch)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--batched", choices=("auto", "on", "off"), default="auto")
    ap.add_argument("--lazy", action="store_true", help="train from the HDF5 file (LazyRows)")
    ap.add_argument(
        "--read-workers", type=int, default=0, help="--lazy: reader processes (0: in the trainer)"
    )
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    logging.basicConfig(level=logging.WARNING)

    per_step = args.envs_per_step if 0 < args.envs_per_step < args.envs else args.envs
    batched = {"on": True, "off": False, "auto": None}[args.batched]
    batched_eff = (
        batched if batched is not None else (per_step < args.envs or args.envs > BATCH_HEADS_ABOVE)
    )
    n_train = args.samples - max(1, round(args.samples * 0.1))
    steps = args.steps or math.ceil(n_train * args.envs / (args.batch_size * per_step))
    cfg = TrainConfig(
        epochs=10**6,
        min_steps=0,
        max_steps=steps,
        eval_every=steps,
        patience=1,
        batch_size=args.batch_size,
        val_fraction=0.1,
        envs_per_step=args.envs_per_step,
        batched_heads=batched,
        calibrate_sigma=False,
    )
    with tempfile.TemporaryDirectory() as tmp:
        if args.lazy:
            path = Path(tmp) / "bench.h5"
            meta = EnvironmentMeta(bs_position=(0.0, 0.0, 3.0), description="bench")
            for k in range(args.envs):
                write_environment(path, f"env{k}", synthetic_env(args.samples, k), meta)
        envs = {
            f"env{k}": (
                SourceData.from_file(path, f"env{k}", cfg.val_fraction, 0, lazy=True)
                if args.lazy
                else SourceData.split(synthetic_env(args.samples, k), cfg.val_fraction, 0)
            )
            for k in range(args.envs)
        }
        # Rounds alternate one MEML run and one ceiling burst of the same number of
        # steps, so load from other processes hits both alike; the best round of each
        # is the least disturbed one.
        # Warm-up: the first run pays one-time costs (lazy imports, allocator) that the
        # ceiling's warm-up steps also leave out.
        train_sources(
            envs,
            cfg.replace(max_steps=2, eval_every=2),
            quiet=True,
            device=device,
            read_workers=args.read_workers,
        )
        meml: list[float] = []
        top: list[float] = []
        for _ in range(args.rounds):
            result = train_sources(
                envs, cfg, quiet=True, device=device, read_workers=args.read_workers
            )
            meml.append(result.report.samples_per_s)
            top.append(ceiling(args.envs, per_step, args.batch_size, steps, batched_eff, device))
    print(
        f"device {device}, threads {torch.get_num_threads()}, {args.envs} envs x "
        f"{args.samples} samples, {per_step} envs/step x batch {args.batch_size}, "
        f"{steps} steps/round, heads {'batched' if batched_eff else 'separate'}, "
        f"{f'lazy (HDF5, {args.read_workers} reader processes)' if args.lazy else 'in memory'}, "
        f"{args.rounds} rounds"
    )
    print(f"MEML training     best {max(meml):7.0f}  median {np.median(meml):7.0f} samples/s")
    print(f"bare fwd+bwd loop best {max(top):7.0f}  median {np.median(top):7.0f} samples/s")
    print(
        f"ratio             best {max(meml) / max(top):7.2f}  median "
        f"{np.median(meml) / np.median(top):7.2f}"
    )


if __name__ == "__main__":
    main()
