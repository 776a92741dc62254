"""`csipos data simulate` and `csipos data plot` (registered on the `data` sub-app)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from training.cluster import ExecutorConfig
from training.cluster.cli import (
    AddressOption,
    ExecutorOption,
    TaskCpusOption,
    WorkersOption,
    executor_config,
)

console = Console()


def simulate(
    out: Annotated[Path, typer.Option("--out", help="HDF5 file to write (created or extended).")],
    scene: Annotated[
        list[str],
        typer.Option(
            "--scene",
            help="Built-in scene (industrial, lab-los, lab-nlos), a .json/.yaml scene file, or "
            "'procedural' (with --count). Repeat to put several scenes in one file.",
        ),
    ],
    preset: Annotated[
        str,
        typer.Option(
            help="Dataset size: tiny or paper; with procedural scenes tiny, pilot or corpus."
        ),
    ] = "tiny",
    seed: Annotated[
        int,
        typer.Option(
            help="Seed for positions, noise and offsets; with procedural scenes the first scene "
            "number (scenes seed .. seed+count-1)."
        ),
    ] = 0,
    positions: Annotated[
        int | None,
        typer.Option(help="UE positions per scene (overrides the preset's count)."),
    ] = None,
    count: Annotated[
        int | None, typer.Option(help="Procedural scenes: how many (needs --scene procedural).")
    ] = None,
    workers: WorkersOption = None,
    chain: Annotated[
        str,
        typer.Option(
            help="Procedural scenes: 'random' draws each BS's measurement chain (pattern, SNR, "
            "timing, phases, orientation); 'nominal' keeps the fixed scenes' chain."
        ),
    ] = "random",
    overwrite: Annotated[
        bool, typer.Option(help="Replace environments of these scenes already in the file.")
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
    trajectories: Annotated[
        int | None,
        typer.Option(
            help="UEs along N seeded trajectories (walking/forklift, 10 Hz) instead of "
            "independent positions; the samples get `time` and `track` (docs/data.md)."
        ),
    ] = None,
    duration: Annotated[float, typer.Option(help="Trajectories: seconds per trajectory.")] = 60.0,
    motion: Annotated[
        str, typer.Option(help="Trajectories: walk, forklift or mixed (one draw per track).")
    ] = "mixed",
    executor: ExecutorOption = "local",
    address: AddressOption = None,
    task_cpus: TaskCpusOption = 1,
    min_bs: Annotated[
        int | None,
        typer.Option(
            "--min-bs",
            help="Procedural scenes: at least this many base stations each (1-4), e.g. 3 for "
            "a multi-BS evaluation site (other scenes than without it).",
        ),
    ] = None,
) -> None:
    """Ray-trace scenes with Sionna RT and write one fingerprint environment per base station.

    `--scene procedural --count N --seed S` traces procedural scenes S..S+N-1 (one
    environment per scene and BS, `proc/sNNNN/bsK`); a killed run resumes where it
    stopped when started again with the same options. `--executor ray` traces the
    scenes as Ray tasks on a cluster (docs/cluster.md). `--trajectories N --duration S`
    moves the UEs along N trajectories of S seconds at 10 Hz (for tracking); for a
    procedural scene, write it with `csipos data scenes` and pass its YAML file. Every
    environment carries `sample_id`, so the BSs of a scene (`proc/sNNNN`) are one
    multi-BS site file (`csipos train site --env proc/sNNNN`).
    """
    from training.sim.builtin import resolve_scene
    from training.sim.generate import generate
    from training.sim.raytrace import SimulatorUnavailableError
    from training.sim.scene import SceneSpecError
    from training.sim.trajectory import TrajectoryConfig

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    tracks: TrajectoryConfig | None = None
    if trajectories is not None:
        if "procedural" in scene:
            console.print(
                "[red]error:[/red] --trajectories needs scene names or files; write procedural "
                "scenes with `csipos data scenes` and pass their YAML files"
            )
            raise typer.Exit(code=2)
        if positions is not None:
            console.print("[red]error:[/red] --positions and --trajectories: give one")
            raise typer.Exit(code=2)
        try:
            tracks = TrajectoryConfig(trajectories, duration, motion=motion)
        except ValueError as exc:
            console.print(f"[red]error:[/red] {exc}")
            raise typer.Exit(code=2) from exc
    if "procedural" in scene:
        if len(scene) != 1:
            console.print("[red]error:[/red] --scene procedural cannot be mixed with other scenes")
            raise typer.Exit(code=2)
        cluster = executor_config(executor, workers, address, task_cpus)
        _simulate_procedural(
            out, preset, seed, positions, count, cluster, chain, overwrite, quiet, min_bs
        )
        return
    if min_bs is not None:
        console.print("[red]error:[/red] --min-bs needs --scene procedural")
        raise typer.Exit(code=2)
    if executor != "local":
        console.print("[red]error:[/red] --executor needs --scene procedural")
        raise typer.Exit(code=2)
    if count is not None:
        console.print("[red]error:[/red] --count needs --scene procedural")
        raise typer.Exit(code=2)
    try:
        specs = [resolve_scene(s) for s in scene]
        table = Table("environment", "samples", "LOS %", "dropped", "wall s")
        total = 0.0
        for spec in specs:
            report = generate(
                spec,
                out,
                preset=preset,
                seed=seed,
                positions=positions,
                overwrite=overwrite,
                quiet=quiet,
                trajectories=tracks,
            )
            total += report.wall_s
            for env in report.environments:
                table.add_row(
                    env.env,
                    str(env.samples),
                    f"{100 * env.los_share:.0f}",
                    str(env.dropped),
                    f"{env.wall_s:.1f}",
                )
    except (ValueError, FileNotFoundError, FileExistsError, SimulatorUnavailableError) as exc:
        kind = "scene" if isinstance(exc, SceneSpecError) else "error"
        console.print(f"[red]{kind}:[/red] {exc}")
        raise typer.Exit(code=2) from exc
    if not quiet:
        console.print(table)
    size_mb = out.stat().st_size / 2**20
    console.print(f"wrote {out} ({size_mb:.1f} MiB) in {total:.1f} s")


def _simulate_procedural(
    out: Path,
    preset: str,
    seed: int,
    positions: int | None,
    count: int | None,
    cluster: ExecutorConfig,
    chain: str,
    overwrite: bool,
    quiet: bool,
    min_bs: int | None = None,
) -> None:
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from training.cluster import ClusterUnavailableError
    from training.sim.corpus import simulate_procedural
    from training.sim.procedural import ProceduralPreset, get_procedural_preset
    from training.sim.raytrace import SimulatorUnavailableError

    if count is None:
        console.print("[red]error:[/red] --scene procedural needs --count N")
        raise typer.Exit(code=2)
    if chain not in ("random", "nominal"):
        console.print(f"[red]error:[/red] --chain: expected random or nominal, got {chain!r}")
        raise typer.Exit(code=2)
    chosen: str | ProceduralPreset = preset
    if min_bs is not None:
        try:
            chosen = get_procedural_preset(preset).with_min_base_stations(min_bs)
        except ValueError as exc:
            console.print(f"[red]error:[/red] --min-bs: {exc}")
            raise typer.Exit(code=2) from exc
    progress = Progress(
        TextColumn("positions x BS"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        disable=quiet,
    )
    try:
        with progress:
            task = progress.add_task("trace", total=None)
            report = simulate_procedural(
                out,
                count=count,
                seed=seed,
                preset=chosen,
                randomise_chain=chain == "random",
                positions=positions,
                overwrite=overwrite,
                on_progress=lambda done, total: progress.update(task, completed=done, total=total),
                executor=cluster,
            )
    except (
        ValueError,
        FileNotFoundError,
        FileExistsError,
        SimulatorUnavailableError,
        ClusterUnavailableError,
    ) as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(code=2) from exc
    if report.skipped:
        console.print(f"resumed: {len(report.skipped)} scenes were already finished")
    samples = sum(env.samples for env in report.environments)
    dropped = sum(env.dropped for env in report.environments)
    undetected = sum(env.undetected for env in report.environments)
    console.print(
        f"traced scenes {_ranges(report.traced) or 'none'}: {len(report.environments)} "
        f"environments, {samples} samples (dropped: {dropped} positions no path reached, "
        f"{undetected} below the detection SNR)"
    )
    size_mb = out.stat().st_size / 2**20
    console.print(f"wrote {out} ({size_mb:.1f} MiB) in {report.wall_s:.1f} s")


def _ranges(indices: list[int]) -> str:
    """[0, 1, 2, 5] -> '0-2, 5'."""
    parts: list[str] = []
    for k in sorted(indices):
        if parts and parts[-1].endswith(f"-{k - 1}"):
            parts[-1] = parts[-1].rsplit("-", 1)[0] + f"-{k}"
        elif parts and parts[-1] == str(k - 1):
            parts[-1] = f"{k - 1}-{k}"
        else:
            parts.append(str(k))
    return ", ".join(parts)


def plot(
    file: Annotated[Path, typer.Argument(help="Fingerprint file written by `data simulate`.")],
    out: Annotated[Path, typer.Option("--out", help="Directory for the PNGs.")] = Path("plots"),
    sheet_only: Annotated[
        bool,
        typer.Option(
            "--sheet-only", help="Only the contact sheet of scene thumbnails (large corpora)."
        ),
    ] = False,
) -> None:
    """One PNG per environment (UEs by LOS/NLOS and received power) and a contact sheet.

    The contact sheet (`contact-sheet.png`) shows every scene in the file from above:
    walls, obstacles, base stations and UE areas.
    """
    from training.data.schema import SchemaError
    from training.sim.plot import contact_sheet, plot_file, scenes_in_file

    try:
        written = [] if sheet_only else plot_file(file, out)
        specs = scenes_in_file(file)
        if specs:
            written.append(contact_sheet(specs, out / "contact-sheet.png"))
        elif sheet_only:
            raise ValueError(f"{file}: records no scene descriptions to draw")
    except (SchemaError, FileNotFoundError, ValueError) as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(code=2) from exc
    for path in written:
        console.print(f"wrote {path}")


def scenes(
    out: Annotated[Path, typer.Option("--out", help="Directory for the YAML files and the sheet.")],
    count: Annotated[int, typer.Option(help="How many procedural scenes.")] = 12,
    seed: Annotated[int, typer.Option(help="First scene number.")] = 0,
    preset: Annotated[
        str, typer.Option(help="Procedural preset: tiny, pilot or corpus.")
    ] = "corpus",
) -> None:
    """Write procedural scenes seed..seed+count-1 as YAML plus a contact sheet (no ray tracing).

    Each YAML file is a scene a user can edit and trace with `data simulate --scene FILE`.
    """
    from training.sim.plot import contact_sheet
    from training.sim.procedural import procedural_scene

    if count < 1 or seed < 0:
        console.print("[red]error:[/red] expected --count >= 1 and --seed >= 0")
        raise typer.Exit(code=2)
    try:
        specs = [procedural_scene(k, preset) for k in range(seed, seed + count)]
    except ValueError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(code=2) from exc
    out.mkdir(parents=True, exist_ok=True)
    for spec in specs:
        spec.dump(out / f"{spec.name}.yaml")
    sheet = contact_sheet(specs, out / "contact-sheet.png")
    console.print(f"wrote {len(specs)} scenes to {out} and {sheet}")


def register(app: typer.Typer) -> None:
    """Add the simulator commands to the `data` sub-app."""
    app.command("simulate")(simulate)
    app.command("plot")(plot)
    app.command("scenes")(scenes)
