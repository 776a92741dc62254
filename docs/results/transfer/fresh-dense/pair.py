#!/usr/bin/env python3
"""`auto` with and without its fresh-dense candidate, paired: one training of every
candidate per site-seed (`training.transfer.auto_candidates`, the code `auto` runs), then
`choose_mode` over all of them and over all but ``fresh-dense``, each choice scored on
the same held-out test set. The split is `adapt_site`'s (``--holdout 0.2``, the fraction
that leaves LABELS labelled samples, validation 0.2 of those), the default backbone, the
product's default recipe.

    pair.py run DATA ENV SEED OUT.jsonl [LABELS]   # appends one row
    pair.py table OUT.jsonl                        # the markdown tables
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

from training.config import TrainConfig
from training.data.fingerprints import Fingerprints, read_environment
from training.data.splits import split_train_val, train_val_test
from training.metrics import evaluate_model, finish_head
from training.nets import Backbone, BackboneConfig
from training.repository import ModelRepository
from training.transfer import (
    FRESH_DENSE_CANDIDATE,
    AutoRuns,
    auto_candidates,
    choose_mode,
    holdout_split,
    starting_backbone,
)

HOLDOUT = 0.2
KEPT = ("me", "crps", "within_1sigma", "within_2sigma")
MODELS = Path(__file__).resolve().parents[4] / "models"


def arm_backbone(arm: str) -> Backbone | None:
    """The default backbone of the model repository at path ``arm``; None for ``scratch``."""
    if arm == "scratch":
        return None
    _, backbone, _ = starting_backbone(ModelRepository(Path(arm)), None)
    return backbone


SCRATCH_INPUTS = {"scratch": "raw", "scratch-pd": "phase-delay"}
"""The scratch arms and their inputs: ``scratch`` as `BackboneConfig`'s default (what the
studies before ../every-budget ran), ``scratch-pd`` as the backbones' (the fair baseline)."""


def arm_start(arm: str) -> tuple[Backbone | None, BackboneConfig | None]:
    """What arm ``arm`` trains from: (its repository's default backbone, None), or for a
    scratch arm (None, a backbone config with its `SCRATCH_INPUTS`)."""
    inputs = SCRATCH_INPUTS.get(arm)
    if inputs is not None:
        return None, BackboneConfig(inputs=inputs)
    return arm_backbone(arm), None


def target_split(
    data: str, env: str, seed: int, labels: int
) -> tuple[Fingerprints, Fingerprints, Fingerprints, TrainConfig]:
    """(train, val, test, the recipe): `adapt_site`'s split leaving ``labels`` labelled
    samples (also what ../sources-mix/arm.py trains on)."""
    fps = read_environment(data, env)
    pool_n = len(train_val_test(len(fps), 0.0, HOLDOUT, seed).train)
    pool, test = holdout_split(fps, HOLDOUT, min(1.0, labels / pool_n), seed)
    assert test is not None
    # no augmented labels: the recipe these studies ran (callers add copies explicitly)
    cfg = TrainConfig().replace(loss="nll", seed=seed, val_fraction=0.2, augment_copies=0)
    train, val = split_train_val(pool, cfg.val_fraction, cfg.seed)
    return train, val, test, cfg


def tested_candidates(
    train: Fingerprints, val: Fingerprints, test: Fingerprints, cfg: TrainConfig
) -> tuple[AutoRuns, dict[str, dict[str, float]], float]:
    """Every candidate of `auto` from the default backbone, each finished as `auto` ships
    it and tested on ``test``; and the candidates' training time in seconds."""
    _, backbone, _ = starting_backbone(ModelRepository(MODELS), None)
    assert backbone is not None
    t0 = time.time()
    runs = auto_candidates(backbone, train, val, cfg)
    wall = time.time() - t0
    tests = {}
    for name, (model, _) in runs.runs.items():
        finish_head(model.backbone, model.head, val, cfg, reference=train)
        tests[name] = evaluate_model(model.backbone, model.head, test)
    return runs, tests, wall


def run(data: str, env: str, seed: int, out: Path, labels: int) -> None:
    train, val, test, cfg = target_split(data, env, seed, labels)
    pool_size = len(train) + len(val)
    runs, tests, wall = tested_candidates(train, val, test, cfg)
    with_fd = choose_mode(runs.scores, runs.val_me, runs.folds)
    without = {k: v for k, v in runs.scores.items() if k != FRESH_DENSE_CANDIDATE}
    without_fd = choose_mode(without, runs.val_me, runs.folds)
    row = {
        "env": env,
        "seed": seed,
        "labels": pool_size,
        "train": len(train),
        "val": len(val),
        "n_test": len(test),
        "chosen_with": with_fd[0],
        "chosen_without": without_fd[0],
        "val_score": {k: float(v.mean()) for k, v in runs.scores.items()},
        "test": {k: {m: t[m] for m in KEPT if m in t} for k, t in tests.items()},
        "steps": {k: r.steps for k, (_, r) in runs.runs.items()},
        "wall_s": round(wall, 1),
        "threads": torch.get_num_threads(),
    }
    with out.open("a") as f:
        f.write(json.dumps(row) + "\n")
    sys.stdout.write(json.dumps(row) + "\n")


def gmean(x: list[float]) -> float:
    return math.exp(float(np.mean(np.log(x))))


def summary(name: str, r: np.ndarray) -> str:
    """Geometric mean, range, and how many site-seeds are lower and higher."""
    n = len(r)
    return (
        f"| {name} | {gmean(list(r)):.3f} | {r.min():.3f}-{r.max():.3f} "
        f"| {int((r < 1).sum())}/{n} | {int((r > 1).sum())}/{n} |"
    )


def table(path: Path) -> str:
    rows = [json.loads(x) for x in path.read_text().splitlines()]
    rows.sort(key=lambda r: (r["env"], r["seed"]))
    names = ["finetune", "gradual", "head", "scratch", FRESH_DENSE_CANDIDATE]
    lines = [
        "| target | seed | test ME (m): " + " / ".join(names) + " | `auto` chose: without / with "
        "fresh-dense | with / without | with / scratch |",
        "|---|---|---|---|---|---|",
    ]
    ratio_w, ratio_s, crps_w = [], [], []
    for r in rows:
        me = {k: v["me"] for k, v in r["test"].items()}
        w, wo = me[r["chosen_with"]], me[r["chosen_without"]]
        ratio_w.append(w / wo)
        ratio_s.append(w / me["scratch"])
        c = r["test"]
        crps_w.append(c[r["chosen_with"]]["crps"] / c[r["chosen_without"]]["crps"])
        cells = " / ".join(f"{me[n]:.3f}" for n in names)
        lines.append(
            f"| {r['env']} | {r['seed']} | {cells} | {r['chosen_without']} / {r['chosen_with']} "
            f"| {w / wo:.3f} | {w / me['scratch']:.3f} |"
        )
    a, b = np.asarray(ratio_w), np.asarray(ratio_s)
    lines += [
        "",
        "| over site-seeds | geometric mean | range | lower | higher |",
        "|---|---|---|---|---|",
        summary("ME, `auto` with / without fresh-dense", a),
        f"| CRPS, with / without | {gmean(crps_w):.3f} | | | |",
        summary("ME, `auto` with fresh-dense / scratch", b),
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    if sys.argv[1] == "run":
        torch.set_num_threads(1)
        labels = int(sys.argv[6]) if len(sys.argv) > 6 else 3000
        run(sys.argv[2], sys.argv[3], int(sys.argv[4]), Path(sys.argv[5]), labels)
    else:
        sys.stdout.write(table(Path(sys.argv[2])) + "\n")
