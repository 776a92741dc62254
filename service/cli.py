"""Console entry point: the training CLI plus the service's `serve` and `worker` commands."""

from __future__ import annotations

from training.cli import app


def _register() -> None:
    from service import commands

    commands.register(app)


_register()


def main() -> None:
    app()
