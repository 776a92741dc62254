"""`csipos serve` and `csipos worker`."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from service.config import Settings


def register(app: typer.Typer) -> None:
    """Add the service commands to the root app."""
    app.command("serve")(serve)
    app.command("worker")(worker)


def _settings_or_exit() -> Settings:
    from pydantic import ValidationError

    from service.config import Settings

    try:
        return Settings()
    except ValidationError as exc:
        msgs = "; ".join(str(e["msg"]) for e in exc.errors())
        typer.echo(f"invalid settings: {msgs}", err=True)
        raise typer.Exit(2) from None


def _seed_models(settings: Settings) -> None:
    """Fill a new model repository from `CSIPOS_SEED_MODELS_FROM` before anything reads it."""
    if settings.seed_models_from is None:
        return
    from training.repository import ModelRepository, RepositoryError

    try:
        copied = ModelRepository(settings.model_dir).seed(settings.seed_models_from)
    except (RepositoryError, OSError) as exc:
        typer.echo(
            f"cannot seed the model repository {settings.model_dir} from "
            f"{settings.seed_models_from}: {exc}",
            err=True,
        )
        raise typer.Exit(2) from None
    if copied:
        typer.echo(f"seeded {settings.model_dir} with {', '.join(copied)}", err=True)


def _prepare_repository(settings: Settings) -> None:
    """Seed (if asked), then clear leftovers of publishes that crashed (`gc`)."""
    _seed_models(settings)
    from training.repository import ModelRepository, RepositoryError

    try:
        removed = ModelRepository(settings.model_dir).gc()
    except (RepositoryError, OSError) as exc:
        typer.echo(f"model repository gc failed (serving anyway): {exc}", err=True)
        return
    if removed:
        typer.echo(f"gc removed {len(removed)} leftovers of crashed writes", err=True)


def serve(
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    workers: Annotated[int, typer.Option(min=1, help="uvicorn worker processes.")] = 1,
    model_dir: Annotated[
        Path | None, typer.Option(help="Model repository (default: CSIPOS_MODEL_DIR or models/).")
    ] = None,
    dev: Annotated[bool, typer.Option(help="Development mode: no API keys required.")] = False,
    grpc_port: Annotated[
        int | None,
        typer.Option(
            min=0,
            max=65535,
            help="Also serve KServe V2 over gRPC on this port (default: CSIPOS_GRPC_PORT, off).",
        ),
    ] = None,
    log_level: Annotated[str, typer.Option(help="uvicorn log level.")] = "info",
) -> None:
    """Serve the positioning API (uvicorn) over the model repository."""
    import uvicorn

    # Settings travel by environment so that every uvicorn worker process sees them.
    if model_dir is not None:
        os.environ["CSIPOS_MODEL_DIR"] = str(model_dir)
    if dev:
        os.environ["CSIPOS_DEV_MODE"] = "true"
    if grpc_port is not None:
        os.environ["CSIPOS_GRPC_PORT"] = str(grpc_port)
    os.environ.setdefault("CSIPOS_GRPC_HOST", host)  # gRPC on the HTTP interface by default
    settings = _settings_or_exit()
    _prepare_repository(settings)
    if workers > 1 and not settings.redis_url:
        typer.echo(
            "warning: without CSIPOS_REDIS_URL each worker keeps its own UE tracks, so "
            "/locate requests with a `ue` may continue different tracks",
            err=True,
        )
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

    settings = _settings_or_exit()
    if not settings.redis_url:
        typer.echo("CSIPOS_REDIS_URL is not set: the worker needs a Redis to listen on", err=True)
        raise typer.Exit(2)
    logs.configure(settings.log_level)
    _prepare_repository(settings)
    if settings.worker_metrics_port is not None:
        # Lets Prometheus see the worker is up (and its process metrics).
        from prometheus_client import start_http_server

        start_http_server(settings.worker_metrics_port)
    conn = Redis.from_url(settings.redis_url)
    Worker([Queue(settings.rq_queue, connection=conn)], connection=conn).work(burst=burst)
