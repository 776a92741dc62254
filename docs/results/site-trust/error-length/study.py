#!/usr/bin/env python3
# ruff: noqa: T201  (a command-line script: its output is the lines and the table)
"""The tracker's error model against the site's label spacing (README.md beside this file).

One served multi-BS version, its labelled upload and its held-out trajectories:

- ``fit``: the label spacing of the positions the version trained on (re-created from the
  adaptation's seeded split, as `scripts/evaluate-site-trust --labelled` does), and
  `training.correlogram.fit_correlogram` of the served fused errors on the trajectories
  and on the labelled positions the version never used. Calibration sites only: the
  trajectories' ``c`` and ``L / spacing`` set the tracker's defaults.
- ``track``: the served fused estimates filtered with the error model before (c 0.55,
  L 1.8 m) and, at error share ``--share``, with L fixed at 1.8 m, 3 or 5.5 label
  spacings, the longer of 3 spacings and 0.6 x the validation ME, or fitted on the
  validation split (`arms`): tracked ME over the fused ME, 1/2-sigma coverage, gated
  measurements and restarts.

One JSON line per version; ``table`` writes the tables and figure from the lines.

    python3 study.py fit REPO SITE LABELLED.h5 TRACKS.h5 >> fit.jsonl
    python3 study.py track REPO SITE LABELLED.h5 TRACKS.h5 --share 0.9 >> track.jsonl
    python3 study.py track ... --without bs0 >> track-without-bs0.jsonl   (a BS down)
    python3 study.py table fit.jsonl track.jsonl [track-c0.95.jsonl ...]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from training.correlogram import fit_correlogram, label_spacing
from training.fusion import mahalanobis2
from training.tracking import TrackerConfig, track

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "neighbours" / "joint"))
from alpha import evaluate_site_trust, served_version  # noqa: E402  (scripts/evaluate-site-trust as a module)

BEFORE = TrackerConfig(error_share=0.55, error_length_m=1.8, error_length_spacings=0.0)
"""The error model the tracker had before this study (one length for every site)."""


@dataclasses.dataclass
class Served:
    """A version's served fused estimates on its trajectories and labelled positions."""

    site: str
    seed: int
    spacing: float
    pos: np.ndarray  # trajectories: truth [N, 2]
    mean: np.ndarray  # fused, as served [N, 2]
    cov: np.ndarray  # fused covariance as served (inflated, widened) [N, 2, 2]
    times: np.ndarray
    tracks: np.ndarray
    foreign: np.ndarray
    unused_pos: np.ndarray  # labelled positions never used [M, 2]
    unused_mean: np.ndarray
    unused_cov: np.ndarray
    val_pos: np.ndarray  # the validation split [V, 2]: what an adaptation has
    val_mean: np.ndarray
    val_cov: np.ndarray


def served(
    repo_dir: str, site_id: str, labelled: Path, tracks: Path, without: Sequence[str] = ()
) -> Served:
    ev = evaluate_site_trust()
    site, manifest, test, lab = served_version(repo_dir, site_id, tracks, labelled, without)
    val, unused = ev.labelled_splits(manifest, len(lab.site))
    trained = np.setdiff1d(np.setdiff1d(np.arange(len(lab.site)), unused), val)
    spacing = label_spacing(lab.site.pos[trained])
    assert spacing is not None
    method = site.fusion_method
    mean, cov = test.fused(method)
    cov = test.widened(cov * test.factors(site)[:, None, None])
    umean, ucov = lab.fused(method, unused)
    ucov = ucov * lab.factors(site)[unused, None, None]
    vmean, vcov = lab.fused(method, val)
    vcov = vcov * lab.factors(site)[val, None, None]
    n = len(test.site)
    times, track_ids = np.full(n, np.nan), np.full(n, -1)
    for st in test.site.stations.values():
        assert st.data.time is not None and st.data.track is not None
        times[st.rows], track_ids[st.rows] = st.data.time, st.data.track
    return Served(
        site_id,
        int(manifest["config"]["seed"]),
        spacing,
        test.site.pos.astype(np.float64),
        mean,
        cov,
        times,
        track_ids,
        test.out_of_site(),
        lab.site.pos[unused].astype(np.float64),
        umean,
        ucov,
        lab.site.pos[val].astype(np.float64),
        vmean,
        vcov,
    )


def fit(s: Served) -> dict[str, Any]:
    out: dict[str, Any] = {"site": s.site, "seed": s.seed, "spacing_m": s.spacing}
    for name, pos, mean, cov in (
        ("trajectories", s.pos, s.mean, s.cov),
        ("labelled", s.unused_pos, s.unused_mean, s.unused_cov),
        ("validation", s.val_pos, s.val_mean, s.val_cov),
    ):
        cg = fit_correlogram(pos, mean - pos, cov, bin_m=0.2)
        sigma = np.sqrt(np.trace(cov, axis1=1, axis2=2) / 2.0)  # per-axis RMS of each ellipse
        out[name] = {
            "share": cg.share,
            "length_m": cg.length_m,
            "me_m": float(np.linalg.norm(mean - pos, axis=1).mean()),
            "sigma_m": float(np.median(sigma)),
        }
    return out


def filtered(s: Served, config: TrackerConfig) -> dict[str, Any]:
    tpos, tcov = np.zeros_like(s.mean), np.zeros_like(s.cov)
    gated = restarts = 0
    final_scales = []  # each trajectory's adaptive noise scale at its end, when it is on
    for t in np.unique(s.tracks):
        idx = np.flatnonzero(s.tracks == t)
        idx = idx[np.argsort(s.times[idx], kind="stable")]
        r = track(s.times[idx], s.mean[idx], s.cov[idx], config, s.foreign[idx])
        tpos[idx], tcov[idx] = r.position, r.cov
        gated += int(r.gated.sum())
        restarts += sum(x == "gated" for x in r.reset)
        if r.scale is not None:
            final_scales.append(float(r.scale[-1]))
    err = tpos - s.pos
    d2 = mahalanobis2(err, tcov)
    fused_me = float(np.linalg.norm(s.mean - s.pos, axis=1).mean())
    return {
        "share": config.error_share,
        "length_m": config.error_length_m,
        "me_m": float(np.linalg.norm(err, axis=1).mean()),
        "me_over_fused": float(np.linalg.norm(err, axis=1).mean()) / fused_me,
        "within_1sigma": float(np.mean(d2 <= 1.0)),
        "within_2sigma": float(np.mean(d2 <= 4.0)),
        "gated": gated / len(err),
        "restarts": restarts,
    } | ({"final_scales": final_scales} if config.noise_time_s > 0 else {})


def arms(s: Served, share: float) -> dict[str, TrackerConfig]:
    """The error models compared: the one before, and at error share ``share`` a length
    fixed (1.8 m), from the label spacing, from the spacing or the validation error
    (whichever is longer), and fitted on the validation split's fused errors."""
    val_me = float(np.linalg.norm(s.val_mean - s.val_pos, axis=1).mean())
    val_fit = fit_correlogram(s.val_pos, s.val_mean - s.val_pos, s.val_cov, bin_m=0.2)
    lengths = {
        "fixed": 1.8,
        "spacing": 3.0 * s.spacing,
        "spacing x5.5": 5.5 * s.spacing,
        "spacing-or-error": max(3.0 * s.spacing, 0.6 * val_me),
        "validation": float(np.clip(val_fit.length_m, 0.3, 5.0)),
    }
    out = {"before": BEFORE}
    for name, length in lengths.items():
        out[name] = TrackerConfig(error_share=share, error_length_m=length)
    return out


def fused_summary(s: Served) -> dict[str, float]:
    """The served fused estimate's ME and 1 / 2-sigma coverage on the trajectories."""
    fused_d2 = mahalanobis2(s.mean - s.pos, s.cov)
    return {
        "me_m": float(np.linalg.norm(s.mean - s.pos, axis=1).mean()),
        "within_1sigma": float(np.mean(fused_d2 <= 1.0)),
        "within_2sigma": float(np.mean(fused_d2 <= 4.0)),
    }


def tracked(s: Served, share: float) -> dict[str, Any]:
    out: dict[str, Any] = {
        "site": s.site,
        "seed": s.seed,
        "spacing_m": s.spacing,
        "fused": fused_summary(s),
    }
    for name, config in arms(s, share).items():
        out[name] = filtered(s, config)
    return out


def lines(paths: Iterable[str]) -> list[dict[str, Any]]:
    return [json.loads(x) for p in paths for x in Path(p).read_text().splitlines() if x.strip()]


ARMS = ("before", "fixed", "spacing", "spacing x5.5", "spacing-or-error", "validation")
CALIBRATION = ("s200011", "s200001", "s200010")
"""Sites that chose the constants; the others only evaluate them."""


def table(fit_path: str, *track_paths: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fits = lines([fit_path])
    out = [
        "| site | role | seeds | label spacing (m) | trajectories: c | L (m) | L / spacing "
        "| labelled positions: c | L (m) | validation split: c | L (m) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for site in sorted({f["site"] for f in fits}):
        r = [f for f in fits if f["site"] == site]

        def col(part: str, key: str, r: list[dict[str, Any]] = r) -> np.ndarray:
            return np.array([f[part][key] for f in r])

        sp = np.array([f["spacing_m"] for f in r])
        role = "calibration" if site in CALIBRATION else "evaluation"
        out.append(
            f"| {site} | {role} | {len(r)} | {_span(sp, 2)} "
            f"| {_span(col('trajectories', 'share'), 2)} "
            f"| {_span(col('trajectories', 'length_m'), 2)} "
            f"| {_span(col('trajectories', 'length_m') / sp, 1)} "
            f"| {_span(col('labelled', 'share'), 2)} | {_span(col('labelled', 'length_m'), 2)} "
            f"| {_span(col('validation', 'share'), 2)} "
            f"| {_span(col('validation', 'length_m'), 2)} |"
        )
    for path in track_paths:
        runs = lines([path])
        share = runs[0]["spacing"]["share"]
        out += [
            "",
            f"Error share c = {share:g} (`{Path(path).name}`), medians over site-seeds; "
            "ME ratio: tracked / fused (paired against `before`, lower in):",
            "",
            "| sites | arm | tracked / fused ME | paired | inside 1 sigma | inside 2 sigma "
            "| gated |",
            "|---|---|---|---|---|---|---|",
        ]
        groups = [(site, [site]) for site in sorted({r["site"] for r in runs})]
        groups += [("calibration", list(CALIBRATION))]
        groups += [("evaluation", [s for s, _ in groups if s not in CALIBRATION])]
        for name, sites in groups:
            r = [x for x in runs if x["site"] in sites]
            fused1 = np.median([100 * x["fused"]["within_1sigma"] for x in r])
            fused2 = np.median([100 * x["fused"]["within_2sigma"] for x in r])
            out.append(
                f"| {name} ({len(r)}) | fused input | 1 | | {fused1:.1f} % | {fused2:.1f} % | |"
            )
            for arm in ARMS:
                paired = np.array([x[arm]["me_m"] / x["before"]["me_m"] for x in r])

                def med(key: str, arm: str = arm, r: list[dict[str, Any]] = r) -> float:
                    return float(np.median([x[arm][key] for x in r]))

                out.append(
                    f"| | {arm} | {med('me_over_fused'):.3f} "
                    f"| {np.median(paired):.3f} ({int(np.sum(paired < 1))} of {len(r)}) "
                    f"| {100 * med('within_1sigma'):.1f} % | {100 * med('within_2sigma'):.1f} % "
                    f"| {100 * med('gated'):.1f} % |"
                )
    (HERE / "table.md").write_text("\n".join(out) + "\n")
    print("\n".join(out))

    runs = lines([track_paths[0]])
    fig, axes = plt.subplots(1, 2, figsize=(11.5, 4.4))
    sites = sorted({f["site"] for f in fits})
    for i, site in enumerate(sites):
        r = [f for f in fits if f["site"] == site]
        x = [f["spacing_m"] for f in r]
        axes[0].scatter(x, [f["trajectories"]["length_m"] for f in r], c=f"C{i}", s=22,
                        label=site + (" (cal.)" if site in CALIBRATION else ""))  # fmt: skip
        axes[0].scatter(x, [f["labelled"]["length_m"] for f in r], c=f"C{i}", s=22, marker="x")
    grid = np.linspace(0, max(f["spacing_m"] for f in fits) * 1.1, 10)
    axes[0].plot(grid, 3.0 * grid, "k--", lw=1, label="L = 3 x spacing")
    axes[0].set(
        xlabel="label spacing (m)",
        ylabel="error correlation length L (m)",
        title="o: on trajectories, x: on labelled positions",
    )
    axes[0].legend(fontsize=7)
    for i, site in enumerate(sites):
        r = [x for x in runs if x["site"] == site]
        for arm, marker in (("before", "o"), ("spacing", "s")):
            x1 = [100 * v[arm]["within_1sigma"] for v in r]
            y2 = [100 * v[arm]["within_2sigma"] for v in r]
            axes[1].scatter(x1, y2, c=f"C{i}", marker=marker, s=24, alpha=0.85)
        fx = [100 * v["fused"]["within_1sigma"] for v in r]
        fy = [100 * v["fused"]["within_2sigma"] for v in r]
        axes[1].scatter(fx, fy, c=f"C{i}", marker="+", s=50)
    axes[1].add_patch(plt.Rectangle((34.3, 81.5), 10, 10, fill=False, ls="--", color="k"))
    axes[1].set(
        xlabel="inside 1 sigma (%)",
        ylabel="inside 2 sigma (%)",
        title="tracked coverage: o before, s c 0.9 / L 3 x spacing, + fused input",
    )
    fig.tight_layout()
    fig.savefig(HERE / "error-length.png", dpi=120)


def _span(v: np.ndarray, digits: int) -> str:
    return f"{np.median(v):.{digits}f} ({v.min():.{digits}f}-{v.max():.{digits}f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["fit", "track", "table"])
    parser.add_argument("args", nargs="+")
    parser.add_argument("--share", type=float, default=TrackerConfig().error_share)
    parser.add_argument("--without", action="append", default=[], metavar="BS")
    a = parser.parse_args()
    if a.command == "table":
        table(*a.args)
        return
    repo, site, labelled, tracks = a.args
    s = served(repo, site, Path(labelled), Path(tracks), a.without)
    result = fit(s) if a.command == "fit" else tracked(s, a.share)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
