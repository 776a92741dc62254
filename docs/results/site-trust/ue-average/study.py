#!/usr/bin/env python3
# ruff: noqa: T201  (a study script: its output is the table)
"""Out of site judged over a UE's recent fingerprints along its track, not one at a time.

    study.py score REPO SITE TRACKS.h5 GROUP FOREIGN_TRACKS.h5 ... >> FILE.jsonl
    study.py table FILE.jsonl [PLOT.png]

`score`: every sample's out-of-site score as served (`scripts/evaluate-site-trust`'s
`estimates` and `foreign_scores`: `ServedSite.ue_novelty`), the site's own trajectories
for the false alarms and each other site's trajectories (its BS i sent to this site's
BS i, each trajectory one UE) for detection; then each rule's share of samples out of
site. Rules: `sample` (the score alone, as served), and over the past W seconds of the
UE's track (W = 1, 3, 5, 10): the plain `mean`, the `median`, the exponential average
`ema` (weight ``exp(-dt / W)`` on the value before), the same of the log score
(`logema`, a geometric mean) and of the score clipped at 3 (`clipema`).

`table`: one row per site, seed and set, and per rule the false alarms (largest and mean
over site-seeds) and the detection (median, mean, smallest, sets at >= 95 %).
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from service.store import ServedSite
from training.data.fingerprints import read_environment
from training.data.site import site_groups
from training.repository import ModelRepository

WINDOWS = (1.0, 3.0, 5.0, 10.0)
CLIP = 3.0
ROOT = Path(__file__).resolve().parents[4]


def _evaluate_site_trust() -> Any:
    path = str(ROOT / "scripts" / "evaluate-site-trust")
    loader = importlib.machinery.SourceFileLoader("evaluate_site_trust", path)
    spec = importlib.util.spec_from_loader("evaluate_site_trust", loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["evaluate_site_trust"] = module
    loader.exec_module(module)
    return module


def windowed(score: np.ndarray, time: np.ndarray, track: np.ndarray, w: float) -> dict[str, Any]:
    """Each rule's value after every sample, over the past ``w`` seconds of its track."""
    out = {k: np.zeros_like(score) for k in ("mean", "median", "ema", "logema", "clipema")}
    log = np.log(np.maximum(score, 1e-3))
    clipped = np.minimum(score, CLIP)
    for t in np.unique(track):
        idx = np.flatnonzero(track == t)
        idx = idx[np.argsort(time[idx], kind="stable")]
        ema = logema = clip = last = None
        for i in idx:
            near = idx[(time[idx] <= time[i]) & (time[idx] > time[i] - w)]
            out["mean"][i], out["median"][i] = score[near].mean(), np.median(score[near])
            a = 0.0 if last is None else float(np.exp(-(time[i] - last) / w))
            ema = score[i] if ema is None else a * ema + (1 - a) * score[i]
            logema = log[i] if logema is None else a * logema + (1 - a) * log[i]
            clip = clipped[i] if clip is None else a * clip + (1 - a) * clipped[i]
            out["ema"][i], out["logema"][i], out["clipema"][i] = ema, np.exp(logema), clip
            last = time[i]
    return out


def rules(score: np.ndarray, time: np.ndarray, track: np.ndarray) -> dict[str, float]:
    row = {"sample": float(np.mean(score > 1.0))}
    for w in WINDOWS:
        for name, value in windowed(score, time, track, w).items():
            row[f"{name}{w:g}s"] = float(np.mean(value > 1.0))
    return row


def score(repo_path: str, site_id: str, tracks: str, group: str, foreign: list[str]) -> None:
    est = _evaluate_site_trust()
    repo = ModelRepository(repo_path)
    version = repo.resolve("site", site_id)
    served = ServedSite(site_id, version, repo.path("site", site_id, version)).load()
    if not served.base_stations:
        single_bs(served, repo_path, tracks, group, foreign)
        return
    test = est.estimates(served, Path(tracks), group)
    n = len(test.site)
    times, ids = np.full(n, np.nan), np.full(n, -1)
    for st in test.site.stations.values():
        times[st.rows], ids[st.rows] = st.data.time, st.data.track
    rows = {"own": rules(test.novelty, times, ids)}
    for path in foreign:
        for name, values in est.foreign_scores(served, Path(path)).items():
            group_name = name.partition(":")[2]
            if group_name.strip("/") == group.strip("/"):
                continue  # the site's own group is not foreign
            envs = sorted(site_groups(Path(path))["" if group_name == "/" else group_name])
            first = read_environment(Path(path), envs[0])
            rows[name] = rules(values[2][: len(first)], first.time, first.track)
    print(json.dumps({"site": site_id, "repo": repo_path, "rows": rows}), flush=True)


def _scores(served: ServedSite, csi: np.ndarray) -> np.ndarray:
    """A single-BS site's served score of each fingerprint, 512 at a time."""
    parts = [
        served.predict_scored(np.ascontiguousarray(csi[i : i + 512]))[2]
        for i in range(0, len(csi), 512)
    ]
    assert all(p is not None for p in parts), "the version has no out-of-site detector"
    return np.concatenate([p for p in parts if p is not None])


def single_bs(
    served: ServedSite, repo_path: str, tracks: str, group: str, foreign: list[str]
) -> None:
    """`score` for a one-BS site: its own BS's trajectories, and each other site's first
    BS (as `foreign_scores` sends BS i to BS i)."""
    envs = sorted(site_groups(Path(tracks))[group])
    own = read_environment(Path(tracks), envs[0])
    rows = {"own": rules(_scores(served, own.csi), own.time, own.track)}
    for path in foreign:
        for name, group_envs in site_groups(Path(path)).items():
            if name.strip("/") == group.strip("/"):
                continue
            first = read_environment(Path(path), sorted(group_envs)[0])
            key = f"{Path(path).name}:{name or '/'}"
            rows[key] = rules(_scores(served, first.csi), first.time, first.track)
    print(json.dumps({"site": served.site, "repo": repo_path, "rows": rows}), flush=True)


def table(path: str, plot: str | None) -> None:
    runs = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    names = list(runs[0]["rows"]["own"])
    false_alarms: dict[str, list[float]] = {k: [] for k in names}
    detection: dict[str, list[float]] = {k: [] for k in names}
    shown = ["sample", "ema3s", "ema10s", "logema3s", "logema10s"]
    print("| site | seed | set | " + " | ".join(shown) + " |")
    print("|---|---|---|" + "---|" * len(shown))
    for run in sorted(runs, key=lambda r: (r["site"], r["repo"])):
        for name, row in run["rows"].items():
            for k in names:
                (false_alarms if name == "own" else detection)[k].append(100 * row[k])
            cells = " | ".join(f"{100 * row[k]:.1f}" for k in shown)
            label = "own trajectories (false alarms)" if name == "own" else name
            print(f"| {run['site']} | {run['repo'][-1]} | {label} | {cells} |")
    print()
    print("| rule | false alarms: max | mean | detection: median | mean | min | sets >= 95 % |")
    print("|---|---|---|---|---|---|---|")
    for k in names:
        fa, d = np.array(false_alarms[k]), np.array(detection[k])
        print(
            f"| {k} | {fa.max():.2f} | {fa.mean():.2f} | {np.median(d):.1f} | {d.mean():.1f} | "
            f"{d.min():.1f} | {int(np.sum(d >= 95))} of {len(d)} |"
        )
    if plot is not None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6.5, 4.2))
        for prefix, marker in (("ema", "o"), ("mean", "s"), ("logema", "^")):
            ks = ["sample"] + [f"{prefix}{w:g}s" for w in WINDOWS]
            xs = [float(np.mean(false_alarms[k])) for k in ks]
            ys = [float(np.mean(detection[k])) for k in ks]
            ax.plot(xs, ys, marker=marker, label=f"{prefix} over 1/3/5/10 s")
        ax.scatter(
            [np.mean(false_alarms["sample"])],
            [np.mean(detection["sample"])],
            s=80,
            color="k",
            zorder=5,
            label="one fingerprint (served)",
        )
        ax.set_xlabel("false alarms on the site's own trajectories, mean over site-seeds (%)")
        ax.set_ylabel("foreign trajectories detected, mean over sets (%)")
        ax.set_title(Path(path).stem)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(plot, dpi=120)


def main() -> None:
    if len(sys.argv) >= 6 and sys.argv[1] == "score":
        score(sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5], sys.argv[6:])
    elif len(sys.argv) in (3, 4) and sys.argv[1] == "table":
        table(sys.argv[2], sys.argv[3] if len(sys.argv) == 4 else None)
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
