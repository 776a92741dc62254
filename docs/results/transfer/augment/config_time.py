#!/usr/bin/env python3
"""`auto` on bench/adapt_time.py's toy site with two values of one `TrainConfig` field
alternating, 2 torch threads: a time check measured against its baseline in the same
run (preregistered.md: "The epoch cap", check (d); "The plateau schedule's patience in
the product", check (e)).

    PYTHONPATH=. nice -n 10 python3 docs/results/transfer/augment/config_time.py \
        FIELD BASELINE CANDIDATE [SAMPLES] [ROUNDS]
    # e.g. config_time.py epochs 100 200 600 2; config_time.py lr_patience 4 9 600 2
"""

# ruff: noqa: T201
from __future__ import annotations

import functools
import logging
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from tests.training.toychannel import toy_fingerprints
from training.checkpoint import save_backbone
from training.config import TrainConfig
from training.nets import Backbone
from training.repository import ModelRepository
from training.transfer import adapt_site


def alternate(
    arms: dict[str, Callable[[], TrainConfig]], samples: int, rounds: int
) -> tuple[dict[str, list[float]], dict[str, list[str]]]:
    """Seconds (and the chosen mode's steps) of `auto` on the toy site per arm, the arms
    alternating each round; an arm's callable sets it up and returns its config."""
    torch.set_num_threads(2)
    logging.basicConfig(level=logging.ERROR)
    data = toy_fingerprints(samples, (5.0, -2.0), seed=7, size=(12.0, 9.0))
    times: dict[str, list[float]] = {a: [] for a in arms}
    steps: dict[str, list[str]] = {a: [] for a in arms}
    with tempfile.TemporaryDirectory() as tmp:
        repo = ModelRepository(Path(tmp) / "models")
        save_backbone(repo, "meml", Backbone(seed=0), loss="nll")
        for r in range(rounds):
            for i, (a, setup) in enumerate(arms.items()):
                config = setup()
                t0 = time.perf_counter()
                res = adapt_site(repo, f"arm{i}-{r}", data, mode="auto", loss="nll", config=config)
                times[a].append(round(time.perf_counter() - t0, 1))
                steps[a].append(f"{res.chosen_mode} {res.steps}")
    return times, steps


def main(field: str, values: tuple[int, int], samples: int, rounds: int) -> None:
    arms = {str(v): functools.partial(TrainConfig().replace, **{field: v}) for v in values}
    times, steps = alternate(arms, samples, rounds)
    for v, t in times.items():
        print(f"{field} {v}: median {statistics.median(t):.1f} s {t} {steps[v]}")
    base, cand = (str(v) for v in values)
    print(f"{cand} / {base}: {statistics.median(times[cand]) / statistics.median(times[base]):.2f}")


if __name__ == "__main__":
    a = sys.argv
    main(
        a[1],
        (int(a[2]), int(a[3])),
        int(a[4]) if len(a) > 4 else 600,
        int(a[5]) if len(a) > 5 else 2,
    )
