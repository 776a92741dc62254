"""Overhead of the Ray executor against the local process pool, on the quick experiment grid.

The same `quick` grid (2 sources + 128 runs, the CI preset, on the training
tests' toy channel) runs to completion with `--workers N` local processes and
as Ray tasks on a one-node Ray instance of N CPUs, alternately, each round in a
fresh out dir. Both get one torch thread a job. Printed: wall time of each
round and the ratio ray / local (the overhead of task submission, the object
store and the result round trip through the driver). Ray's start-up (its
processes, the first connection) is timed apart: a cluster is started once and
serves many grids. Then the per-job cost on its own: trivial jobs (`abs`)
through each executor, after a warm-up.

    PYTHONPATH=. OMP_NUM_THREADS=1 python3 bench/cluster.py [--cpus 2] [--rounds 2]
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import tempfile
import time
from pathlib import Path

import ray

from tests.training.experiments.conftest import ENVS
from tests.training.toychannel import toy_fingerprints
from training.cluster import ExecutorConfig, map_unordered, open_executor
from training.data.fingerprints import EnvironmentMeta, write_environment
from training.experiments.grid import QUICK
from training.experiments.runner import run_experiment


def _data(path: Path) -> Path:
    """The grid tests' file: four toy industrial BSs and two labs, 200 samples each."""
    for k, (env, bs) in enumerate(ENVS.items()):
        meta = EnvironmentMeta(bs_position=(bs[0], bs[1], 3.0), description="toy", source={"k": k})
        write_environment(path, env, toy_fingerprints(200, bs, seed=k), meta)
    return path


def _grid(data: Path, out: Path, config: ExecutorConfig) -> float:
    t0 = time.perf_counter()
    outcome = run_experiment(QUICK, data, out, seed=0, executor=config)
    wall = time.perf_counter() - t0
    if not outcome.complete or outcome.ran != len(QUICK.runs()):
        raise RuntimeError(f"{config.kind}: grid incomplete: {outcome.failed}")
    return wall


def _per_job_ms(config: ExecutorConfig, jobs: int) -> float:
    """Driver-side cost of one trivial job (`abs`), after a warm-up: submit, run, collect."""
    with open_executor(config) as ex:
        list(map_unordered(ex, abs, range(20)))  # workers started, imports done
        t0 = time.perf_counter()
        got = [v for _, v, _ in map_unordered(ex, abs, range(-jobs, 0))]
        wall = time.perf_counter() - t0
    if sorted(v for v in got if v is not None) != list(range(1, jobs + 1)):
        raise RuntimeError(f"{config.kind}: trivial jobs went wrong")
    return wall / jobs * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cpus", type=int, default=2, help="local workers = Ray CPUs")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--trivial", type=int, default=500, help="trivial jobs for the per-job cost")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    print(f"load before: {os.getloadavg()}")
    with tempfile.TemporaryDirectory(prefix="bench-cluster-") as tmp:
        root = Path(tmp)
        data = _data(root / "grid.h5")
        t0 = time.perf_counter()
        ray.init(num_cpus=args.cpus, include_dashboard=False, logging_level=logging.WARNING)
        start_s = time.perf_counter() - t0
        local_cfg = ExecutorConfig("local", workers=args.cpus)
        ray_cfg = ExecutorConfig("ray")  # uses the connection above
        walls: dict[str, list[float]] = {"local": [], "ray": []}
        try:
            per_job = {
                n: _per_job_ms(c, args.trivial) for n, c in (("local", local_cfg), ("ray", ray_cfg))
            }
            for r in range(args.rounds):
                # alternate who goes first, so a load change hits both alike
                order = [("local", local_cfg), ("ray", ray_cfg)]
                for name, cfg in order if r % 2 == 0 else order[::-1]:
                    wall = _grid(data, root / f"{name}-{r}", cfg)
                    walls[name].append(wall)
                    print(f"round {r} {name}: {wall:.1f} s  (load {os.getloadavg()[0]:.1f})")
        finally:
            ray.shutdown()
    ratios = [a / b for a, b in zip(walls["ray"], walls["local"], strict=True)]
    print(f"ray start-up (once per cluster): {start_s:.1f} s")
    print(
        f"per trivial job ({args.trivial} jobs, warm): local {per_job['local']:.2f} ms, "
        f"ray {per_job['ray']:.2f} ms, ratio {per_job['ray'] / per_job['local']:.1f}"
    )
    print(
        f"quick grid, {args.cpus} CPUs: local median {statistics.median(walls['local']):.1f} s, "
        f"ray median {statistics.median(walls['ray']):.1f} s"
    )
    print(
        f"ratio ray / local per round: {', '.join(f'{x:.2f}' for x in ratios)}; "
        f"median {statistics.median(ratios):.2f}"
    )
    print(f"load after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
