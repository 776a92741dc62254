"""`csipos experiment`: the paper's K-fold comparison grid."""

from __future__ import annotations

import logging
import shlex
import sys
from pathlib import Path
from typing import Annotated

import typer

from training.cluster.cli import (
    AddressOption,
    ExecutorOption,
    TaskCpusOption,
    WorkersOption,
    executor_config,
)


def register_top_level(root: typer.Typer) -> None:
    """Add `experiment` to the root app."""
    root.command("experiment")(experiment)


def experiment(
    data: Annotated[
        list[Path],
        typer.Option(
            "--data",
            metavar="FILE",
            help="Fingerprint file(s) holding the targets (lab-los, lab-nlos) and the "
            "industrial sources; repeat for several files.",
            exists=True,
            dir_okay=False,
        ),
    ],
    out: Annotated[
        Path,
        typer.Option(
            "--out", metavar="DIR", help="Experiment dir: results, report; rerun it to resume."
        ),
    ],
    preset: Annotated[
        str,
        typer.Option(
            "--preset",
            metavar="NAME",
            help="quick (machinery check, tiny data), paper (~1.5-2 h on 2 cores) or "
            "paper-full (the paper's sizes; for a GPU).",
        ),
    ] = "quick",
    workers: WorkersOption = None,
    seed: Annotated[int, typer.Option("--seed", min=0, help="Experiment seed: splits, inits.")] = 0,
    device: Annotated[
        str, typer.Option("--device", help="Torch device for training: cpu, cuda, cuda:1.")
    ] = "cpu",
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress display.")] = False,
    report_only: Annotated[
        bool,
        typer.Option("--report-only", help="Only rewrite the report from the finished runs."),
    ] = False,
    executor: ExecutorOption = "local",
    address: AddressOption = None,
    task_cpus: TaskCpusOption = 1,
) -> None:
    """Run the MEML / DTL / scratch comparison over folds and data fractions, then report.

    Results go to OUT/runs (one file per finished run), the report to
    OUT/report.md with results.csv, summary.csv and figures/. Interrupt at any
    time: the same command resumes and redoes nothing that finished. With
    `--executor ray` the runs are Ray tasks on a cluster; OUT stays on this machine.
    """
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TaskID,
        TextColumn,
        TimeElapsedColumn,
    )

    from training.cluster import ClusterUnavailableError
    from training.experiments.aggregate import summarize
    from training.experiments.claims import evaluate_claims
    from training.experiments.grid import get_preset
    from training.experiments.runner import STATE_FILE, ExperimentStateError, run_experiment
    from training.experiments.runner import Progress as Update
    from training.experiments.runner import report as write_report
    from training.experiments.store import ResultStore

    console = Console(stderr=True, quiet=quiet)
    errors = Console(stderr=True)  # errors show even with --quiet
    cluster = executor_config(executor, workers, address, task_cpus)
    try:
        chosen = get_preset(preset)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--preset") from exc
    if report_only:
        if not (out / STATE_FILE).is_file():
            errors.print(f"[red]error:[/red] {out} holds no experiment to report on")
            raise typer.Exit(2)
        console.print(f"report: {write_report(chosen, out)}")
        return
    if not quiet:
        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    bar = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA {task.fields[eta]}  {task.fields[last]}"),
        console=console,
        disable=quiet,
    )
    tasks: dict[str, TaskID] = {}

    def show(update: Update) -> None:
        if update.stage not in tasks:
            tasks[update.stage] = bar.add_task(update.stage, total=update.total, eta="?", last="")
        eta = "?" if update.eta_s is None else f"{update.eta_s / 60:.1f} min"
        failed = f" ({update.failed} failed)" if update.failed else ""
        bar.update(tasks[update.stage], completed=update.done, eta=eta, last=update.last + failed)

    command = shlex.join(["csipos", *sys.argv[1:]])
    try:
        with bar:
            outcome = run_experiment(
                chosen,
                data,
                out,
                workers=workers or 1,
                seed=seed,
                device=device,
                progress=show,
                command=command,
                executor=cluster,
            )
    except (ExperimentStateError, ValueError, ClusterUnavailableError) as exc:
        errors.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc

    results = ResultStore(out).load(outcome.planned)
    for i, claim in enumerate(evaluate_claims(summarize(results)), start=1):
        console.print(f"claim {i}: {claim.title}: [bold]{claim.verdict}[/bold]")
    console.print(
        f"{outcome.ran} runs done now, {outcome.skipped} already done, "
        f"{len(outcome.failed)} failed; {outcome.elapsed_s / 60:.1f} min; report: {outcome.report}"
    )
    if not outcome.complete:
        for key, err in list(outcome.failed.items())[:10]:
            errors.print(f"[red]failed[/red] {key}: {err}")
        errors.print("Rerun the same command to retry the missing runs.")
        raise typer.Exit(1)
