#!/usr/bin/env python3
# ruff: noqa: T201  (a study script: its output is the table)
"""One-BS detector: its three parts (features, spatial covariance, delay profile)
combined by their largest (as served), their sum, their norm, or the features plus the
larger channel part; each combination's threshold at the same conformal quantile of the
validation split as the parts'. Prints, per set, the share over each threshold and each
part's own share.

    combine.py REPO SITE DATA.h5 ENV FOREIGN.h5:PATTERN ...
"""

from __future__ import annotations

import fnmatch
import json
import sys
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np

from training.checkpoint import load_novelty, load_site_model
from training.data.fingerprints import read_environment
from training.data.splits import split_train_val
from training.novelty import (
    SINGLE_HEAD,
    backbone_features,
    channel_statistics,
    conformal_threshold,
)
from training.repository import ModelRepository
from training.transfer import holdout_split

RULES: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "max": lambda s: s.max(axis=1),
    "sum": lambda s: s.sum(axis=1),
    "norm": lambda s: np.sqrt((s**2).sum(axis=1)),
    "feat+max(ch)": lambda s: s[:, 0] + s[:, 1:].max(axis=1),
}


def _datasets(h: h5py.File) -> list[str]:
    found: list[str] = []
    h.visit(found.append)
    return found


def main(repo_path: str, site: str, data: str, env: str, foreign: list[str]) -> None:
    repo = ModelRepository(Path(repo_path))
    model = load_site_model(repo, site)
    novelty = (load_novelty(repo, site) or {})[SINGLE_HEAD]
    version = json.loads((Path(repo_path) / "sites" / site / "active.json").read_text())
    manifest = repo.path("site", site, version["version"]) / "manifest.json"
    cfg = json.loads(manifest.read_text())["config"]
    fp = read_environment(Path(data), env)
    pool, test = holdout_split(fp, cfg["holdout"], cfg["fraction"], cfg["seed"])
    assert test is not None, "the site was adapted without a holdout"
    _, val = split_train_val(pool, cfg["val_fraction"], cfg["seed"])

    def parts(csi: np.ndarray) -> np.ndarray:
        stats = channel_statistics(csi)
        f = backbone_features(model.backbone, csi)
        cols = [novelty.distance(f) / novelty.threshold]
        cols += [p.score(stats[p.name]) for p in novelty.parts]
        return np.stack(cols, axis=1)

    val_parts = parts(val.csi)
    thr = {k: conformal_threshold(r(val_parts), novelty.false_alarm) for k, r in RULES.items()}
    print(f"{site}: {len(val)} validation, {len(test)} test points; thresholds {thr}")
    sets = {"own test (false alarms)": test.csi}
    for spec in foreign:
        path, pattern = spec.split(":")
        with h5py.File(path) as h:
            names = [n[:-4] for n in _datasets(h) if n.endswith("/csi")]
        for name in (n for n in names if fnmatch.fnmatch(n, pattern)):
            csi = read_environment(Path(path), name).csi
            if len(csi) > 1000:
                csi = csi[np.random.default_rng(0).choice(len(csi), 1000, replace=False)]
            sets[f"{Path(path).stem}:{name}"] = csi
    for name, csi in sets.items():
        s = parts(csi)
        row = " ".join(f"{k} {100 * np.mean(r(s) > thr[k]):5.1f}" for k, r in RULES.items())
        own = " ".join(f"{100 * np.mean(s[:, i] > 1):5.1f}" for i in range(s.shape[1]))
        print(f"{name:40s} n {len(csi):5d} | {row} | parts {own}", flush=True)


if __name__ == "__main__":
    if len(sys.argv) < 6:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5:])
