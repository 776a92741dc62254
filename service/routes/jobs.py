"""`GET /jobs/{id}`: state, progress and results of adaptation jobs."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Path
from starlette.concurrency import run_in_threadpool

from service.deps import AdminKey, Jobs, Store
from service.jobs.records import JobRecord, to_json
from service.schemas import AUTH, COMMON, JobList, JobView, errors
from service.store import ModelStore

router = APIRouter(prefix="/jobs", tags=["jobs"])


def _view(record: JobRecord, store: ModelStore) -> dict[str, Any]:
    """The record plus `serving`: whether this replica serves the version the job made.

    A replica that sees a succeeded, activated job loads that version first if its
    watcher has not yet, so a client told `serving: true` can locate at once.
    """
    out = to_json(record)
    if record.state == "succeeded" and record.options.activate and record.version:
        out["serving"] = store.serves(record.site, record.version)
    else:
        out["serving"] = False
    return out


@router.get("", responses={200: {"model": JobList}, **errors(*AUTH, *COMMON)})
async def list_jobs(jobs: Jobs, _: AdminKey) -> dict[str, Any]:
    """All job records, oldest first."""
    records = await run_in_threadpool(jobs.all)
    return {"jobs": [to_json(r) for r in records]}


@router.get("/{job_id}", responses={200: {"model": JobView}, **errors(*AUTH, 404, 422, *COMMON)})
async def get_job(
    jobs: Jobs,
    store: Store,
    _: AdminKey,
    job_id: str = Path(pattern=r"^[0-9a-f]{32}$", description="The id `adapt` answered."),
) -> dict[str, Any]:
    """One job: queued/running/succeeded/failed, progress, metrics and the version made."""
    record = await run_in_threadpool(jobs.get, job_id)
    return await run_in_threadpool(_view, record, store)
