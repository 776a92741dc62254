"""`csipos data simulate` and `csipos data plot` (registered on the `data` sub-app)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

console = Console()


def simulate(
    out: Annotated[Path, typer.Option("--out", help="HDF5 file to write (created or extended).")],
    scene: Annotated[
        list[str],
        typer.Option(
            "--scene",
            help="Built-in scene (industrial, lab-los, lab-nlos) or a .json/.yaml scene file. "
            "Repeat to put several scenes in one file.",
        ),
    ],
    preset: Annotated[str, typer.Option(help="Dataset size: tiny or paper.")] = "tiny",
    seed: Annotated[int, typer.Option(help="Seed for positions, noise and offsets.")] = 0,
    positions: Annotated[
        int | None,
        typer.Option(help="UE positions per scene (overrides the preset's count)."),
    ] = None,
    overwrite: Annotated[
        bool, typer.Option(help="Replace environments of these scenes already in the file.")
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Ray-trace scenes with Sionna RT and write one fingerprint environment per base station."""
    from training.sim.builtin import resolve_scene
    from training.sim.generate import generate
    from training.sim.raytrace import SimulatorUnavailableError
    from training.sim.scene import SceneSpecError

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
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


def plot(
    file: Annotated[Path, typer.Argument(help="Fingerprint file written by `data simulate`.")],
    out: Annotated[Path, typer.Option("--out", help="Directory for the PNGs.")] = Path("plots"),
) -> None:
    """One PNG per environment: the scene from above, UEs by LOS/NLOS and by received power."""
    from training.data.schema import SchemaError
    from training.sim.plot import plot_file

    try:
        written = plot_file(file, out)
    except (SchemaError, FileNotFoundError, ValueError) as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(code=2) from exc
    for path in written:
        console.print(f"wrote {path}")


def register(app: typer.Typer) -> None:
    """Add the simulator commands to the `data` sub-app."""
    app.command("simulate")(simulate)
    app.command("plot")(plot)
