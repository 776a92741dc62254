#!/usr/bin/env python3
# ruff: noqa: T201  (a results script: its output is the table)
"""Single-BS sites: the sigma factor by likelihood (per axis, the rule before) against the
rule now (`training.calibration.fit_sigma_scale`: one more factor for both axes fitted to
the 1- and 2-sigma coverage from `COVERAGE_MIN` validation points), both fitted on each
version's validation split and judged on its held-out test split (README.md beside this
file). Positions are the version's own; only sigma differs.

Each argument is ``REPO,SITE,DATA.h5,ENV`` (a `csipos train site` output and its data).
Prints one row per version with the whole validation split, then both rules fitted on n
points drawn from it (200 draws) and judged on the same test split.

    python3 docs/results/transfer/coverage-rule/rule.py REPO,SITE,DATA,ENV ... > rule.txt
"""

from __future__ import annotations

import json
import sys

import numpy as np
import torch

from training.checkpoint import load_site_model
from training.data.fingerprints import Fingerprints, read_environment
from training.data.splits import split_train_val
from training.fit import predict
from training.fusion import NOMINAL, coverage_factor
from training.metrics import evaluate
from training.repository import ModelRepository
from training.transfer import holdout_split

DRAWS = 200
SIZES = (82, 160, 300)
Run = tuple[str, np.ndarray, np.ndarray, np.ndarray, np.ndarray]  # name, verr, vs, terr, ts


def scale_by(rule: str, err: np.ndarray, sigma: np.ndarray) -> np.ndarray:
    """The per-axis factor of ``rule`` fitted on validation errors and sigma [n, 2]."""
    ml = np.asarray(np.sqrt(np.mean(np.square(err / sigma), axis=0)))
    if rule == "likelihood":
        return ml
    return np.asarray(ml * np.sqrt(coverage_factor(np.sum(np.square(err / (sigma * ml)), axis=1))))


def shares(err: np.ndarray, sigma: np.ndarray) -> tuple[float, float]:
    d2 = np.sum(np.square(err / sigma), axis=1)
    return float(np.mean(d2 <= 1.0)), float(np.mean(d2 <= 4.0))


def in_band(c: tuple[float, float]) -> bool:
    return all(abs(got - share) <= 0.05 for got, (_, share) in zip(c, NOMINAL, strict=True))


def load(arg: str) -> Run:
    repo_dir, site, data, env = arg.split(",")
    repo = ModelRepository(repo_dir)
    vdir = repo.path("site", site, repo.resolve("site", site))
    cfg = json.loads((vdir / "manifest.json").read_text())["config"]
    seed = int(cfg["seed"])
    pool, test = holdout_split(
        read_environment(data, env), float(cfg["holdout"]), float(cfg["fraction"]), seed
    )
    assert test is not None, "the version needs a --holdout test split"
    _, val = split_train_val(pool, float(cfg["val_fraction"]), seed)
    model = load_site_model(repo, site)
    model.head.sigma_scale.fill_(1.0)  # sigma as trained: each rule scales it itself

    def run(d: Fingerprints) -> tuple[np.ndarray, np.ndarray]:
        pos, sigma = predict(model.backbone, model.head, torch.from_numpy(d.csi))
        assert sigma is not None, "an NLL site expected"
        return pos.numpy() - d.pos, sigma.numpy().astype(np.float64)

    return (f"{site} seed {seed} ({len(pool)} labels)", *run(val), *run(test))


def main() -> None:
    runs = [load(arg) for arg in sys.argv[1:]]
    print("| version | validation / test points | rule | factor x, y | 1 sigma | 2 sigma | CRPS |")
    print("|---|---|---|---|---|---|---|")
    for name, verr, vs, terr, ts in runs:
        for rule in ("likelihood", "coverage"):
            s = scale_by(rule, verr, vs)
            c = shares(terr, ts * s)
            crps = evaluate(terr, ts * s, np.zeros_like(terr))["crps"]  # errors about 0
            print(
                f"| {name} | {len(verr)} / {len(terr)} | {rule} | {s[0]:.3f}, {s[1]:.3f} | "
                f"{100 * c[0]:.1f} % | {100 * c[1]:.1f} % | {crps:.4f} m |"
            )
    rng = np.random.default_rng(0)
    print(f"\nFitted on n validation points ({DRAWS} draws a version), judged on the test split:")
    print("in band: versions with both levels within 5 points (mean over draws)\n")
    print("| n | rule | in band | median 1 sigma | median 2 sigma |")
    print("|---|---|---|---|---|")
    for n in SIZES:
        for rule in ("likelihood", "coverage"):
            band, c1, c2 = 0.0, [], []
            for _, verr, vs, terr, ts in runs:
                got = []
                for _ in range(DRAWS):
                    pick = rng.choice(len(verr), n, replace=False)
                    got.append(shares(terr, ts * scale_by(rule, verr[pick], vs[pick])))
                band += float(np.mean([in_band(c) for c in got]))
                c1.append(np.median([c[0] for c in got]))
                c2.append(np.median([c[1] for c in got]))
            print(
                f"| {n} | {rule} | {band:.2f} of {len(runs)} | {100 * np.median(c1):.1f} % | "
                f"{100 * np.median(c2):.1f} % |"
            )


if __name__ == "__main__":
    main()
