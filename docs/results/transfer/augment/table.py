#!/usr/bin/env python3
"""The augmentation pilot's table: augmented, exact copies (the control) and plain runs
(`../every-budget`, the head as `train_target` finishes it) on the same splits.

    table.py aug.jsonl same.jsonl autoaug.jsonl ../every-budget/budgets.jsonl \
        ../every-budget/scenes.jsonl

autoaug.jsonl: the default mode `auto`, plain and augmented (``augment`` in the row).
"""

# ruff: noqa: T201
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

Key = tuple[str, int, str]  # (env, seed, arm)


def rows(
    path: Path, plain: bool = False, augmented: bool | None = None
) -> dict[Key, dict[str, Any]]:
    """``path``'s rows by (env, seed, arm): with ``plain`` fine-tuned at 500 labels and
    finished by `train_target`; with ``augmented`` those with (or without) ``augment``."""
    out: dict[Key, dict[str, Any]] = {}
    for line in path.open():
        r = json.loads(line)
        if plain and (r["labels"] != 500 or r.get("mode") != "finetune" or "finished" not in r):
            continue
        if augmented is not None and ("augment" in r) != augmented:
            continue
        out[(r["env"], r["seed"], r["arm"])] = r
    return out


def group(env: str) -> str:
    return "8 scenes" if env.startswith("proc/") else "labs"


def cell(
    num: dict[Key, dict[str, Any]],
    den: dict[Key, dict[str, Any]],
    arm: str,
    g: str,
    metric: str = "me",
    den_arm: str | None = None,
) -> str:
    r = [
        num[k][metric] / den[(k[0], k[1], den_arm or arm)][metric]
        for k in sorted(num)
        if k[2] == arm and group(k[0]) == g and (k[0], k[1], den_arm or arm) in den
    ]
    if not r:
        return ""
    return f"{np.median(r):.3f} [{min(r):.2f}-{max(r):.2f}] ({sum(v < 1 for v in r)}/{len(r)})"


def main(aug_path: Path, same_path: Path, auto_path: Path, plain_paths: list[Path]) -> None:
    aug, same = rows(aug_path), rows(same_path)
    auto_aug, auto_plain = rows(auto_path, augmented=True), rows(auto_path, augmented=False)
    plain: dict[Key, dict[str, Any]] = {}
    for p in plain_paths:
        plain.update(rows(p, plain=True))
    ran = {k[:2] for k in aug}  # the plain runs on the pilot's target-seeds only
    plain = {k: r for k, r in plain.items() if k[:2] in ran}
    print("| group | ratio (median [range] (lower/n)) | ME | CRPS |")
    print("|---|---|---|---|")
    for g in ("labs", "8 scenes"):
        lines = [
            ("corpus: augmented / plain", aug, plain, "corpus", None),
            ("corpus: augmented / exact copies", aug, same, "corpus", None),
            ("corpus: exact copies / plain", same, plain, "corpus", None),
            ("scratch-pd: augmented / plain", aug, plain, "scratch-pd", None),
            ("scratch-pd: augmented / exact copies", aug, same, "scratch-pd", None),
            ("augmented: corpus / scratch-pd", aug, aug, "corpus", "scratch-pd"),
            ("exact copies: corpus / scratch-pd", same, same, "corpus", "scratch-pd"),
            ("plain: corpus / scratch-pd", plain, plain, "corpus", "scratch-pd"),
            ("corpus, `auto`: augmented / plain", auto_aug, auto_plain, "corpus", None),
            ("augmented: corpus `auto` / scratch-pd", auto_aug, aug, "corpus", "scratch-pd"),
            ("plain: corpus `auto` / scratch-pd", auto_plain, plain, "corpus", "scratch-pd"),
        ]
        for name, num, den, arm, den_arm in lines:
            me = cell(num, den, arm, g, "me", den_arm)
            crps = cell(num, den, arm, g, "crps", den_arm)
            print(f"| {g} | {name} | {me} | {crps} |")
    print()
    print(
        "| group | corpus in 1 / 2 sigma: plain | exact copies | augmented "
        "| steps (median): plain / copies / augmented |"
    )
    print("|---|---|---|---|---|")
    for g in ("labs", "8 scenes"):
        cov = []
        for d in (plain, same, aug):
            rs = [r for k, r in d.items() if k[2] == "corpus" and group(k[0]) == g]
            c1, c2 = (100 * np.median([r[c] for r in rs]) if rs else np.nan for c in ("c1", "c2"))
            cov.append(f"{c1:.1f} / {c2:.1f} %" if rs else "")
        steps = []
        for d in (plain, same, aug):
            rs = [
                sum(r["steps"].values())
                for k, r in d.items()
                if k[2] == "corpus" and group(k[0]) == g
            ]
            steps.append(f"{np.median(rs):.0f}" if rs else "")
        print(f"| {g} | " + " | ".join(cov) + " | " + " / ".join(steps) + " |")
    print()
    print(
        "| group | corpus `auto`, plain: in 1 / 2 sigma; wall s (median, max) "
        "| augmented: the same |"
    )
    print("|---|---|---|")
    for g in ("labs", "8 scenes"):
        out = []
        for d in (auto_plain, auto_aug):
            rs = [r for k, r in d.items() if k[2] == "corpus" and group(k[0]) == g]
            c1, c2 = (100 * np.median([r[c] for r in rs]) for c in ("c1", "c2"))
            wall = [r["wall_s"] for r in rs]
            out.append(f"{c1:.1f} / {c2:.1f} %; {np.median(wall):.0f}, {max(wall):.0f} s")
        print(f"| {g} | " + " | ".join(out) + " |")


if __name__ == "__main__":
    a = [Path(p) for p in sys.argv[1:]]
    main(a[0], a[1], a[2], a[3:])
