#!/usr/bin/env python3
"""`auto` on bench/adapt_time.py's toy site with `epochs` 100 and 200 alternating, 2 torch
threads (preregistered.md, "The epoch cap", check (d) measured against its baseline in
the same run).

    PYTHONPATH=. nice -n 10 python3 docs/results/transfer/augment/epochs_time.py [SAMPLES] [ROUNDS]
"""

# ruff: noqa: T201
from __future__ import annotations

import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from tests.training.toychannel import toy_fingerprints
from training.checkpoint import save_backbone
from training.config import TrainConfig
from training.nets import Backbone
from training.repository import ModelRepository
from training.transfer import adapt_site


def main(samples: int, rounds: int) -> None:
    torch.set_num_threads(2)
    logging.basicConfig(level=logging.ERROR)
    data = toy_fingerprints(samples, (5.0, -2.0), seed=7, size=(12.0, 9.0))
    times: dict[int, list[float]] = {100: [], 200: []}
    steps: dict[int, list[str]] = {100: [], 200: []}
    with tempfile.TemporaryDirectory() as tmp:
        repo = ModelRepository(Path(tmp) / "models")
        save_backbone(repo, "meml", Backbone(seed=0), loss="nll")
        for r in range(rounds):
            for epochs in times:
                t0 = time.perf_counter()
                res = adapt_site(
                    repo,
                    f"e{epochs}-{r}",
                    data,
                    mode="auto",
                    loss="nll",
                    config=TrainConfig(epochs=epochs),
                )
                times[epochs].append(round(time.perf_counter() - t0, 1))
                steps[epochs].append(f"{res.chosen_mode} {res.steps}")
    for epochs, t in times.items():
        print(f"epochs {epochs}: median {statistics.median(t):.1f} s {t} {steps[epochs]}")
    print(f"200 / 100: {statistics.median(times[200]) / statistics.median(times[100]):.2f}")


if __name__ == "__main__":
    a = sys.argv
    main(int(a[1]) if len(a) > 1 else 600, int(a[2]) if len(a) > 2 else 2)
