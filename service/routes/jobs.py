"""`GET /jobs/{id}`: state, progress and results of adaptation jobs."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from starlette.concurrency import run_in_threadpool

from service.deps import AdminKey, Jobs
from service.jobs.records import to_json

router = APIRouter(prefix="/jobs", tags=["jobs"])


@router.get("")
async def list_jobs(jobs: Jobs, _: AdminKey) -> dict[str, Any]:
    """All job records, oldest first."""
    records = await run_in_threadpool(jobs.all)
    return {"jobs": [to_json(r) for r in records]}


@router.get("/{job_id}")
async def get_job(job_id: str, jobs: Jobs, _: AdminKey) -> dict[str, Any]:
    """One job: queued/running/succeeded/failed, progress, metrics and the version made."""
    record = await run_in_threadpool(jobs.get, job_id)
    return to_json(record)
