#!/usr/bin/env python3
# ruff: noqa: T201  (a results script: its output is the table)
"""More detection, or only more alarms? The served rule (the median over the BSs, OR the
cross-BS consistency check) against the median rule alone with its threshold lowered to
give the same false alarms, pooled over the site's never-used labelled positions and its
trajectories. That threshold is chosen on the test UEs themselves (an oracle no
adaptation has), so the comparison favours the median rule.

    python3 docs/results/site-trust/consistency/same_alarms.py REPO SITE SITE.h5 GROUP \
        TRACKS.h5 FOREIGN.h5 ...

Scores as `scripts/evaluate-site-trust` serves them (its `estimates`, `foreign_scores`).
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np

from service.store import ServedSite
from training.novelty import combine_scores
from training.repository import ModelRepository

ROOT = Path(__file__).resolve().parents[4]
_loader = importlib.machinery.SourceFileLoader("est", str(ROOT / "scripts/evaluate-site-trust"))
_spec = importlib.util.spec_from_loader("est", _loader)
assert _spec is not None
est = importlib.util.module_from_spec(_spec)
sys.modules["est"] = est  # its dataclasses look their module up
_loader.exec_module(est)


def main() -> None:
    repo_dir, site_id, labelled, group, tracks, *foreign = sys.argv[1:]
    repo = ModelRepository(repo_dir)
    version = repo.resolve("site", site_id)
    vdir = repo.path("site", site_id, version)
    served = ServedSite(site_id, version, vdir).load()
    manifest = json.loads((vdir / "manifest.json").read_text())
    lab = est.estimates(served, Path(labelled), group)
    _, unused = est.labelled_splits(manifest, len(lab.site))
    trk = est.estimates(served, Path(tracks), group)
    k = len(served.base_stations)
    own_median = np.concatenate(
        [
            combine_scores(lab.scores[:, unused], lab.present[:k, unused]),
            combine_scores(trk.scores, trk.present[:k]),
        ]
    )
    own_served = np.concatenate([lab.novelty[unused], trk.novelty])
    alarms = float(np.mean(own_served > 1.0))
    t = min(float(np.quantile(own_median, 1.0 - alarms)), 1.0) if alarms > 0 else 1.0
    served_rate, median_rate = [], []
    for path in foreign:
        for name, (scores, present, novelty, _) in est.foreign_scores(served, Path(path)).items():
            if name.partition(":")[2].strip("/") == group.strip("/"):
                continue
            served_rate.append(100 * np.mean(novelty > 1.0))
            median_rate.append(100 * np.mean(combine_scores(scores, present) > t))
    s, m = np.array(served_rate), np.array(median_rate)
    print(
        f"| {repo_dir} | {100 * alarms:.2f} % | {t:.3f} | {s.mean():.1f} / {m.mean():.1f} | "
        f"{(s >= 95).sum()} / {(m >= 95).sum()} of {len(s)} | {s.min():.1f} / {m.min():.1f} |"
    )


if __name__ == "__main__":
    main()
