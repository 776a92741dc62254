"""The report of a label-budget (`transfer`) experiment: does a backbone help a site it never saw?

Targets are grouped: the held-out procedural scenes together (each scene one
target; the group's value is the mean over scenes of each scene's seed mean,
its spread the standard deviation over scenes), every other target on its own
(mean ± sd over seeds). Gains over scratch are per-target ratios of seed means,
combined over a group by their geometric mean, so one easy scene cannot carry
the group. Everything is computed from the `Summary`, like the paper report.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from matplotlib.figure import Figure

from training.experiments.aggregate import Stat, Summary
from training.experiments.grid import SCRATCH, Preset, source_set_of, strategy_kind

PROC_GROUP = "held-out procedural scenes"
METRIC_NAMES = {"me": "ME (m)", "crps": "CRPS (m)", "within_1sigma": "share within 1 sigma"}


def target_groups(targets: Sequence[str]) -> dict[str, list[str]]:
    """Procedural targets as one group, the others one group each, in first-seen order."""
    groups: dict[str, list[str]] = {}
    for t in targets:
        groups.setdefault(PROC_GROUP if t.startswith("proc/") else t, []).append(t)
    return groups


def arms(summary: Summary) -> list[tuple[str, str]]:
    """(strategy, mode) pairs present: scratch first, then in first-seen order."""
    seen = dict.fromkeys((k[2], k[3]) for k in summary.cells)
    return [a for a in seen if a[0] == SCRATCH] + [a for a in seen if a[0] != SCRATCH]


def arm_label(arm: tuple[str, str]) -> str:
    strategy, mode = arm
    return strategy if strategy == SCRATCH else f"{strategy} {mode}"


def group_stat(
    summary: Summary, group: list[str], arm: tuple[str, str], labels: float, metric: str
) -> Stat:
    """One group's value: the seed stats of a single target, or stats over targets' means."""
    loss = "nll"
    cells = [summary.get(t, loss, arm[0], arm[1], labels) for t in group]
    present = [c[metric] for c in cells if c is not None and metric in c]
    if len(group) == 1:
        return present[0] if present else Stat.of([])
    return Stat.of(s.mean for s in present)


def gain(
    summary: Summary, group: list[str], arm: tuple[str, str], labels: float, metric: str = "me"
) -> tuple[float, int, int]:
    """(geometric-mean ratio arm/scratch over the group's targets, targets better, targets)."""
    logs: list[float] = []
    for t in group:
        a = summary.mean(t, "nll", arm[0], arm[1], labels, metric)
        b = summary.mean(t, "nll", SCRATCH, "finetune", labels, metric)
        if a > 0 and b > 0:
            logs.append(math.log(a / b))
    if not logs:
        return math.nan, 0, 0
    return math.exp(sum(logs) / len(logs)), sum(x < 0 for x in logs), len(logs)


def labels_to_match(
    summary: Summary, group: list[str], arm: tuple[str, str], budgets: list[float]
) -> float | None:
    """Smallest budget where the arm's group ME is at most scratch's at the largest budget."""
    top = max(
        (b for b in budgets if group_stat(summary, group, (SCRATCH, "finetune"), b, "me").n),
        default=None,
    )
    if top is None:
        return None
    goal = group_stat(summary, group, (SCRATCH, "finetune"), top, "me").mean
    for b in sorted(budgets):
        st = group_stat(summary, group, arm, b, "me")
        if st.n and st.mean <= goal:
            return b
    return None


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def plot_group(
    summary: Summary, group_name: str, group: list[str], budgets: list[float], path: Path
) -> Path | None:
    """ME, CRPS and 1-sigma coverage against labels, one line per backbone and mode."""
    fig = Figure(figsize=(15, 4.2), layout="constrained")
    axes = fig.subplots(1, 3)
    drawn = False
    for ax, metric in zip(axes, METRIC_NAMES, strict=True):
        for arm in arms(summary):
            xs, ys, es = [], [], []
            for b in budgets:
                st = group_stat(summary, group, arm, b, metric)
                if st.n:
                    xs.append(b)
                    ys.append(st.mean)
                    es.append(st.std)
            if xs:
                drawn = True
                ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3, label=arm_label(arm))
        if metric == "within_1sigma":
            ax.axhline(0.393, color="grey", ls="--", lw=1, label="ideal 39.3 %")
        ax.set_xscale("log")
        ax.set_xlabel("labels at the target")
        ax.set_title(METRIC_NAMES[metric])
        ax.grid(alpha=0.3)
    if not drawn:
        return None
    axes[0].legend(fontsize=8)
    spread = "sd over scenes" if len(group) > 1 else "sd over seeds"
    fig.suptitle(f"{group_name} ({len(group)} target(s); bars: {spread})")
    return _save(fig, path)


def plot_ratios(
    summary: Summary, targets: list[str], budgets: list[float], path: Path
) -> Path | None:
    """Per target, each backbone's seed-mean ME over scratch's: the gain scene by scene."""
    backbones = [a for a in arms(summary) if a[0] != SCRATCH]
    fig = Figure(figsize=(5.5 * len(budgets), 4.2), layout="constrained")
    axes = fig.subplots(1, len(budgets), squeeze=False)
    drawn = False
    for ax, b in zip(axes[0], budgets, strict=True):
        for j, arm in enumerate(backbones):
            xs, ys = [], []
            for i, t in enumerate(targets):
                a = summary.mean(t, "nll", arm[0], arm[1], b)
                ref = summary.mean(t, "nll", SCRATCH, "finetune", b)
                if a > 0 and ref > 0:
                    xs.append(i + 0.15 * (j - (len(backbones) - 1) / 2))
                    ys.append(a / ref)
            if xs:
                drawn = True
                ax.scatter(xs, ys, label=arm_label(arm), s=28)
        ax.axhline(1.0, color="grey", lw=1)
        ax.set_xticks(range(len(targets)))
        ax.set_xticklabels([t.removeprefix("proc/") for t in targets], rotation=60, fontsize=7)
        ax.set_title(f"{b:.0f} labels")
        ax.set_ylabel("ME / scratch ME (seed means)")
        ax.grid(alpha=0.3)
    if not drawn:
        return None
    axes[0][0].legend(fontsize=8)
    return _save(fig, path)


def plot_nb(
    summary: Summary,
    groups: dict[str, list[str]],
    nb: dict[str, int],
    budgets: list[float],
    path: Path,
) -> Path | None:
    """ME against N_B (corpus source sets), one line per target group and budget, with
    scratch at the same budget dashed in the same colour; beside it the ratio to scratch
    (geometric mean over the group's targets), the number the transfer goal is set in."""
    if len(nb) < 2:
        return None
    fig = Figure(figsize=(11, 4.2), layout="constrained")
    ax, ax_ratio = fig.subplots(1, 2)
    for name, group in groups.items():
        for b in budgets:
            pts, ratios = [], []
            for strategy, n in sorted(nb.items(), key=lambda kv: kv[1]):
                modes = [m for s, m in arms(summary) if s == strategy]
                if modes:
                    st = group_stat(summary, group, (strategy, modes[0]), b, "me")
                    if st.n:
                        pts.append((n, st.mean))
                        ratios.append((n, gain(summary, group, (strategy, modes[0]), b)[0]))
            if len(pts) > 1:
                label = f"{name}, {b:.0f} labels"
                (line,) = ax.plot(*zip(*pts, strict=True), marker="o", label=label)
                ax_ratio.plot(*zip(*ratios, strict=True), marker="o", color=line.get_color())
                scratch = group_stat(summary, group, (SCRATCH, "finetune"), b, "me")
                if scratch.n:  # the level every N_B is judged against
                    ax.axhline(scratch.mean, color=line.get_color(), ls="--", lw=1)
    ax_ratio.axhline(1.0, color="grey", ls="--", lw=1)
    for a, ylabel in ((ax, "ME (m); dashed: scratch"), (ax_ratio, "ME / scratch ME")):
        a.set_xscale("log")
        a.set_xlabel("N_B (source environments)")
        a.set_ylabel(ylabel)
        a.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _save(fig, path)


def transfer_section(
    summary: Summary, preset: Preset, out_dir: Path, source_envs: dict[str, int]
) -> list[str]:
    """Markdown of the transfer results; writes its figures under `out_dir/figures`.

    ``source_envs``: environments each cached MEML source trained on (N_B).
    """
    targets = list(dict.fromkeys(k[0] for k in summary.cells))
    groups = target_groups(targets)
    budgets = sorted({k[4] for k in summary.cells})
    all_arms = arms(summary)
    lines = ["## Transfer to sites never seen", ""]
    for name, group in groups.items():
        spread = "sd over scenes of the seed means" if len(group) > 1 else "sd over seeds"
        lines += [f"### {name} ({len(group)} target(s)): mean ± {spread}", ""]
        for metric in ("me", "crps"):
            rows = []
            for arm in all_arms:
                cells = []
                for b in budgets:
                    st = group_stat(summary, group, arm, b, metric)
                    cells.append(f"{st.mean:.2f} ± {st.std:.2f} (n {st.n})" if st.n else "—")
                rows.append([arm_label(arm), *cells])
            header = [METRIC_NAMES[metric], *(f"{b:.0f} labels" for b in budgets)]
            lines += [_table(header, rows), ""]
        rows = []
        for arm in all_arms:
            if arm[0] == SCRATCH:
                continue
            cells = []
            for b in budgets:
                r_me, better, n = gain(summary, group, arm, b, "me")
                r_crps, _, _ = gain(summary, group, arm, b, "crps")
                cells.append(f"{r_me:.2f} / {r_crps:.2f} ({better}/{n} better)" if n else "—")
            match = labels_to_match(summary, group, arm, budgets)
            rows.append([arm_label(arm), *cells, f"{match:.0f}" if match else "not reached"])
        lines += [
            "Ratio to scratch, ME / CRPS (geometric mean over targets; below 1 is a gain), and "
            "the labels each backbone needs to match scratch's ME at the largest budget:",
            "",
            _table(["backbone", *(f"{b:.0f} labels" for b in budgets), "labels to match"], rows),
            "",
        ]
        rows = []
        for arm in all_arms:
            cells = []
            for b in budgets:
                one = group_stat(summary, group, arm, b, "within_1sigma")
                two = group_stat(summary, group, arm, b, "within_2sigma")
                cells.append(f"{one.mean:.0%} / {two.mean:.0%}" if one.n else "—")
            rows.append([arm_label(arm), *cells])
        lines += [
            "Coverage within 1 / 2 sigma (ideal 39 % / 86 %):",
            "",
            _table(["backbone", *(f"{b:.0f} labels" for b in budgets)], rows),
            "",
        ]
        fig = plot_group(
            summary, name, group, budgets, out_dir / "figures" / f"transfer_{_slug(name)}.png"
        )
        if fig is not None:
            lines += [f"![{name}](figures/{fig.name})", ""]
    fig = plot_ratios(summary, targets, budgets, out_dir / "figures" / "transfer_ratios.png")
    if fig is not None:
        lines += ["### Gain over scratch, target by target", ""]
        lines += [f"![ratios](figures/{fig.name})", ""]
    nb = {
        s: n
        for s, n in source_envs.items()
        if (source_set_of(s) or "").startswith("corpus") and strategy_kind(s) == "meml"
    }
    fig = plot_nb(summary, groups, nb, budgets, out_dir / "figures" / "transfer_nb.png")
    if fig is not None:
        lines += ["### ME against N_B", "", f"![N_B](figures/{fig.name})", ""]
    degenerate = {
        arm_label(arm): sum(
            c["degenerate"].total
            for k, c in summary.cells.items()
            if (k[2], k[3]) == arm and "degenerate" in c
        )
        for arm in all_arms
    }
    lines += [
        "Degenerate runs (test ME near the centroid predictor's, after one retry): "
        + ", ".join(f"{k} {v:.0f}" for k, v in degenerate.items()),
        "",
    ]
    if preset.source_sets:
        lines += [
            "Source sets: "
            + "; ".join(
                f"`{s.name}` = {', '.join(s.envs)}"
                + (f" (N_B = {s.count})" if s.count else " (all)")
                for s in preset.source_sets
            )
            + ". Environments actually used per source: "
            + ", ".join(f"{k} {v}" for k, v in source_envs.items())
            + f". Probe scenes (checkpoint selection): {', '.join(preset.probe_envs) or 'none'}.",
            "",
        ]
    return lines


def _save(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name).strip("_")
