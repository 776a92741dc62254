"""Cost of a MAML / TB-MAML meta-step against a MEML step, measured in the same run.

Every variant trains the same fixed number of steps on the same sources (the
real `training.meta.train_meta` and `training.meml.train_sources`, validation
included), rounds alternate the variants so load from other processes hits all
alike, and the table reports seconds per step, samples drawn per second and
the ratio of a step's time to MEML's (median over rounds).

    nice -n 10 python3 bench/meta_step.py --data industrial.h5 --samples 600 --rounds 2

Without ``--data`` the sources are the toy channel (`tests/training/toychannel.py`).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from training.config import TrainConfig
from training.meml import SourceData, train_sources
from training.meta import train_meta


def _sources(data: Path | None, samples: int) -> dict[str, SourceData]:
    if data is None:
        from tests.training.toychannel import TOY_ENVS, toy_fingerprints

        return {
            env: SourceData.split(toy_fingerprints(samples, bs, seed=k), 0.1, 0)
            for k, (env, bs) in enumerate(TOY_ENVS.items())
        }
    from training.experiments.sources import read_capped

    envs = [f"industrial/bs{i}" for i in range(4)]
    return {e: SourceData.split(read_capped(data, e, samples, 0), 0.1, 0) for e in envs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=None)
    parser.add_argument("--samples", type=int, default=600, help="samples per environment")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    srcs = _sources(args.data, args.samples)
    cfg = TrainConfig(
        loss="nll", batch_size=64, min_steps=args.steps, max_steps=args.steps, eval_every=10
    )
    per_step = len(srcs) * cfg.batch_size
    variants: dict[str, tuple[Callable[[], object], int]] = {
        "MEML": (lambda: train_sources(srcs, cfg, quiet=True), per_step),
        "MAML 2nd order": (lambda: train_meta(srcs, cfg, variant="maml"), 2 * per_step),
        "TB-MAML 2nd order": (lambda: train_meta(srcs, cfg, variant="tb-maml"), 2 * per_step),
        "MAML 1st order": (
            lambda: train_meta(srcs, cfg.replace(first_order=True), variant="maml"),
            2 * per_step,
        ),
    }
    seconds: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.rounds):
        for name, (train, _) in variants.items():
            t0 = time.perf_counter()
            train()
            seconds[name].append((time.perf_counter() - t0) / args.steps)
    base = statistics.median(seconds["MEML"])
    print(f"load average {os.getloadavg()[0]:.1f}, {args.threads} thread(s), "
          f"{len(srcs)} envs x {args.samples} samples, batch {cfg.batch_size}\n")  # fmt: skip
    print("| variant | s/step (median) | samples drawn/s | step time / MEML |")
    print("|---|---:|---:|---:|")
    for name, (_, drawn) in variants.items():
        s = statistics.median(seconds[name])
        print(f"| {name} | {s:.2f} | {drawn / s:.0f} | {s / base:.1f} |")


if __name__ == "__main__":
    main()
