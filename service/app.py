"""The FastAPI application: declares routers, middleware and the lifespan, nothing more."""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool

from service import logs, metrics
from service.admission import Admission
from service.catalog import Catalog
from service.config import Settings
from service.errors import install_handlers
from service.jobs.manager import JobManager
from service.middleware import BodyLimit, RequestContext
from service.positioning import Positioner
from service.routes import health, jobs, locate, sites, v2
from service.schemas import install_openapi
from service.store import ModelStore
from service.tracking import make_tracker
from training.repository import ModelRepository, csipos_version


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app; the model store loads and starts watching in the lifespan."""
    settings = settings or Settings()
    logs.configure(settings.log_level)
    metrics.EXPOSE_SITES = settings.expose_site_lists

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await run_in_threadpool(app.state.store.load)
        app.state.store.start_watching()
        grpc_server = await _start_grpc(app) if settings.grpc_port is not None else None
        # Everything loaded so far lives as long as the process: keep it out of the
        # collector's full passes, which the many short-lived lists of JSON CSI trigger
        # and which otherwise stall every request in flight (bench/protocols.md).
        gc.freeze()
        app.state.loaded = True
        try:
            yield
        finally:
            app.state.loaded = False
            if grpc_server is not None:
                await grpc_server.stop(grace=2)
            app.state.store.unload()
            await app.state.positioner.aclose()
            await app.state.tracker.store.aclose()
            app.state.jobs.close()

    app = FastAPI(
        title="csipos",
        version=csipos_version(),
        description="CSI-fingerprint positioning with per-site transfer learning.",
        lifespan=lifespan,
    )
    store = ModelStore(
        settings.model_dir,
        max_sites=settings.max_sites,
        intra_op_threads=settings.intra_op_threads,
        watch_interval_s=settings.watch_interval_s,
    )
    app.state.settings = settings
    app.state.store = store
    app.state.loaded = False
    app.state.positioner = Positioner(
        store,
        settings.inference_threads,
        max_batch=settings.batching_max_batch,
        max_delay_us=settings.batching_max_queue_delay_us,
    )
    app.state.tracker = make_tracker(settings)
    app.state.catalog = Catalog(ModelRepository(settings.model_dir), store)
    app.state.jobs = JobManager(settings)

    install_handlers(app)
    # Outermost last: the body limit, admission control (both before `/locate`'s direct
    # dispatch, which skips what is inside RequestContext), then request id and access log.
    app.add_middleware(RequestContext, direct={("POST", "/locate"): locate.locate})
    app.add_middleware(
        Admission,
        max_in_flight=settings.max_in_flight,
        deadline_s=settings.inference_deadline_s,
        drain_bytes=settings.max_body_bytes,
    )
    app.add_middleware(
        BodyLimit,
        max_body_bytes=settings.max_body_bytes,
        max_upload_bytes=settings.max_upload_bytes,
    )
    for module in (health, locate, sites, jobs, v2):
        app.include_router(module.router)
    install_openapi(app)
    return app


async def _start_grpc(app: FastAPI) -> Any:
    """KServe V2 over gRPC on the app's event loop, sharing its store and positioner."""
    from service.grpc.server import InferenceService, start

    settings: Settings = app.state.settings
    service = InferenceService(
        settings, app.state.store, app.state.positioner, lambda: bool(app.state.loaded)
    )
    server, app.state.grpc_port = await start(service, settings.grpc_host, settings.grpc_port or 0)
    return server


def app_from_env() -> FastAPI:
    """Factory for `uvicorn --factory` (settings from `CSIPOS_*` variables)."""
    return create_app(Settings())
