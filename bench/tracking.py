"""UE tracking: filtered error against the snapshot estimates it filters, and the store's cost.

1. Accuracy. Simulated trajectories (`training.sim.trajectory`, mixed walking/forklift,
   10 Hz, 60 s, 4 per scene) through the 7 procedural families (corpus scenes 0-6).
   Each position gets a snapshot "estimate": per-sample sigmas (log-normal around
   `--sigma` per axis, reported as the estimate's sigma), Gaussian errors with those
   sigmas that are correlated in time (AR(1), `--rho` per 0.1 s: fingerprint errors are
   alike at nearby spots), and a share `--outliers` of gross errors (5-20 m, sigma not
   inflated). The baseline is the snapshot ME; tracked rows print ME / snapshot ME, the
   p90, the share of points inside the track's 1- and 2-sigma ellipses (39.3 %, 86.5 %
   for a calibrated filter) and the gated share, per acceleration density q.
2. Store. `Tracker.update` per measurement with the in-process store and with Redis
   (a real `redis-server` on loopback, if installed), 100 UEs round robin.

    python3 bench/tracking.py [--sigma 1.0] [--rho 0.0 0.9] [--outliers 0.03]
        [--noise-scale 1 19] [--no-store]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import socket
import subprocess
import tempfile
import time

import numpy as np

from training.sim.procedural import procedural_scene
from training.sim.trajectory import TrajectoryConfig, sample_trajectories
from training.tracking import TrackerConfig, track

Q_GRID = (0.1, 0.3, 1.0, 3.0, 10.0)


def _estimates(
    truth: np.ndarray, sigma: float, rho: float, outliers: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Snapshot estimates of one track and their reported per-axis sigmas."""
    n = len(truth)
    sig = sigma * np.exp(rng.normal(0.0, 0.4, (n, 2)))
    white = rng.standard_normal((n, 2))
    z = np.empty((n, 2))
    z[0] = white[0]
    for i in range(1, n):  # unit-variance AR(1)
        z[i] = rho * z[i - 1] + np.sqrt(1 - rho * rho) * white[i]
    est = truth + z * sig
    gross = rng.random(n) < outliers
    angle = rng.uniform(0, 2 * np.pi, n)
    far = rng.uniform(5.0, 20.0, n)
    est[gross] = (
        truth[gross] + np.column_stack([np.cos(angle), np.sin(angle)])[gross] * far[gross, None]
    )
    return est, sig


def accuracy(
    sigma: float, rho: float, outliers: float, seed: int, scale: float, share: float
) -> None:
    rng = np.random.default_rng(seed)
    tracks = []
    for k in range(7):
        spec = procedural_scene(k, "corpus")
        tr = sample_trajectories(spec, TrajectoryConfig(4, 60.0), rng)
        for j in range(4):
            mine = tr.track == j
            truth = tr.pos[mine, :2]
            est, sig = _estimates(truth, sigma, rho, outliers, rng)
            tracks.append((tr.time[mine], truth, est, sig))
    raw = np.concatenate([np.linalg.norm(e - t, axis=1) for _, t, e, _ in tracks])
    print(
        f"\nsigma {sigma} m, rho {rho}, outliers {outliers:.0%}: {len(tracks)} tracks, "
        f"{len(raw)} samples, noise_scale {scale}, error_share {share}; "
        f"snapshot ME {raw.mean():.3f} m, p90 {np.quantile(raw, 0.9):.3f} m"
    )
    print(f"{'q m2/s3':>8} {'ME':>7} {'ratio':>6} {'p90':>7} {'1sig':>6} {'2sig':>6} {'gated':>6}")
    for q in Q_GRID:
        config = TrackerConfig(accel_psd=q, noise_scale=scale, error_share=share)
        errs, m2, gated = [], [], []
        for t, truth, est, sig in tracks:
            covs = np.zeros((len(t), 2, 2))
            covs[:, 0, 0], covs[:, 1, 1] = sig[:, 0] ** 2, sig[:, 1] ** 2
            out = track(t, est, covs, config)
            e = out.position - truth
            errs.append(np.linalg.norm(e, axis=1))
            m2.append(np.einsum("ni,nij,nj->n", e, np.linalg.inv(out.cov), e))
            gated.append(out.gated)
        err, d2 = np.concatenate(errs), np.concatenate(m2)
        print(
            f"{q:>8} {err.mean():7.3f} {err.mean() / raw.mean():6.2f} "
            f"{np.quantile(err, 0.9):7.3f} {np.mean(d2 <= 1.0):6.1%} {np.mean(d2 <= 4.0):6.1%} "
            f"{np.concatenate(gated).mean():6.1%}"
        )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _updates(tracker: object, n: int) -> float:
    from service.tracking import Tracker

    assert isinstance(tracker, Tracker)
    cov = np.eye(2)
    start = time.perf_counter()
    for i in range(n):
        ue = f"ue{i % 100}"
        await tracker.update("site", "site", ue, 1.0 + i * 0.01, np.array([1.0, 2.0]), cov, "x")
    return (time.perf_counter() - start) / n


def store_cost(n: int) -> None:
    from service.tracking import MemoryTrackStore, RedisTrackStore, Tracker

    config = TrackerConfig()
    memory = asyncio.run(_updates(Tracker(MemoryTrackStore(10_000, 10.0), config), n))
    print(f"\nstore: in-process {memory * 1e6:.0f} us per update (baseline)")
    if shutil.which("redis-server") is None:
        print("store: redis-server not installed, Redis skipped")
        return
    port = _free_port()
    with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.Popen(
            ["redis-server", "--port", str(port), "--save", "", "--appendonly", "no"],
            cwd=tmp,
            stdout=subprocess.DEVNULL,
        )
        try:
            time.sleep(0.5)
            store = RedisTrackStore(f"redis://127.0.0.1:{port}/0", 10_000, 10.0)

            async def run() -> float:
                try:
                    return await _updates(Tracker(store, config), n)
                finally:
                    await store.aclose()

            redis = asyncio.run(run())
            print(f"store: Redis {redis * 1e6:.0f} us per update ({redis / memory:.1f}x)")
        finally:
            proc.terminate()
            proc.wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sigma", type=float, default=1.0)
    ap.add_argument("--rho", type=float, nargs="+", default=[0.0, 0.9])
    ap.add_argument("--outliers", type=float, default=0.03)
    ap.add_argument("--updates", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--noise-scale", type=float, nargs="+", default=[1.0])
    ap.add_argument(
        "--error-share",
        type=float,
        nargs="+",
        default=[0.0],
        help="TrackerConfig.error_share (0: the white-noise filter, as in bench/tracking.md)",
    )
    ap.add_argument("--no-store", action="store_true", help="Skip the store timing.")
    args = ap.parse_args()
    print(f"load: {os.getloadavg()}")
    for rho in args.rho:
        for scale in args.noise_scale:
            for share in args.error_share:
                accuracy(args.sigma, rho, args.outliers, args.seed, scale, share)
    if not args.no_store:
        store_cost(args.updates)


if __name__ == "__main__":
    main()
