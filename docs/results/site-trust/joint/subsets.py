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
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from joint import BATCH, EVAL_EVERY, VAL_FRACTION, features, run, train_head

from training.calibration import fit_sigma_scale
from training.checkpoint import load_backbone
from training.data.site import read_site
from training.data.splits import fraction_subset, train_val_test
from training.fusion import diag_cov, fuse_robust
from training.losses import gaussian_nll
from training.multibs import split_site
from training.nets import Head, HeadConfig
from training.repository import ModelRepository


def masked_input(f: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """[K, N, D] features and an [N, K] presence mask -> [N, K*D + K]."""
    x = f.transpose(1, 0, 2) * mask[:, :, None]
    return np.concatenate([x.reshape(len(mask), -1), mask], axis=1)


def train_masked(
    f: np.ndarray, y: np.ndarray, fv: np.ndarray, yv: np.ndarray, steps: int, seed: int, p: float
) -> Head:
    """`joint.train_head` with a random BS-presence mask per sample and step."""
    k, n, d = f.shape
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    head = Head(HeadConfig(loss="nll", in_features=k * d + k), seed=seed)
    head.fit_position_normalisation(y)
    opt = torch.optim.Adam(head.parameters(), lr=1e-3)
    ft, yt = torch.from_numpy(f.transpose(1, 0, 2).copy()).float(), torch.from_numpy(y).float()
    xv = torch.from_numpy(masked_input(fv, np.ones((fv.shape[1], k)))).float()
    yvt = torch.from_numpy(yv).float()
    best, state = float("inf"), None
    for step in range(steps):
        idx = torch.from_numpy(rng.integers(0, n, BATCH))
        m = (rng.random((BATCH, k)) > p).astype(np.float32)
        m[m.sum(axis=1) == 0, rng.integers(0, k)] = 1.0
        mt = torch.from_numpy(m)
        pos, sigma = head(torch.cat([(ft[idx] * mt[:, :, None]).reshape(BATCH, -1), mt], 1))
        assert sigma is not None
        loss = gaussian_nll(pos, sigma, yt[idx], head.pos_scale)
        opt.zero_grad()
        loss.backward()  # type: ignore[no-untyped-call]
        opt.step()
        if (step + 1) % EVAL_EVERY == 0:
            with torch.no_grad():
                pv, sv = head(xv)
                assert sv is not None
                v = float(gaussian_nll(pv, sv, yvt, head.pos_scale))
            if v < best:
                best, state = v, {key: t.clone() for key, t in head.state_dict().items()}
    assert state is not None
    head.load_state_dict(state)
    with torch.no_grad():
        pv, sv = head(xv)
        assert sv is not None
        head.sigma_scale.copy_(torch.from_numpy(fit_sigma_scale(pv.numpy() - yv, sv.numpy())))
    return head


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("site", type=Path)
    parser.add_argument("group")
    parser.add_argument("--backbone", type=Path, default=Path("models"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--drop", type=float, nargs="+", default=[0.25, 0.5])
    parser.add_argument("--fraction", type=float, default=0.34)
    args = parser.parse_args()
    torch.set_num_threads(1)
    repo = ModelRepository(args.backbone)
    backbone = load_backbone(repo, repo.default_backbone(), None)
    data = read_site(args.site, args.group)
    train, val, _ = split_site(data, VAL_FRACTION, 0.0, args.fraction, 0)
    pool = fraction_subset(train_val_test(len(data), 0.0, 0.0, 0).train, args.fraction, 0)
    unused = data.subset(np.setdiff1d(np.arange(len(data)), pool))
    ftr, fva, fte = features(train, backbone), features(val, backbone), features(unused, backbone)
    k, n = len(data.bs_ids), len(unused)
    rows: dict[str, list[float]] = {}

    def me(mean: np.ndarray) -> float:
        return float(np.linalg.norm(mean - unused.pos, axis=1).mean())

    def add(name: str, value: float) -> None:
        rows.setdefault(name, []).append(value)

    for seed in args.seeds:
        heads = [
            train_head(ftr[j], train.pos, fva[j], val.pos, args.steps, seed + 100 * j)
            for j in range(k)
        ]
        est = [run(h, fte[j]) for j, h in enumerate(heads)]
        full = train_head(
            np.concatenate(list(ftr), axis=1),
            train.pos,
            np.concatenate(list(fva), axis=1),
            val.pos,
            args.steps,
            seed,
        )
        masked = {
            p: train_masked(ftr, train.pos, fva, val.pos, args.steps, seed, p) for p in args.drop
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
