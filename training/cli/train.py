"""`csipos train ...`, `csipos evaluate`, `csipos export`."""

from __future__ import annotations

import typer

app = typer.Typer(help="Train MEML backbones, DTL and scratch models, and site heads.", no_args_is_help=True)


def register_top_level(root: typer.Typer) -> None:
    """Add `evaluate` and `export` to the root app."""
