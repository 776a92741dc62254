"""Liveness, readiness and the Prometheus endpoint."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from starlette.concurrency import run_in_threadpool

from service import metrics
from service.deps import Jobs, SettingsDep, Store
from service.errors import Unavailable
from service.jobs.executors import RQExecutor
from service.schemas import errors

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is up and its event loop answers."""
    return {"status": "ok"}


@router.get("/readyz", responses=errors(503, 500))
async def readyz(
    request: Request, store: Store, jobs: Jobs, settings: SettingsDep
) -> dict[str, Any]:
    """Ready when the repository has been loaded (and Redis answers, if used).

    Lists the served sites unless `expose_site_lists` is off (the route has no key)."""
    if not getattr(request.app.state, "loaded", False):
        raise Unavailable("model repository not loaded yet")
    if isinstance(jobs.executor, RQExecutor) and not await run_in_threadpool(jobs.executor.ping):
        raise Unavailable("job queue (Redis) unreachable")
    if not settings.expose_site_lists:
        return {"status": "ready", "sites_loaded": len(store.snapshot())}
    return {"status": "ready", "sites": sorted(store.snapshot())}


@router.get("/metrics", include_in_schema=False)
async def prometheus_metrics(jobs: Jobs) -> Response:
    """Prometheus exposition format (merged across workers in multiprocess mode)."""
    body, ctype = await run_in_threadpool(metrics.render, metrics.JobCollector(jobs.all))
    return Response(body, media_type=ctype)
