#!/usr/bin/env python3
# ruff: noqa: T201
"""`auto` with and without its `gradual` candidate, paired: one training of every
candidate per site-seed (`training.transfer.auto_candidates`, the code `auto` runs, with
the product's default recipe: Gaussian NLL, 3 augmented copies below 1,000 labels), then
`choose_mode` over all of them and over all but ``gradual``, each choice scored on the
same held-out test set, with every candidate's training time. The split is
`adapt_site`'s (../fresh-dense/pair.py `target_split`), the default backbone.

    pair.py run DATA ENV SEED OUT.jsonl LABELS   # appends one row
    pair.py table OUT.jsonl                      # the markdown tables, one per budget
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

import numpy as np
import torch

from training.config import TrainConfig
from training.transfer import choose_mode

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "fresh-dense"))
from pair import (  # the same split as the fresh-dense pairs
    KEPT,
    gmean,
    target_split,
    tested_candidates,
)

DROPPED = "gradual"


def run(data: str, env: str, seed: int, out: Path, labels: int) -> None:
    train, val, test, cfg = target_split(data, env, seed, labels)
    cfg = cfg.replace(augment_copies=TrainConfig().augment_copies)  # the product's default
    runs, tests, wall = tested_candidates(train, val, test, cfg)
    every = choose_mode(runs.scores, runs.val_me, runs.folds)
    without = choose_mode(
        {k: v for k, v in runs.scores.items() if k != DROPPED}, runs.val_me, runs.folds
    )
    row = {
        "env": env,
        "seed": seed,
        "labels": len(train) + len(val),
        "train": len(train),
        "val": len(val),
        "n_test": len(test),
        "copies": cfg.augment_copies,
        "chosen_every": every[0],
        "chosen_without": without[0],
        "val_score": {k: float(v.mean()) for k, v in runs.scores.items()},
        "test": {k: {m: t[m] for m in KEPT if m in t} for k, t in tests.items()},
        "steps": {k: r.steps for k, (_, r) in runs.runs.items()},
        # `head` continues from `gradual`'s warm-up, so each report counts the warm-up
        "fit_s": {k: round(r.wall_s, 1) for k, (_, r) in runs.runs.items()},
        "wall_s": round(wall, 1),
        "threads": torch.get_num_threads(),
    }
    with out.open("a") as f:
        f.write(json.dumps(row) + "\n")
    print(json.dumps(row))


def table(path: Path) -> str:
    rows = [json.loads(x) for x in path.read_text().splitlines()]
    out: list[str] = []
    for labels in sorted({r["labels"] for r in rows}):
        group = sorted(
            (r for r in rows if r["labels"] == labels), key=lambda r: (r["env"], r["seed"])
        )
        out += [
            f"### {labels} labels",
            "",
            "| target | seed | test ME (m): finetune / gradual / head | chose: every / without "
            "| ME without / every | time without / every |",
            "|---|---|---|---|---|---|",
        ]
        by: dict[str, dict[str, list[float]]] = {}
        for r in group:
            t = r["test"]
            me = {k: v["me"] for k, v in t.items()}
            e, w = r["chosen_every"], r["chosen_without"]
            ratio = me[w] / me[e]
            crps = t[w]["crps"] / t[e]["crps"]
            # without gradual: finetune and head (head's report includes the warm-up)
            time_ratio = (r["fit_s"]["finetune"] + r["fit_s"]["head"]) / r["wall_s"]
            group_name = "labs" if r["env"].startswith("lab") else "scenes"
            for key, value in (("me", ratio), ("crps", crps), ("time", time_ratio)):
                by.setdefault(group_name, {}).setdefault(key, []).append(value)
            cells = " / ".join(f"{me[n]:.3f}" for n in ("finetune", "gradual", "head"))
            out.append(
                f"| {r['env']} | {r['seed']} | {cells} | {e} / {w} | {ratio:.3f} "
                f"| {time_ratio:.2f} |"
            )
        out += [
            "",
            "| group | n | ME without / every: geometric mean, max | CRPS, geometric mean "
            "| time without / every: median |",
            "|---|---|---|---|---|",
        ]
        for name, v in sorted(by.items()):
            me_r = np.asarray(v["me"])
            out.append(
                f"| {name} | {len(me_r)} | {gmean(list(me_r)):.4f}, {me_r.max():.3f} "
                f"| {gmean(v['crps']):.4f} | {statistics.median(v['time']):.2f} |"
            )
        out.append("")
    return "\n".join(out)


if __name__ == "__main__":
    if sys.argv[1] == "run":
        torch.set_num_threads(1)
        run(sys.argv[2], sys.argv[3], int(sys.argv[4]), Path(sys.argv[5]), int(sys.argv[6]))
    else:
        print(table(Path(sys.argv[2])))
