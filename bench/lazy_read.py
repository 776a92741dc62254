"""Lazy reads alone: samples/s that `LazyRows` streams deliver with 0..W reader processes.

The trainer draws ``--envs-per-step`` environments a step and one batch from each, as
MEML does; here nothing trains, so this is the rate a device could at most be fed at
(bench/README.md, "Lazy reads in reader processes"). Rounds alternate the worker counts,
so load from other processes hits each alike; the ratio is against 0 workers in the
same run.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from concurrent.futures import Executor
from pathlib import Path

import numpy as np
import torch

from training.data.fingerprints import EnvironmentMeta, Fingerprints, write_environment
from training.data.lazy import LazyRows
from training.data.prefetch import reader_pool


def smooth_env(n: int, seed: int) -> Fingerprints:
    """CSI smooth over subcarriers, so gzip works about as hard as on ray-traced data."""
    rng = np.random.default_rng(seed)
    base = rng.standard_normal((n, 8, 1, 2), dtype=np.float32)
    ripple = 0.1 * rng.standard_normal((n, 8, 103, 2), dtype=np.float32)
    return Fingerprints(csi=base + ripple, pos=rng.uniform(0, 30, (n, 2)).astype(np.float32))


def rate(
    path: Path,
    envs: int,
    samples: int,
    per_step: int,
    batch: int,
    steps: int,
    pool: Executor | None,
) -> float:
    """Samples/s over ``steps`` steps after one warm-up step (fresh streams each round)."""
    gen = torch.Generator().manual_seed(0)
    pick = torch.Generator().manual_seed(1)
    streams = [
        LazyRows(path, f"env{k}", np.arange(samples)).stream(batch, gen, pool) for k in range(envs)
    ]

    def step() -> int:
        drawn = torch.randperm(envs, generator=pick)[:per_step].tolist()
        return sum(len(next(streams[e])[0]) for e in drawn)

    step()
    t0 = time.perf_counter()
    n = sum(step() for _ in range(steps))
    return n / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--envs", type=int, default=64)
    ap.add_argument("--samples", type=int, default=1024, help="samples per environment")
    ap.add_argument("--envs-per-step", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=512)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--workers", default="0,1,2", help="reader processes to compare")
    args = ap.parse_args()
    counts = [int(w) for w in args.workers.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.h5"
        meta = EnvironmentMeta(bs_position=(0.0, 0.0, 3.0), description="bench")
        for k in range(args.envs):
            write_environment(path, f"env{k}", smooth_env(args.samples, k), meta)
        pools = {w: reader_pool(w) if w else None for w in counts}
        try:
            seen: dict[int, list[float]] = {w: [] for w in counts}
            for _ in range(args.rounds):
                for w in counts:
                    seen[w].append(
                        rate(
                            path,
                            args.envs,
                            args.samples,
                            args.envs_per_step,
                            args.batch_size,
                            args.steps,
                            pools[w],
                        )
                    )
        finally:
            for pool in pools.values():
                if pool is not None:
                    pool.shutdown(cancel_futures=True)
    print(
        f"{args.envs} envs x {args.samples} samples, {args.envs_per_step} envs/step x batch "
        f"{args.batch_size}, {args.steps} steps/round, {args.rounds} rounds"
    )
    base = float(np.median(seen[counts[0]]))
    for w in counts:
        best, med = max(seen[w]), float(np.median(seen[w]))
        print(
            f"reader processes {w}: best {best:8.0f}  median {med:8.0f} samples/s  "
            f"median / {counts[0]} workers {med / base:5.2f}"
        )


if __name__ == "__main__":
    main()
