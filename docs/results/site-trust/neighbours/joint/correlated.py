#!/usr/bin/env python3
# ruff: noqa: T201  (a command-line script: its output is the lines)
"""The BSs and the joint head fused with their error correlation (not shipped): per axis,
the best linear unbiased estimate ``w = S^-1 1 / 1' S^-1 1`` with ``S = D R D``, ``D`` the
estimators' predicted sigmas and ``R`` the correlation of their standardised errors, fitted
on the validation split (shrunk by 0.3 to the identity, or not), or on the trajectories
themselves (an oracle). Weights below 0 drop that estimator (active set), and the
Student-t down-weighting of `training.fusion.fuse_robust` is iterated on top. One JSON
line per served version: fused ME on the trajectories over the served robust fusion's.

    python3 correlated.py REPO SITE TRACKS.h5 LABELLED.h5 >> correlated.jsonl
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
from alpha import evaluate_site_trust, served_version

from training.fusion import ROBUST_DOF, ROBUST_ITERATIONS, fuse_robust


def correlation(est: Any, rows: Any, shrink: float) -> np.ndarray:
    """R [K, K] of the standardised errors (both axes pooled) on the UEs both heard."""
    m, c, p = est.means[:, rows], est.covs[:, rows], est.present[:, rows]
    z = (m - est.site.pos[rows][None]) / np.sqrt(np.diagonal(c, axis1=2, axis2=3))
    k = len(z)
    r = np.eye(k)
    for i in range(k):
        for j in range(k):
            both = p[i] & p[j]
            if i != j and both.sum() >= 10:
                zi, zj = z[i, both], z[j, both]
                r[i, j] = np.mean(zi * zj) / np.sqrt(np.mean(zi**2) * np.mean(zj**2))
    return (1.0 - shrink) * r + shrink * np.eye(k)


def blue(sigma: np.ndarray, mu: np.ndarray, r: np.ndarray) -> float:
    """One axis: the BLUE of ``mu`` [K] with sigmas [K], non-negative weights."""
    keep = np.arange(len(sigma))
    while True:
        s = np.outer(sigma[keep], sigma[keep]) * r[np.ix_(keep, keep)]
        a = np.linalg.solve(s, np.ones(len(keep)))
        w = a / a.sum()
        if (w >= -1e-12).all() or len(keep) == 1:
            return float(w @ mu[keep])
        keep = np.delete(keep, np.argmin(w))


def fuse(est: Any, r: np.ndarray) -> np.ndarray:
    sig = np.sqrt(np.diagonal(est.covs, axis1=2, axis2=3))  # [K, N, 2]
    out = np.zeros((est.means.shape[1], 2))
    for n in range(len(out)):
        idx = np.flatnonzero(est.present[:, n])
        s, mu, rs = sig[idx, n], est.means[idx, n], r[np.ix_(idx, idx)]
        weights = np.ones(len(idx))
        for _ in range(ROBUST_ITERATIONS + 1):
            scaled = s / np.sqrt(weights[:, None])
            f = np.array([blue(scaled[:, a], mu[:, a], rs) for a in range(2)])
            d2 = (((mu - f[None]) / s) ** 2).sum(axis=1)
            weights = np.minimum(1.0, (ROBUST_DOF + 2.0) / (ROBUST_DOF + d2))
        out[n] = f
    return out


def main(repo_dir: str, site_id: str, tracks: str, labelled: str) -> None:
    _, manifest, test, lab = served_version(repo_dir, site_id, Path(tracks), Path(labelled))
    val, _ = evaluate_site_trust().labelled_splits(manifest, len(lab.site))
    robust, _ = fuse_robust(test.means, test.covs, test.present)
    me = float(np.linalg.norm(robust - test.site.pos, axis=1).mean())
    out: dict[str, Any] = {"site": site_id, "seed": manifest["config"]["seed"], "robust_me": me}
    for name, r in (
        ("validation", correlation(lab, val, 0.0)),
        ("validation, shrunk 0.3", correlation(lab, val, 0.3)),
        ("trajectories (oracle)", correlation(test, slice(None), 0.0)),
    ):
        out[name] = float(np.linalg.norm(fuse(test, r) - test.site.pos, axis=1).mean()) / me
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:5])
