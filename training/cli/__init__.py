"""The `csipos` command line: one Typer app, one sub-app per part of the pipeline.

The training side lives here; `service.cli` adds `serve` and `worker` on top, so
`training` never imports `service`.
"""

from __future__ import annotations

import typer

app = typer.Typer(
    name="csipos",
    help="CSI-fingerprint positioning: data, MEML training, transfer, export, serving.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)


def _register() -> None:
    # Each part owns its sub-app in its own module; importing them here keeps
    # one root with `--help` listing everything.
    from training.cli import data, experiment, train

    app.add_typer(data.app, name="data")
    app.add_typer(train.app, name="train")
    train.register_top_level(app)  # `evaluate`, `export`
    experiment.register_top_level(app)  # `experiment`


_register()
