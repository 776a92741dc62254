"""Test ME per scene-seed of the four arms under both target recipes (`default.jsonl`,
`select-me.jsonl`: rows of scripts/eval-unlabelled-tracks) -> ``tracks.png``.

    python3 docs/results/transfer/tracks/figure.py
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

HERE = Path(__file__).parent
ARMS = ("scratch", "scratch+tracks", "meml", "meml+tracks")


def load(name: str) -> dict[tuple[str, int, str], float]:
    rows = [json.loads(line) for line in (HERE / name).read_text().splitlines()]
    return {(r["scene"], r["seed"], r["arm"]): float(r["me"]) for r in rows if "me" in r}


def main() -> None:
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.2), sharey=True)
    for ax, (name, title) in zip(
        axes,
        (
            ("default.jsonl", "default recipe (select=loss; scratch on raw inputs)"),
            ("select-me.jsonl", "select=me, cosine (scratch on phase-delay inputs)"),
        ),
        strict=True,
    ):
        me = load(name)
        keys = sorted({(s, seed) for s, seed, _ in me})
        x = np.arange(len(keys))
        for i, arm in enumerate(ARMS):
            values = [me.get((s, seed, arm), np.nan) for s, seed in keys]
            ax.bar(x + (i - 1.5) * 0.2, values, 0.2, label=arm.replace("+", " + "))
        ax.set_xticks(x, [f"s{s}/{seed}" for s, seed in keys], rotation=45, ha="right")
        ax.set_title(title, fontsize=10)
        ax.set_ylabel("test ME (m), 500 labels")
        ax.legend(fontsize=8)
    fig.suptitle("Unlabelled ray-traced tracks at adaptation: held-out scenes, BS 0 (scene/seed)")
    fig.tight_layout()
    fig.savefig(HERE / "tracks.png", dpi=110)


if __name__ == "__main__":
    main()
