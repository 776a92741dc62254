#!/usr/bin/env python3
# ruff: noqa: T201  (a results script)
"""One site version's UE-level out-of-site scores, unscaled, for table.py (README.md).

usage: scores.py REPO SITE GROUP LABELLED TRACKS WALKS OUT.npz FOREIGN...

Scores, as the service does (`scripts/evaluate-site-trust`), every UE of the site's
walks, test trajectories and never-used labelled positions and of each foreign site
group, and keeps the two parts of the UE's rule apart (the median over its BSs and the
cross-BS check, both before any walks' scale), so any pair of thresholds can be judged
on them afterwards."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from service.store import ServedSite
from training.novelty import combine_scores
from training.repository import ModelRepository

_loader = importlib.machinery.SourceFileLoader(
    "evaluate_site_trust", str(Path(__file__).parents[4] / "scripts" / "evaluate-site-trust")
)
_spec = importlib.util.spec_from_loader(_loader.name, _loader)
assert _spec is not None
est: Any = importlib.util.module_from_spec(_spec)
sys.modules[_loader.name] = est
_loader.exec_module(est)


def main() -> None:
    repo_dir, site_id, group, labelled, tracks, walks, out, *foreign = sys.argv[1:]
    repo = ModelRepository(repo_dir)
    version = repo.resolve("site", site_id)
    vdir = repo.path("site", site_id, version)
    served = ServedSite(site_id, version, vdir).load()
    check = served.consistency
    parts: list[tuple[np.ndarray, np.ndarray]] = []

    def unscaled(scores: Any, spatial: Any, present: Any = None) -> np.ndarray:
        """`ServedSite.ue_novelty` without scales, keeping its two parts."""
        median = combine_scores(scores, present)
        cons = np.zeros_like(median) if check is None else check.score(spatial)
        parts.append((median, cons))
        return np.asarray(np.maximum(median, cons))

    served.ue_novelty = unscaled  # type: ignore[method-assign]
    saved: dict[str, Any] = {}
    for key, path in (("test", tracks), ("walks", walks), ("lab", labelled)):
        e = est.estimates(served, Path(path), group)
        saved[f"{key}_median"], saved[f"{key}_check"] = parts[-1]
        if key == "walks":
            track = np.full(len(e.site), -1)
            for st in e.site.stations.values():
                track[st.rows] = st.data.track
            saved["walk_track"] = track
    manifest = json.loads((vdir / "manifest.json").read_text())
    _, unused = est.labelled_splits(manifest, len(saved["lab_median"]))
    for part in ("median", "check"):
        saved[f"unused_{part}"] = saved.pop(f"lab_{part}")[unused]
    for path in foreign:
        start = len(parts)
        for i, name in enumerate(est.foreign_scores(served, Path(path))):
            if group.strip("/") != name.partition(":")[2].strip("/"):  # not the site itself
                saved["fmedian:" + name], saved["fcheck:" + name] = parts[start + i]
    np.savez(out, **saved)
    print(f"{site_id} {version}: {len(saved['walk_track'])} walk instants -> {out}")


if __name__ == "__main__":
    main()
