#!/usr/bin/env python3
"""`auto` with augmented labels, its budget counted two ways (preregistered.md, "The
budget counted over the labelled fingerprints"): ``copies``, as shipped when it ran
(evaluation interval, epoch cap and patience in passes over the labels and their
copies), and ``labelled`` (in passes over the labelled fingerprints alone; every step
still draws from the copies). The split, arm and row are ../sources-mix/arm.py's.

The 500-label rows ran on main at 0c2ed99, where the product counted the copies and
this script divided for ``labelled``. Since fd84c7a the product counts the labelled
fingerprints itself, so the script now patches the other way (``copies`` multiplies the
count by 1 + copies, ``labelled`` is the product as it is): the same two budgets. The
200-label rows ran that way, on main at 268be35 (preregistered.md, "The labelled budget at
200 labels").

    passes.py run DATA ENV SEED BUDGET OUT.jsonl [LABELS] [COPIES]   # one row
    passes.py time [SAMPLES] [ROUNDS]                               # bench/adapt_time.py's data
"""

# ruff: noqa: T201
from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import training.transfer as transfer
from training.config import TargetMode, TrainConfig
from training.fit import Phase

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "sources-mix"))
sys.path.insert(0, str(Path(__file__).resolve().parents[4]))
from arm import augment_note, write_row
from pair import arm_start, target_split

BUDGETS = ("copies", "labelled")
_SHIPPED = transfer.target_phases


def use_budget(budget: str, copies: int) -> None:
    """Make `auto`'s candidates count their budget as ``budget`` says."""
    if budget not in BUDGETS:
        raise SystemExit(f"budget {budget!r}: expected one of {BUDGETS}")

    def over_copies(mode: TargetMode, config: TrainConfig, n_train: int) -> list[Phase]:
        return _SHIPPED(mode, config, n_train * (1 + copies))

    transfer.target_phases = over_copies if budget == "copies" else _SHIPPED  # type: ignore[assignment]


def run(data: str, env: str, seed: int, budget: str, out: Path, labels: int, copies: int) -> None:
    train, val, test, cfg = target_split(data, env, seed, labels)
    cfg = cfg.replace(augment_copies=copies)
    use_budget(budget, copies)
    backbone, _ = arm_start("corpus")
    t0 = time.time()
    r = transfer.train_target(backbone, train, val, cfg, mode="auto", quiet=True)
    write_row(
        out,
        env,
        seed,
        "corpus",
        "auto",
        r,
        len(train) + len(val),
        test,
        t0,
        augment=augment_note(copies),
        budget=budget,
    )


def time_both(samples: int, rounds: int) -> None:
    """`auto` on bench/adapt_time.py's toy site, both budgets alternating, 2 threads."""
    from config_time import alternate

    def arm(budget: str) -> Callable[[], TrainConfig]:
        def setup() -> TrainConfig:
            use_budget(budget, TrainConfig().augment_copies)
            return TrainConfig()

        return setup

    times, _ = alternate({b: arm(b) for b in BUDGETS}, samples, rounds)
    med = {b: statistics.median(t) for b, t in times.items()}
    print(f"{samples} samples, 2 threads, {rounds} rounds: {times}")
    print(f"labelled / copies: {med['labelled'] / med['copies']:.2f}")


if __name__ == "__main__":
    a = sys.argv
    if a[1] == "time":
        time_both(int(a[2]) if len(a) > 2 else 600, int(a[3]) if len(a) > 3 else 2)
    else:
        run(
            a[2],
            a[3],
            int(a[4]),
            a[5],
            Path(a[6]),
            int(a[7]) if len(a) > 7 else 500,
            int(a[8]) if len(a) > 8 else 3,
        )
