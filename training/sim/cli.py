"""`csipos data simulate` and `csipos data plot` (registered on the `data` sub-app)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add the simulator commands to the `data` sub-app."""
