"""`csipos data ...`: fingerprint files (info, DICHASUS import) and the simulator commands."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from training.data.dichasus import DichasusError, import_dichasus, parse_subcarriers
from training.data.fingerprints import (
    LazyEnvironment,
    list_environments,
    open_environment,
    write_environment,
)
from training.data.schema import SchemaError
from training.data.tfrecord import TFRecordError

app = typer.Typer(help="Fingerprint data: simulate, import, inspect, plot.", no_args_is_help=True)

console = Console()
err_console = Console(stderr=True)

_USER_ERRORS = (SchemaError, DichasusError, TFRecordError, FileNotFoundError, FileExistsError)


def _fail(exc: BaseException) -> typer.Exit:
    err_console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
    return typer.Exit(code=1)


def _summary(env: LazyEnvironment, check: bool) -> dict[str, Any]:
    """What `info` shows for one environment; reads pos/los/snr, and the CSI only if `check`."""
    if check:
        for _ in env.iter_batches():
            pass  # `read` validates every batch (NaN/Inf in the CSI)
    pos = env.read_field("pos")
    los = env.read_field("los")
    snr = env.read_field("snr_db")
    track = env.read_field("track")
    time = env.read_field("time")
    assert pos is not None
    source = env.meta.source
    generator = source.get("generator") or source.get("dataset") or "?"
    version = source.get("version") or source.get("csipos_version")
    return {
        "samples": len(env),
        "los": None if los is None or not len(los) else float(np.mean(los)),
        "x": (float(pos[:, 0].min()), float(pos[:, 0].max())) if len(pos) else None,
        "y": (float(pos[:, 1].min()), float(pos[:, 1].max())) if len(pos) else None,
        "snr": None if snr is None or not len(snr) else (float(snr.min()), float(snr.max())),
        "source": f"{generator} {version}" if version else str(generator),
        "tracks": None if track is None or not len(track) else len(np.unique(track)),
        "span_s": None if time is None or not len(time) else float(np.ptp(time)),
    }


def _extent(span: tuple[float, float] | None) -> str:
    if span is None:
        return "-"
    lo, hi = span
    return f"{lo:.1f}..{hi:.1f} ({hi - lo:.1f})"


@app.command("info")
def info(
    file: Annotated[Path, typer.Argument(help="HDF5 fingerprint file.")],
    check: Annotated[
        bool, typer.Option("--check", help="Also read all CSI and check it for NaN/Inf.")
    ] = False,
) -> None:
    """Show each environment of a fingerprint file: samples, LOS share, area, SNR, source."""
    try:
        names = list_environments(file)
        rows = []
        for name in names:
            with open_environment(file, name) as env:
                rows.append((name, env.meta, _summary(env, check)))
    except _USER_ERRORS as exc:
        raise _fail(exc) from None
    table = Table(title=f"{file} ({len(names)} environments)")
    table.add_column("environment", overflow="fold", min_width=10)
    for column in ("samples", "LOS", "x (m)", "y (m)", "SNR (dB)"):
        table.add_column(column, justify="right", no_wrap=column == "SNR (dB)")
    table.add_column("array")
    for name, meta, s in rows:
        table.add_row(
            name,
            f"{s['samples']:,}",
            "-" if s["los"] is None else f"{100 * s['los']:.0f} %",
            _extent(s["x"]),
            _extent(s["y"]),
            "-" if s["snr"] is None else f"{s['snr'][0]:.1f}..{s['snr'][1]:.1f}",
            meta.array,
        )
    console.print(table)
    for name, meta, s in rows:
        detail = f" ({meta.description})" if meta.description else ""
        if s["tracks"] is not None:
            span = "" if s["span_s"] is None else f" over {s['span_s']:.1f} s"
            detail += f"; {s['tracks']} trajectories{span}"
        console.print(f"[bold]{name}[/]: source {s['source']}{detail}", highlight=False)
    if not names:
        console.print("no environments in this file")


def _parse_subarray(text: str) -> tuple[int, int]:
    try:
        row, col = (int(part) for part in text.split(","))
    except ValueError:
        raise typer.BadParameter(f"{text!r}: expected ROW,COL, e.g. 0,2") from None
    return row, col


@app.command("import-dichasus")
def import_dichasus_command(
    files: Annotated[list[Path], typer.Argument(help="DICHASUS .tfrecords files.")],
    spec: Annotated[Path, typer.Option("--spec", help="The dataset's spec.json.")],
    out: Annotated[Path, typer.Option("--out", help="HDF5 fingerprint file to write into.")],
    group: Annotated[
        str, typer.Option("--group", help="Environment name in the output, e.g. dichasus/a.")
    ] = "dichasus",
    array: Annotated[int, typer.Option("--array", help="Antenna array index in spec.json.")] = 0,
    subarray: Annotated[
        str,
        typer.Option("--subarray", help="ROW,COL of the 2-row x 4-column window in the array."),
    ] = "0,0",
    subcarriers: Annotated[
        str,
        typer.Option(
            "--subcarriers", help="start:stop:step of the 1024 bins, or a comma list (103)."
        ),
    ] = "0:1024:10",
    fftshift: Annotated[
        bool, typer.Option(help="fftshift the 1024 bins into frequency order first.")
    ] = True,
    snr_unit: Annotated[
        str, typer.Option("--snr-unit", help="Unit of the records' snr: linear or db.")
    ] = "linear",
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace the group if it exists.")
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Import DICHASUS TFRecord files as one 4x2-array environment, sorted by time."""
    if snr_unit not in ("linear", "db"):
        raise typer.BadParameter("expected 'linear' or 'db'", param_hint="--snr-unit")
    row_col = _parse_subarray(subarray)
    total = sum(f.stat().st_size for f in files if f.is_file())
    progress = Progress(
        TextColumn("importing"),
        BarColumn(),
        DownloadColumn(),
        TimeRemainingColumn(),
        console=err_console,
        disable=quiet,
    )
    try:
        carriers = parse_subcarriers(subcarriers)
        with progress:
            task = progress.add_task("import", total=total)
            data, meta = import_dichasus(
                files,
                spec,
                array=array,
                subarray=row_col,
                subcarriers=carriers,
                fftshift=fftshift,
                snr_unit="db" if snr_unit == "db" else "linear",
                on_record=lambda nbytes: progress.advance(task, nbytes),
            )
        write_environment(out, group, data, meta, overwrite=overwrite)
    except _USER_ERRORS as exc:
        raise _fail(exc) from None
    if not quiet:
        console.print(f"wrote {len(data):,} fingerprints to {out} group '{group}'")


def _register_simulator() -> None:
    from training.sim.cli import register

    register(app)


_register_simulator()
