# ruff: noqa: T201  (a report script: it prints a markdown table)
"""What an `auto` that also trained the fresh-dense run would pick: per lab-seed, the arm
(MEML fine-tuning, fresh `dense`, scratch) with the lowest validation ME or validation NLL
in the versions' manifests, and its test ME over scratch's.

python3 docs/results/transfer/layers/pick.py OUT_DIR     # OUT_DIR of scripts/eval-unlabelled-tracks
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

ARMS = {
    "meml": "meml-finetune",
    "fresh dense": "meml-reinit-dense-finetune",
    "scratch": "scratch-scratch",
}


def main(out: Path) -> None:
    sites = out / "models" / "sites"
    picks: dict[str, list[float]] = {"validation ME": [], "validation NLL": []}
    print("| target | seed | test ME: MEML / fresh dense / scratch | pick by ME | pick by NLL |")
    print("|---|---|---|---|---|")
    for target in ("lab-los", "lab-nlos"):
        for seed in range(10):
            metrics = {}
            for arm, tag in ARMS.items():
                manifest = sites / f"s{target}-{tag}-{seed}" / "versions" / "v1" / "manifest.json"
                if manifest.exists():
                    metrics[arm] = json.loads(manifest.read_text())["metrics"]
            if len(metrics) < len(ARMS):
                continue
            test = {a: float(m["test"]["me"]) for a, m in metrics.items()}
            by_me = min(metrics, key=lambda a: float(metrics[a]["me"]))
            by_nll = min(metrics, key=lambda a: float(metrics[a]["nll"]))
            picks["validation ME"].append(test[by_me] / test["scratch"])
            picks["validation NLL"].append(test[by_nll] / test["scratch"])
            tests = " / ".join(f"{test[a]:.3f}" for a in ARMS)
            print(f"| {target} | {seed} | {tests} | {by_me} | {by_nll} |")
    for how, ratios in picks.items():
        g = math.exp(sum(math.log(r) for r in ratios) / len(ratios))
        print(f"\nPicked by {how}: test ME / scratch {g:.3f} (geometric mean of {len(ratios)})")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
