"""`csipos data ...`: fingerprint files (info, DICHASUS import) and the simulator (simulate, plot)."""

from __future__ import annotations

import typer

app = typer.Typer(help="Fingerprint data: simulate, import, inspect, plot.", no_args_is_help=True)


def _register_simulator() -> None:
    from training.sim.cli import register

    register(app)


_register_simulator()
