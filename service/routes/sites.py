"""Sites: list, inspect, activate (rollback), delete, and adapt (queue a training job)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Path, Request
from pydantic import BaseModel, Field, ValidationError
from starlette.concurrency import run_in_threadpool

from service import adaptation
from service.deps import AdminKey, Jobs, LocateKey, SettingsDep
from service.errors import Conflict, InvalidRequest
from service.jobs.records import to_json
from service.schemas import AUTH, COMMON, JobAccepted, SiteDetail, SiteList, body_schema, errors
from service.store import check_site_id
from service.uploads import parse_json, read_body
from training.repository import NAME_PATTERN

router = APIRouter(prefix="/sites", tags=["sites"])

SiteId = Path(
    description="Site id: 1-63 of a-z, 0-9, '_', '-', starting with a letter or digit.",
    pattern=NAME_PATTERN.pattern,
)


class ActivateRequest(BaseModel):
    version: str = Field(pattern=r"^v[1-9][0-9]{0,8}$", description="e.g. 'v2'")


def _catalog(request: Request) -> Any:
    return request.app.state.catalog


@router.get("", responses={200: {"model": SiteList}, **errors(*AUTH, *COMMON)})
async def list_sites(request: Request, _: LocateKey) -> dict[str, Any]:
    """Every site in the repository with its active and serving versions."""
    return {"sites": await run_in_threadpool(_catalog(request).list)}


@router.get(
    "/{site_id}", responses={200: {"model": SiteDetail}, **errors(*AUTH, 404, 422, *COMMON)}
)
async def get_site(request: Request, _: LocateKey, site_id: str = SiteId) -> dict[str, Any]:
    """One site: its versions with their manifests' metrics, and which one is active."""
    detail: dict[str, Any] = await run_in_threadpool(_catalog(request).detail, site_id)
    return detail


@router.post(
    "/{site_id}/activate",
    responses={200: {"model": SiteDetail}, **errors(400, *AUTH, 404, 422, *COMMON)},
    openapi_extra=body_schema(ActivateRequest),
)
async def activate_site(
    request: Request, settings: SettingsDep, _: AdminKey, site_id: str = SiteId
) -> dict[str, Any]:
    """Make an existing version active (also the rollback); this replica switches at once.

    The body is read only after the admin key is checked, and at most `max_body_bytes`.
    """
    doc = parse_json(await read_body(request, settings.max_body_bytes))
    try:
        body = ActivateRequest.model_validate(doc)
    except ValidationError as exc:
        detail = [{"loc": list(e["loc"]), "msg": e["msg"]} for e in exc.errors()]
        raise InvalidRequest("request does not match the schema", detail) from None
    result: dict[str, Any] = await run_in_threadpool(
        _catalog(request).activate, site_id, body.version
    )
    return result


@router.delete("/{site_id}", responses=errors(*AUTH, 404, 409, 422, *COMMON))
async def delete_site(
    request: Request, jobs: Jobs, _: AdminKey, site_id: str = SiteId
) -> dict[str, Any]:
    """Remove a site and all its versions (refused while an adaptation job runs for it)."""
    check_site_id(site_id)
    busy = [r.id for r in await run_in_threadpool(jobs.open_jobs) if r.site == site_id]
    if busy:
        raise Conflict(f"site {site_id!r} has an adaptation job in progress", {"job_id": busy[0]})
    await run_in_threadpool(_catalog(request).delete, site_id)
    return {"deleted": site_id}


@router.post(
    "/{site_id}/adapt",
    status_code=202,
    responses={
        202: {"model": JobAccepted},
        **errors(400, *AUTH, 409, 413, 415, 422, 429, 503, 500),
    },
    openapi_extra=adaptation.OPENAPI_BODY,
)
async def adapt_site(
    request: Request, settings: SettingsDep, jobs: Jobs, _: AdminKey, site_id: str = SiteId
) -> dict[str, Any]:
    """Queue training a new head for a site from labelled fingerprints; 202 with the job.

    Bodies: `multipart/form-data` (file part `data` = HDF5 per the schema, fields = options
    and optional `env`), `application/x-hdf5` (options as query parameters), or JSON
    `{"csi", "pos", "options", "unlabelled"?}`. Everything is validated before anything is
    queued.
    """
    check_site_id(site_id)
    record = await adaptation.accept(request, site_id, settings, jobs)
    return {"job_id": record.id, "url": f"/jobs/{record.id}", "job": to_json(record)}
