#!/usr/bin/env python3
# ruff: noqa: T201  (a results script: its output is the table)
"""Late fusion of per-BS heads against one joint head on every BS's features (issue 13).

Late fusion (`training.fusion`) can only average what each BS already knows: a BS
whose fingerprint is ambiguous (two far-apart places that look alike to it) gives a
wrong mean, and the product down-weights it only by its sigma. A head that sees every
BS's features at once can resolve that ambiguity (what one BS confuses, another
separates). This script measures both on the same frozen backbone features, the same
head shape, loss, optimiser and step budget, on a multi-BS site's adaptation split
(`training.multibs.split_site`):

- per-BS heads, each on its BS's features; their robust late fusion with the
  covariance inflation fitted on validation, as an adaptation does;
- a joint head on the concatenated features of all BSs (every sample heard by every
  BS), its sigma scale fitted on validation like a site head's.

Both are scored on the never-used labelled positions of the site file (drawn at random
over the UE area, never trained or validated on) and, with `--tracks`, on held-out
trajectories. Seeds vary the heads' initialisation and batches; the split is seed 0,
as the served versions.

    python3 docs/results/site-trust/joint/joint.py SITE.h5 GROUP [--tracks TRACKS.h5]
        [--backbone models] [--seeds 0 1 2] [--steps 3000] [--fraction 0.34]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from training.calibration import fit_sigma_scale
from training.checkpoint import load_backbone
from training.data.site import SiteFingerprints, read_site
from training.data.splits import fraction_subset, train_val_test
from training.fusion import coverage, diag_cov, fit_inflation, fuse_robust
from training.losses import gaussian_nll
from training.multibs import split_site
from training.nets import Backbone, Head, HeadConfig
from training.novelty import backbone_features
from training.repository import ModelRepository

VAL_FRACTION = 0.2  # `csipos train site`'s default
EVAL_EVERY = 50
BATCH = 64


def features(data: SiteFingerprints, backbone: Backbone) -> np.ndarray:
    """[K, N, D] backbone features per BS, in the site's sample order."""
    out = []
    for bs in data.bs_ids:
        st = data.stations[bs]
        if len(st.rows) != len(data):
            raise SystemExit(f"{bs} heard {len(st.rows)} of {len(data)} samples; all are needed")
        f = np.zeros((len(data), backbone.config.features))
        f[st.rows] = backbone_features(backbone, st.data.csi)
        out.append(f)
    return np.stack(out)


def train_head(
    x: np.ndarray,
    y: np.ndarray,
    xv: np.ndarray,
    yv: np.ndarray,
    steps: int,
    seed: int,
    augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None,
) -> Head:
    """An NLL head on fixed features, Adam at the site recipe's rate, the best validation
    NLL kept, then its sigma scale fitted on validation. ``augment`` changes each training
    batch (drawing from the run's generator); validation sees the inputs as given."""
    torch.manual_seed(seed)
    head = Head(HeadConfig(loss="nll", in_features=x.shape[1]), seed=seed)
    head.fit_position_normalisation(y)
    opt = torch.optim.Adam(head.parameters(), lr=1e-3)
    xt, yt = torch.from_numpy(x).float(), torch.from_numpy(y).float()
    xvt, yvt = torch.from_numpy(xv).float(), torch.from_numpy(yv).float()
    gen = torch.Generator().manual_seed(seed)
    best, state = float("inf"), None
    for step in range(steps):
        idx = torch.randint(0, len(xt), (BATCH,), generator=gen)
        pos, sigma = head(xt[idx] if augment is None else augment(xt[idx], gen))
        assert sigma is not None
        loss = gaussian_nll(pos, sigma, yt[idx], head.pos_scale)
        opt.zero_grad()
        loss.backward()  # type: ignore[no-untyped-call]
        opt.step()
        if (step + 1) % EVAL_EVERY == 0:
            with torch.no_grad():
                pv, sv = head(xvt)
                assert sv is not None
                v = float(gaussian_nll(pv, sv, yvt, head.pos_scale))
            if v < best:
                best, state = v, {k: t.clone() for k, t in head.state_dict().items()}
    assert state is not None
    head.load_state_dict(state)
    with torch.no_grad():
        pv, sv = head(xvt)
        assert sv is not None
        scale = fit_sigma_scale(pv.numpy() - yv, sv.numpy())
    head.sigma_scale.copy_(torch.from_numpy(scale).float())
    return head


def train_heads(
    ftr: np.ndarray, fva: np.ndarray, y: np.ndarray, yv: np.ndarray, steps: int, seed: int
) -> tuple[list[Head], Head]:
    """One head per BS on its features [K, N, D] (seed + 100 k), then the joint head on
    all of them concatenated (seed)."""
    heads = [train_head(ftr[j], y, fva[j], yv, steps, seed + 100 * j) for j in range(len(ftr))]
    cat = np.concatenate
    return heads, train_head(cat(list(ftr), axis=1), y, cat(list(fva), axis=1), yv, steps, seed)


def run(head: Head, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    with torch.no_grad():
        p, s = head(torch.from_numpy(x).float())
    assert s is not None
    return p.double().numpy(), s.double().numpy()


def score(mean: np.ndarray, cov: np.ndarray, truth: np.ndarray) -> tuple[float, float, float]:
    err = mean - truth
    return (
        float(np.linalg.norm(err, axis=1).mean()),
        coverage(err, cov, 1.0),
        coverage(err, cov, 2.0),
    )


def site_arguments(parser: argparse.ArgumentParser) -> None:
    """The options this script shares with `subsets.py`."""
    parser.add_argument("site", type=Path)
    parser.add_argument("group")
    parser.add_argument("--backbone", type=Path, default=Path("models"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--fraction", type=float, default=0.34)


def load_split(
    args: argparse.Namespace,
) -> tuple[Backbone, SiteFingerprints, SiteFingerprints, SiteFingerprints, SiteFingerprints]:
    """(backbone, site, train, validation, never-used labelled positions): the site's
    adaptation split (seed 0, as the served versions) and what that split never used."""
    torch.set_num_threads(1)
    repo = ModelRepository(args.backbone)
    backbone = load_backbone(repo, repo.default_backbone(), None)
    data = read_site(args.site, args.group)
    train, val, _ = split_site(data, VAL_FRACTION, 0.0, args.fraction, 0)
    split = train_val_test(len(data), 0.0, 0.0, 0)
    pool = fraction_subset(split.train, args.fraction, 0)
    unused = data.subset(np.setdiff1d(np.arange(len(data)), pool))  # outside split_site's pool
    return backbone, data, train, val, unused


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    site_arguments(parser)
    parser.add_argument("--tracks", type=Path)
    args = parser.parse_args()
    backbone, data, train, val, unused = load_split(args)
    tests = {"never-used labelled": unused}
    if args.tracks is not None:
        tests["trajectories"] = read_site(args.tracks, args.group)
    t0 = time.perf_counter()
    ftr, fva = features(train, backbone), features(val, backbone)
    fte = {name: features(d, backbone) for name, d in tests.items()}
    k = len(data.bs_ids)
    print(
        f"{args.site} {args.group}: {k} BSs, {len(train)} train / {len(val)} val; "
        + ", ".join(f"{n} {len(d)}" for n, d in tests.items())
        + f"; features in {time.perf_counter() - t0:.0f} s"
    )
    rows: dict[str, list[tuple[float, float, float]]] = {}

    def add(name: str, value: tuple[float, float, float]) -> None:
        rows.setdefault(name, []).append(value)

    for seed in args.seeds:
        t1 = time.perf_counter()
        heads, joint = train_heads(ftr, fva, train.pos, val.pos, args.steps, seed)
        vm, vc = zip(*(run(h, fva[j]) for j, h in enumerate(heads)), strict=True)
        fm, fc = fuse_robust(np.stack(vm), diag_cov(np.stack(vc)))
        inflation = fit_inflation(fm - val.pos, fc)
        jv = run(joint, np.concatenate(list(fva), axis=1))
        am, ac = fuse_robust(np.stack([*vm, jv[0]]), diag_cov(np.stack([*vc, jv[1]])))
        inflation_all = fit_inflation(am - val.pos, ac)
        for name, d in tests.items():
            f = fte[name]
            est = [run(h, f[j]) for j, h in enumerate(heads)]
            per = [score(m, diag_cov(s), d.pos) for m, s in est]
            best = min(range(k), key=lambda j: per[j][0])
            for j in range(k):
                add(f"{name} | {data.bs_ids[j]} alone", per[j])
            add(f"{name} | best BS alone", per[best])
            fm, fc = fuse_robust(
                np.stack([m for m, _ in est]), diag_cov(np.stack([s for _, s in est]))
            )
            add(f"{name} | late fusion (robust)", score(fm, fc * inflation, d.pos))
            jm, js = run(joint, np.concatenate(list(f), axis=1))
            add(f"{name} | joint head", score(jm, diag_cov(js), d.pos))
            am, ac = fuse_robust(
                np.stack([*(m for m, _ in est), jm]), diag_cov(np.stack([*(s for _, s in est), js]))
            )
            add(
                f"{name} | late fusion of the BSs and the joint head",
                score(am, ac * inflation_all, d.pos),
            )
        print(f"seed {seed}: {time.perf_counter() - t1:.0f} s", flush=True)

    print(
        "\n| test set | estimate | ME (m), median over seeds (min-max) | in 1 sigma | in 2 sigma |"
    )
    print("|---|---|---|---|---|")
    for name, vals in rows.items():
        a = np.array(vals)
        me = a[:, 0]
        print(
            f"| {name} | {np.median(me):.3f} ({me.min():.3f}-{me.max():.3f}) | "
            f"{100 * np.median(a[:, 1]):.1f} % | {100 * np.median(a[:, 2]):.1f} % |"
        )
    for name in tests:
        best_me = np.array(rows[f"{name} | best BS alone"])[:, 0]
        for arm in (
            "late fusion (robust)",
            "joint head",
            "late fusion of the BSs and the joint head",
        ):
            r = np.array(rows[f"{name} | {arm}"])[:, 0] / best_me
            print(f"{name}: {arm} / best BS = {np.median(r):.2f} (per seed {np.round(r, 2)})")


if __name__ == "__main__":
    main()
