#!/usr/bin/env python3
# ruff: noqa: T201  (a results script: its output is the table)
"""A joint head for any subset of the BSs (issue 13; offline, not in the product yet).

The served joint head needs every BS: a UE that one BS missed fuses the others alone.
Here one head takes every BS's frozen features with the absent BSs' zeroed plus one
presence bit per BS, trained with each BS dropped at random (``--drop``, at least one
kept), its checkpoint and sigma scale chosen on validation with every BS present. It is
scored on the never-used labelled positions with every BS and with each BS left out,
alone and fused (robust) with the BSs that remain, against the BSs' fusion and the
every-BS joint head of `joint.py` (same features, split, step budget and seeds).

    python3 docs/results/site-trust/joint/subsets.py SITE.h5 GROUP [--backbone models]
        [--seeds 0 1 2] [--steps 3000] [--drop 0.25 0.5]
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from joint import features, load_split, run, site_arguments, train_head, train_heads

from training.fusion import diag_cov, fuse_robust


def masked_input(f: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """[K, N, D] features and an [N, K] presence mask -> [N, K*D + K]."""
    x = f.transpose(1, 0, 2) * mask[:, :, None]
    return np.concatenate([x.reshape(len(mask), -1), mask], axis=1)


def drop_stations(k: int, p: float) -> Callable[[torch.Tensor, torch.Generator], torch.Tensor]:
    """A batch augmentation for `masked_input` rows: each BS absent with probability
    ``p`` (its features and presence bit zeroed), at least one BS kept."""

    def augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        mask = (torch.rand(len(x), k, generator=gen) > p).float()
        none = mask.sum(dim=1) == 0
        keep = torch.randint(0, k, (len(x),), generator=gen)
        mask[none, keep[none]] = 1.0
        d = (x.shape[1] - k) // k
        kept = x[:, : k * d].reshape(len(x), k, d) * mask[:, :, None]
        return torch.cat([kept.flatten(1), mask], dim=1)

    return augment


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    site_arguments(parser)
    parser.add_argument("--drop", type=float, nargs="+", default=[0.25, 0.5])
    args = parser.parse_args()
    backbone, data, train, val, unused = load_split(args)
    ftr, fva, fte = features(train, backbone), features(val, backbone), features(unused, backbone)
    k, n = len(data.bs_ids), len(unused)
    rows: dict[str, list[float]] = {}

    def me(mean: np.ndarray) -> float:
        return float(np.linalg.norm(mean - unused.pos, axis=1).mean())

    def add(name: str, value: float) -> None:
        rows.setdefault(name, []).append(value)

    for seed in args.seeds:
        heads, full = train_heads(ftr, fva, train.pos, val.pos, args.steps, seed)
        est = [run(h, fte[j]) for j, h in enumerate(heads)]
        masked = {
            p: train_head(
                masked_input(ftr, np.ones((len(train), k))),
                train.pos,
                masked_input(fva, np.ones((len(val), k))),
                val.pos,
                args.steps,
                seed,
                drop_stations(k, p),
            )
            for p in args.drop
        }
        for left_out in [None, *range(k)]:
            keep = [j for j in range(k) if j != left_out]
            mask = np.ones((n, k))
            tag = "every BS" if left_out is None else f"without {data.bs_ids[left_out]}"
            if left_out is not None:
                mask[:, left_out] = 0.0
            means = np.stack([est[j][0] for j in keep])
            covs = diag_cov(np.stack([est[j][1] for j in keep]))
            add(f"{tag} | the BSs fused", me(fuse_robust(means, covs)[0]))
            if left_out is None:
                jm, js = run(full, np.concatenate(list(fte), axis=1))
                add(f"{tag} | every-BS joint head alone", me(jm))
                fm, _ = fuse_robust(
                    np.concatenate([means, jm[None]]), np.concatenate([covs, diag_cov(js)[None]])
                )
                add(f"{tag} | the BSs and the every-BS joint head fused", me(fm))
            for p, head in masked.items():
                jm, js = run(head, masked_input(fte, mask))
                add(f"{tag} | subset joint head (drop {p}) alone", me(jm))
                fm, _ = fuse_robust(
                    np.concatenate([means, jm[None]]), np.concatenate([covs, diag_cov(js)[None]])
                )
                add(f"{tag} | the BSs and the subset joint head (drop {p}) fused", me(fm))
        print(f"seed {seed} done", flush=True)
    print(
        f"\n{args.site} {args.group}: ME (m) on {n} never-used labelled positions, "
        f"median of seeds {args.seeds} (per seed)\n"
    )
    print("| BSs heard | estimate | ME (m) | per seed |")
    print("|---|---|---|---|")
    for name, values in rows.items():
        heard, estimate = name.split(" | ")
        per_seed = " / ".join(f"{v:.3f}" for v in values)
        print(f"| {heard} | {estimate} | {np.median(values):.3f} | {per_seed} |")


if __name__ == "__main__":
    main()
