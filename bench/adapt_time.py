"""Wall time of one site adaptation in the default mode (`auto`), against plain fine-tuning.

The training issue's target: `auto` adaptation of 600 labelled samples in under 60 s on
2 idle cores. `auto` trains three candidates (finetune, gradual, head) and keeps the best,
so its cost is printed as a ratio to one `finetune` run on the same data in the same
process (the baseline), alongside the absolute seconds, and `auto` with the
error-selected cosine recipe (``select="me"``, ``schedule="cosine"``) against the
default, so a loaded machine still tells what that recipe costs, and `auto` without the
labelled CSI's augmented copies (``augment_copies=0``; the default trains every candidate
on the labels and 3 perturbed copies of each, `training.augment`).
Data: a ray-traced-like toy channel (the training tests' `toychannel`), so the run
needs no simulator; or, with ``--data FILE --env ENV``, ``--samples`` fingerprints of a
ray-traced environment drawn with a fixed seed. Use both: the toy channel stops early
and on 2026-12-06 took 51 s where a ray-traced lab took 95 s (bench/README.md). The
process keeps freed memory as the training commands and adaptation workers do
(`training.allocator`).

    python3 bench/adapt_time.py [--samples 600] [--threads 2] [--rounds 2]
        [--data labs.h5 --env lab-los] [--arms finetune,auto]
"""

from __future__ import annotations

import argparse
import logging
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from tests.training.toychannel import toy_fingerprints
from training.allocator import keep_freed_memory
from training.checkpoint import save_backbone
from training.config import TargetMode, TrainConfig
from training.data.fingerprints import read_environment
from training.nets import Backbone
from training.repository import ModelRepository
from training.transfer import adapt_site

SHIPPED = Path(__file__).resolve().parents[1] / "models"
ARMS = ("finetune", "auto", "auto-me", "auto-plain")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=600)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--data", type=Path, help="HDF5 fingerprint file (default: the toy channel)")
    ap.add_argument("--env", help="environment in --data")
    ap.add_argument("--arms", default=",".join(ARMS), help=f"some of {','.join(ARMS)}")
    args = ap.parse_args()
    arms = args.arms.split(",")
    if not {"finetune", "auto"} <= set(arms) <= set(ARMS):
        ap.error(f"--arms: finetune and auto, and any of {ARMS[2:]}")
    torch.set_num_threads(args.threads)
    kept = keep_freed_memory()
    logging.basicConfig(level=logging.WARNING)
    if args.data is None:
        data = toy_fingerprints(args.samples, (5.0, -2.0), seed=7, size=(12.0, 9.0))
        source = "the toy channel"
    else:
        if args.env is None:
            ap.error("--data needs --env")
        every = read_environment(args.data, args.env)
        pick = np.random.default_rng(7).choice(len(every), size=args.samples, replace=False)
        data = every.subset(np.sort(pick))
        source = f"{args.data}:{args.env}"
    times: dict[str, list[float]] = {arm: [] for arm in arms}
    configs = {
        "auto-me": TrainConfig(select="me", schedule="cosine"),
        "auto-plain": TrainConfig(augment_copies=0),
    }
    chosen: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        repo = ModelRepository(Path(tmp) / "models")
        if args.data is None:
            save_backbone(repo, "meml", Backbone(seed=0), loss="nll")
        else:  # the shipped repository, as `csipos train site --out models` adapts
            shutil.copytree(SHIPPED, repo.root, dirs_exist_ok=True)
        for r in range(args.rounds):
            # Alternate the arms so load from other processes hits them alike.
            for arm in times:
                mode: TargetMode = "finetune" if arm == "finetune" else "auto"
                config = configs.get(arm, TrainConfig())
                t0 = time.perf_counter()
                result = adapt_site(repo, f"{arm}-{r}", data, mode=mode, loss="nll", config=config)
                times[arm].append(time.perf_counter() - t0)
                if arm == "auto":
                    chosen.append(result.chosen_mode)
    ft, auto = statistics.median(times["finetune"]), statistics.median(times["auto"])
    print(
        f"{args.samples} samples of {source}, {args.threads} threads, {args.rounds} rounds, "
        f"freed memory kept: {kept} "
        f"(default TrainConfig: min {TrainConfig().min_steps} steps, patience "
        f"{TrainConfig().patience} validations, {TrainConfig().augment_copies} augmented "
        "copies of each label)"
    )
    print(f"finetune adaptation  median {ft:6.1f} s  (runs {times['finetune']})")
    print(f"auto adaptation      median {auto:6.1f} s  (chose {chosen})")
    print(f"ratio auto / finetune       {auto / ft:6.2f}")
    if times.get("auto-me"):
        me = statistics.median(times["auto-me"])
        print(f"auto, select me      median {me:6.1f} s  (cosine schedule)")
        print(f"ratio auto (me) / auto      {me / auto:6.2f}")
    if times.get("auto-plain"):
        plain = statistics.median(times["auto-plain"])
        print(f"auto, no copies      median {plain:6.1f} s  (augment_copies=0)")
        print(f"ratio auto / no copies      {auto / plain:6.2f}")


if __name__ == "__main__":
    main()
