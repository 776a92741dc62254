"""`csipos experiment`: the paper's K-fold comparison grid."""

from __future__ import annotations

import typer


def register_top_level(root: typer.Typer) -> None:
    """Add `experiment` to the root app."""
