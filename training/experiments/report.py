"""Experiment outputs: per-run CSV, fold-summary CSV, paper-style tables, figures, markdown report.

All numbers come from the run results through `aggregate.summarize`; nothing
here is hard-coded, so rerunning on other data rewrites the verdicts too.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from training.experiments.aggregate import DTL_BEST, DTL_MEAN, STAT_KEYS, Summary, summarize
from training.experiments.claims import Claim, evaluate_claims, finetune_variants
from training.experiments.grid import DTL_PREFIX, META_STRATEGIES, SCRATCH, Preset, Run
from training.experiments.modes import mode_header, mode_rows
from training.experiments.store import RunResult, atomic_write_text
from training.experiments.transfer_report import transfer_section

RESULTS_CSV = "results.csv"
SUMMARY_CSV = "summary.csv"
REPORT_MD = "report.md"

_LABELS = {
    SCRATCH: "scratch",
    DTL_MEAN: "DTL (mean of sources)",
    DTL_BEST: "DTL (best source)",
    "meml-mse": "MEML (mse sources)",
    "meml-nll": "MEML (nll sources)",
    "maml-mse": "MAML (mse sources)",
    "maml-nll": "MAML (nll sources)",
    "tbmaml-mse": "TB-MAML (mse sources)",
    "tbmaml-nll": "TB-MAML (nll sources)",
}


@dataclass(frozen=True)
class ReportContext:
    """What the report says about how it was made (the reader must be able to rerun it)."""

    preset: Preset
    command: str
    data_path: str
    data_sizes: dict[str, int]
    data_sources: dict[str, dict[str, Any]]
    elapsed_s: float
    source_wall_s: dict[str, float]
    source_envs: dict[str, int] = field(default_factory=dict)
    """Environments each cached MEML source trained on (N_B)."""


def write_results_csv(results: Sequence[RunResult], path: Path) -> None:
    """One row per (cell, fold), sorted by run key."""
    rows = [r.row() for r in sorted(results, key=lambda r: r.run)]
    buf = io.StringIO()
    if rows:
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def write_summary_csv(summary: Summary, path: Path) -> None:
    """One row per cell (DTL mean/best included): mean and std over folds of every metric."""
    buf = io.StringIO()
    fields = ["target", "loss", "strategy", "mode", "fraction", "folds"]
    for m in STAT_KEYS:
        fields += [f"{m}_mean", f"{m}_std"]
    writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for (target, loss, strategy, mode, frac), stats in sorted(summary.cells.items()):
        row: dict[str, object] = {
            "target": target,
            "loss": loss,
            "strategy": strategy,
            "mode": mode,
            "fraction": frac,
            "folds": stats["me"].n if "me" in stats else 0,
        }
        for m in STAT_KEYS:
            s = stats.get(m)
            row[f"{m}_mean"] = "" if s is None else f"{s.mean:.6g}"
            row[f"{m}_std"] = "" if s is None else f"{s.std:.6g}"
        writer.writerow(row)
    atomic_write_text(path, buf.getvalue())


def _mode_section(summary: Summary) -> list[str]:
    """The mode comparison (only when the grid ran `auto`), with its verdict on `auto`."""
    if "auto" not in summary.axes()[3]:
        return []
    rows, verdict = mode_rows(summary)
    return [
        "## Target training modes",
        "",
        "Test ME per mode, mean / median over folds; `degenerate runs` counts the cell's runs "
        "(all modes) whose validation ME stayed within 5 % of the centroid predictor's, "
        "after a second initialisation.",
        "",
        f"**auto**: within 3 % of the best single mode's ME in {verdict.near_best} of "
        f"{verdict.cells} cells (goal: at least 90 %); at worst "
        f"{verdict.worst_vs_finetune:.3f} x finetune ({verdict.worst_cell or '—'}; goal: at "
        "most 1.05): " + ("**holds**." if verdict.holds else "**does not hold**."),
        "",
        _md_table(mode_header(summary), rows),
        "",
    ]


def _md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def _row_strategies(summary: Summary) -> list[str]:
    _, _, strategies, _, _ = summary.axes()
    dtl = sorted(s for s in strategies if s.startswith(DTL_PREFIX))
    out = [SCRATCH] if SCRATCH in strategies else []
    out += dtl
    if dtl:
        out += [DTL_MEAN, DTL_BEST]
    out += sorted(s for s in strategies if s.startswith("meml-"))
    return out + [s for s in META_STRATEGIES if s in strategies]


def paper_table(summary: Summary, target: str, loss: str, fraction: float) -> str:
    """Tables II-V: strategies x target training at one fraction, ME (CRPS for NLL), mean ± std."""
    _, _, _, modes, _ = summary.axes()
    metrics = ["me", "crps"] if loss == "nll" else ["me"]
    header = ["strategy"] + [f"{m.upper()} {mode} (m)" for mode in modes for m in metrics]
    rows = []
    for strategy in _row_strategies(summary):
        label = _LABELS.get(strategy, strategy)
        cells = []
        for mode in modes:
            stats = summary.get(target, loss, strategy, mode, fraction)
            for m in metrics:
                cells.append("—" if stats is None or m not in stats else stats[m].fmt(3))
        if strategy == DTL_BEST:
            srcs = {summary.dtl_best_source.get((target, loss, md, fraction), "?") for md in modes}
            label += f" [{', '.join(sorted(srcs))}]"
        rows.append([label, *cells])
    return _md_table(header, rows)


def plot_curves(summary: Summary, target: str, loss: str, metric: str, path: Path) -> Path | None:
    """Figs. 9-14: metric vs target training samples, a line per strategy, error bars over folds."""
    _, _, _, modes, fractions = summary.axes()
    # One DTL line per aggregate, not per source: the figure stays readable.
    strategies = [s for s in _row_strategies(summary) if not s.startswith(DTL_PREFIX)]
    fig = Figure(figsize=(5.0 * len(modes), 4.0), layout="constrained")
    axes = fig.subplots(1, len(modes), sharey=True, squeeze=False)[0]
    drawn = False
    for ax, mode in zip(axes, modes, strict=True):
        for strategy in strategies:
            xs, ys, es = [], [], []
            for frac in fractions:
                stats = summary.get(target, loss, strategy, mode, frac)
                if stats is None or metric not in stats:
                    continue
                xs.append(stats["n_train"].mean)
                ys.append(stats[metric].mean)
                es.append(stats[metric].std)
            if xs:
                ax.errorbar(
                    xs, ys, yerr=es, marker="o", capsize=3, label=_LABELS.get(strategy, strategy)
                )
                drawn = True
        ax.set_title(f"{target}, {loss} target loss, {mode}")
        ax.set_xlabel("target training samples")
        ax.grid(alpha=0.3)
    if not drawn:
        return None
    axes[0].set_ylabel(f"{'mean error' if metric == 'me' else metric.upper()} (m)")
    axes[-1].legend(fontsize="small")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


def _made_by(source: dict[str, Any]) -> str:
    """One line of a file's `source` attr: generator, preset, seed, SNR settings."""
    keys = ("generator", "preset", "seed")
    parts = [f"{k} {source[k]}" for k in keys if k in source]
    meas = source.get("measurement")
    if isinstance(meas, dict) and "max_snr_db" in meas:
        parts.append(f"max SNR {meas['max_snr_db']} dB")
    return ", ".join(parts) or "—"


def _claim_md(i: int, claim: Claim) -> str:
    parts = [f"### Claim {i}: {claim.title} — **{claim.verdict}**", "", claim.statement, ""]
    parts += [f"> {n}" for n in claim.notes]
    if claim.rows:
        parts += ["", _md_table(claim.header, claim.rows)]
    return "\n".join(parts)


def write_report(
    out_dir: Path, results: Sequence[RunResult], planned: Sequence[Run], ctx: ReportContext
) -> Path:
    """Write the CSVs, figures/*.png and report.md into `out_dir`; return the report's path."""
    out_dir = Path(out_dir)
    write_results_csv(results, out_dir / RESULTS_CSV)
    summary = summarize(results)
    write_summary_csv(summary, out_dir / SUMMARY_CSV)
    targets, losses, _, _, fractions = summary.axes()
    p = ctx.preset

    figures: list[Path] = []
    for target in [] if p.labels else targets:  # label budgets: transfer_report's figures
        for loss in losses:
            for metric in ["me", "crps"] if loss == "nll" else ["me"]:
                name = f"{target.replace('/', '_')}_{loss}_{metric}.png"
                fig = plot_curves(summary, target, loss, metric, out_dir / "figures" / name)
                if fig is not None:
                    figures.append(fig)

    done = {r.run for r in results}
    missing = [r for r in planned if r not in done]
    run_wall = sum(r.wall_s for r in results)
    lines = [
        f"# csipos experiment `{p.name}`: transfer to a new site with little data",
        "",
        "Reproduces the comparison of Foliadis et al. (Fig. 6, Tables II-V, Figs. 9-14) "
        "on our data.",
        "",
        "## How this was made",
        "",
        f"- Command: `{ctx.command}`",
        f"- Data: `{ctx.data_path}`; samples per environment: "
        + (
            ", ".join(f"{k} {v}" for k, v in ctx.data_sizes.items())
            if len(ctx.data_sizes) <= 40
            else f"{len(ctx.data_sizes)} environments, {min(ctx.data_sizes.values())}-"
            f"{max(ctx.data_sizes.values())} each (per environment in `experiment.json`)"
        ),
        f"- Grid: targets {', '.join(p.targets)}; target losses {', '.join(p.losses)}; "
        f"strategies {', '.join(p.strategies)}; target training {', '.join(p.modes)}; "
        + (
            f"labels {', '.join(map(str, p.labels))}; seeds {len(p.folds)}; "
            if p.labels
            else f"fractions {', '.join(f'{f:.0%}' for f in p.fractions)}; "
            f"folds {len(p.folds)} of k = {p.k}; "
        )
        + f"test set {p.test_fraction:.0%} of each target, fixed.",
        f"- Caps: target pool {p.max_target_pool or 'all'}, source samples per environment "
        f"{p.max_source_samples or 'all'}; DTL sources trained with {p.dtl_loss}.",
        f"- Budgets (optimizer steps): sources at least {p.source.min_steps} steps, at most "
        f"{p.source.epochs} epochs, patience {p.source.patience} validations, "
        f"batch {p.source.batch_size}, lr {p.source.lr:g}; targets at least "
        f"{p.target.min_steps} steps per phase, at most {p.target.epochs} epochs, patience "
        f"{p.target.patience} validations, batch {p.target.batch_size}, lr {p.target.lr:g}; "
        f"gradual: {p.target.head_warmup_steps}-step head warm-up, then x"
        f"{p.target.unfreeze_lr_factor:g}; gradual-paper: head to plateau, then x0.1; "
        f"NLL trained as beta-NLL, beta {p.target.beta:g}.",
        f"- Runs: {len(results)} of {len(planned)} finished; wall time of this invocation "
        f"{ctx.elapsed_s / 60:.1f} min; summed run time {run_wall / 60:.1f} min; source "
        "training " + ", ".join(f"{k} {v:.0f} s" for k, v in ctx.source_wall_s.items()) + ".",
        *([f"- Preset notes: {p.notes}"] if p.notes else []),
        "- Scratch trains every layer from random init, so it has one value per cell that "
        "stands in both the fine-tuning and the gradual columns.",
    ]
    if ctx.data_sources and len(ctx.data_sources) > 40:
        lines += [
            "",
            f"Data: {len(ctx.data_sources)} environments (full generator parameters and "
            "sizes in `experiment.json`).",
        ]
    elif ctx.data_sources:
        lines += ["", "Data (full generator parameters in `experiment.json`):", ""]
        rows = [
            [env, str(ctx.data_sizes.get(env, "?")), _made_by(d.get("source", {})),
             str(d.get("description", ""))]
            for env, d in ctx.data_sources.items()
        ]  # fmt: skip
        lines.append(_md_table(["environment", "samples", "made by", "description"], rows))
    if missing:
        lines += ["", f"**Incomplete: {len(missing)} runs missing** (rerun the command to resume)."]

    if p.labels:
        lines += ["", *transfer_section(summary, p, out_dir, ctx.source_envs)]
        return _finish(out_dir, lines)

    lines += ["", "## The paper's claims on our data", ""]
    for i, claim in enumerate(evaluate_claims(summary), start=1):
        lines += [_claim_md(i, claim), ""]
    variants = finetune_variants(summary)
    if variants:
        lines += ["## Claims 3 and 4 with fine-tuning instead of gradual unfreezing", ""]
        for i, claim in enumerate(variants, start=3):
            lines += [_claim_md(i, claim), ""]

    lines += _mode_section(summary)

    if fractions:
        frac = fractions[0]
        lines += [f"## Tables at {frac:.0%} of the target data (mean ± std over folds)", ""]
        for target in targets:
            for loss in losses:
                n = summary.get(target, loss, SCRATCH, "finetune", frac)
                n_txt = f", {n['n_train'].mean:.0f} training samples" if n else ""
                lines += [f"### {target}, {loss} target loss{n_txt}", ""]
                lines += [paper_table(summary, target, loss, frac), ""]

    if figures:
        lines += ["## Figures", ""]
        lines += [f"![{f.stem}](figures/{f.name})" for f in figures]
        lines += [""]
    lines += [
        "## Files",
        "",
        f"- `{RESULTS_CSV}`: one row per run (cell x fold): test ME, median, p90, CRPS, NLL, "
        "calibration (share within 1 and 2 sigma, expected 39.3 % and 86.5 %), epochs per "
        "phase, wall time.",
        f"- `{SUMMARY_CSV}`: mean and std over folds per cell, DTL mean and best included.",
    ]
    return _finish(out_dir, lines)


def _finish(out_dir: Path, lines: list[str]) -> Path:
    path = out_dir / REPORT_MD
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path
