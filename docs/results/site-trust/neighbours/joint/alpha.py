#!/usr/bin/env python3
"""The BSs' covariances scaled by alpha before the fusion with the joint head (the joint
head's not; alpha inf: the joint head alone where it answers), on one served version:
fused ME on the trajectories, on the never-used labelled positions and on validation
(where a site would choose alpha), and the validation NLL after the inflation fit. One
JSON line per version; ``table`` summarises the lines (README.md beside this file).

    python3 alpha.py REPO SITE TRACKS.h5 LABELLED.h5 >> alpha.jsonl
    python3 alpha.py table alpha.jsonl
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from service.store import ServedSite
from training.fusion import fit_inflation, fuse_by
from training.repository import ModelRepository

ALPHAS = (1.0, 1.5, 2.0, 3.0, 4.0, 8.0, float("inf"))
SCRIPT = Path(__file__).resolve().parents[5] / "scripts" / "evaluate-site-trust"


def evaluate_site_trust() -> Any:
    """`scripts/evaluate-site-trust` as a module: its `estimates` are the served ones."""
    loader = importlib.machinery.SourceFileLoader("evaluate_site_trust", str(SCRIPT))
    spec = importlib.util.spec_from_loader(loader.name, loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[loader.name] = module
    loader.exec_module(module)
    return module


def served_version(
    repo_dir: str, site_id: str, tracks: Path, labelled: Path, without: Sequence[str] = ()
) -> tuple[ServedSite, dict[str, Any], Any, Any]:
    """(the active version as served, its manifest, the `estimates` of the trajectories,
    those of the labelled upload; the BSs in ``without`` as if they heard nothing): what
    the studies beside this file start from."""
    ev = evaluate_site_trust()
    repo = ModelRepository(repo_dir)
    version = repo.resolve("site", site_id)
    vdir = repo.path("site", site_id, version)
    served = ServedSite(site_id, version, vdir).load()
    manifest = json.loads((vdir / "manifest.json").read_text())
    return (
        served,
        manifest,
        ev.estimates(served, tracks, None, without),
        ev.estimates(served, labelled, None, without),
    )


def fused(est: Any, method: str, rows: Any, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    k = est.stations
    means, covs, present = est.means[:, rows], est.covs[:, rows].copy(), est.present[:, rows]
    if np.isinf(alpha):
        present = present.copy()
        present[:k] &= ~present[k][None]
    else:
        covs[:k] *= alpha
    return fuse_by(method, means, covs, present)


def measure(repo_dir: str, site_id: str, tracks: Path, labelled: Path) -> dict[str, Any]:
    ev = evaluate_site_trust()
    served, manifest, test, lab = served_version(repo_dir, site_id, tracks, labelled)
    method = served.fusion_method
    val, unused = ev.labelled_splits(manifest, len(lab.site))
    out = {}
    for alpha in ALPHAS:
        vm, vc = fused(lab, method, val, alpha)
        verr = vm - lab.site.pos[val]
        vc = vc * fit_inflation(verr, vc)
        d2 = np.einsum("ni,nij,nj->n", verr, np.linalg.inv(vc), verr)
        tm, _ = fused(test, method, slice(None), alpha)
        um, _ = fused(lab, method, unused, alpha)
        out[str(alpha)] = {
            "val_me": float(np.linalg.norm(verr, axis=1).mean()),
            "val_nll": float(np.mean(0.5 * d2 + 0.5 * np.log(np.linalg.det(vc)))),
            "test_me": float(np.linalg.norm(tm - test.site.pos, axis=1).mean()),
            "unused_me": float(np.linalg.norm(um - lab.site.pos[unused], axis=1).mean()),
        }
    return {"repo": repo_dir, "site": site_id, "alpha": out}


def table(path: Path) -> None:
    runs = [json.loads(line) for line in path.read_text().splitlines()]
    keys = [str(a) for a in ALPHAS]
    head = " | ".join(f"alpha {k}" for k in keys)
    sys.stdout.write(f"| site (seeds) | {head} | chosen by validation ME |\n")
    sys.stdout.write("|---|" + "---|" * (len(keys) + 1) + "\n")
    for site in sorted({r["site"] for r in runs}):
        rs = [r["alpha"] for r in runs if r["site"] == site]
        cells = []
        for k in keys:
            t = np.array([r[k]["test_me"] / r["1.0"]["test_me"] for r in rs])
            u = np.array([r[k]["unused_me"] / r["1.0"]["unused_me"] for r in rs])
            cells.append(f"{np.median(t):.3f} / {np.median(u):.3f}")
        chosen = [min(keys, key=lambda k, r=r: r[k]["val_me"]) for r in rs]
        t = np.array(
            [r[c]["test_me"] / r["1.0"]["test_me"] for r, c in zip(rs, chosen, strict=True)]
        )
        cells.append(f"{np.median(t):.3f} ({t.min():.3f}-{t.max():.3f}; {', '.join(chosen)})")
        sys.stdout.write(f"| {site} ({len(rs)}) | " + " | ".join(cells) + " |\n")


if __name__ == "__main__":
    if sys.argv[1] == "table":
        table(Path(sys.argv[2]))
    else:
        sys.stdout.write(
            json.dumps(measure(*sys.argv[1:3], Path(sys.argv[3]), Path(sys.argv[4]))) + "\n"
        )
