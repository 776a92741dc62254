"""`csipos serve` and `csipos worker`."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Annotated

import typer


def register(app: typer.Typer) -> None:
    """Add the service commands to the root app."""
    app.command("serve")(serve)
    app.command("worker")(worker)


def _settings_or_exit() -> object:
    from pydantic import ValidationError

    from service.config import Settings

    try:
        return Settings()
    except ValidationError as exc:
        msgs = "; ".join(str(e["msg"]) for e in exc.errors())
        typer.echo(f"invalid settings: {msgs}", err=True)
        raise typer.Exit(2) from None


def serve(
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    workers: Annotated[int, typer.Option(min=1, help="uvicorn worker processes.")] = 1,
    model_dir: Annotated[
        Path | None, typer.Option(help="Model repository (default: CSIPOS_MODEL_DIR or models/).")
    ] = None,
    dev: Annotated[bool, typer.Option(help="Development mode: no API keys required.")] = False,
    log_level: Annotated[str, typer.Option(help="uvicorn log level.")] = "info",
) -> None:
    """Serve the positioning API (uvicorn) over the model repository."""
    import uvicorn

    # Settings travel by environment so that every uvicorn worker process sees them.
    if model_dir is not None:
        os.environ["CSIPOS_MODEL_DIR"] = str(model_dir)
    if dev:
        os.environ["CSIPOS_DEV_MODE"] = "true"
    _settings_or_exit()
    if workers > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        # Several workers need a shared sample directory for correct /metrics.
        mp_dir = Path(tempfile.mkdtemp(prefix="csipos-prom-"))
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(mp_dir)
    elif os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        mp_dir = Path(os.environ["PROMETHEUS_MULTIPROC_DIR"])
        shutil.rmtree(mp_dir, ignore_errors=True)  # stale samples of a previous run
        mp_dir.mkdir(parents=True, exist_ok=True)
    uvicorn.run(
        "service.app:app_from_env",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level=log_level,
        access_log=False,  # our middleware logs requests with their ids
    )


def worker(
    burst: Annotated[bool, typer.Option(help="Exit when the queue is empty.")] = False,
) -> None:
    """Run adaptation jobs from the Redis queue (needs CSIPOS_REDIS_URL)."""
    from redis import Redis
    from rq import Queue, Worker

    from service import logs
    from service.config import Settings

    settings = _settings_or_exit()
    assert isinstance(settings, Settings)
    if not settings.redis_url:
        typer.echo("CSIPOS_REDIS_URL is not set: the worker needs a Redis to listen on", err=True)
        raise typer.Exit(2)
    logs.configure(settings.log_level)
    if settings.worker_metrics_port is not None:
        # Lets Prometheus see the worker is up (and its process metrics).
        from prometheus_client import start_http_server

        start_http_server(settings.worker_metrics_port)
    conn = Redis.from_url(settings.redis_url)
    Worker([Queue(settings.rq_queue, connection=conn)], connection=conn).work(burst=burst)
