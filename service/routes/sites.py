"""Sites: list, inspect, activate (rollback), delete, and adapt (queue a training job)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from fastapi import APIRouter, Request
from pydantic import BaseModel, ValidationError
from starlette.concurrency import run_in_threadpool

from service.deps import AdminKey, Jobs, LocateKey, SettingsDep
from service.errors import Conflict, InvalidInput, UnsupportedMediaType
from service.jobs.records import TERMINAL, AdaptOptions, to_json
from service.store import check_site_id
from service.uploads import parse_json, read_body, stream_body_to_file, stream_multipart
from training.data.fingerprints import Fingerprints, list_environments, read_environment
from training.data.schema import SchemaError

router = APIRouter(prefix="/sites", tags=["sites"])


class ActivateRequest(BaseModel):
    version: str


def _catalog(request: Request) -> Any:
    return request.app.state.catalog


@router.get("")
async def list_sites(request: Request, _: LocateKey) -> dict[str, Any]:
    """Every site in the repository with its active and serving versions."""
    return {"sites": await run_in_threadpool(_catalog(request).list)}


@router.get("/{site_id}")
async def get_site(site_id: str, request: Request, _: LocateKey) -> dict[str, Any]:
    """One site: its versions with their manifests' metrics, and which one is active."""
    detail: dict[str, Any] = await run_in_threadpool(_catalog(request).detail, site_id)
    return detail


@router.post("/{site_id}/activate")
async def activate_site(
    site_id: str, body: ActivateRequest, request: Request, _: AdminKey
) -> dict[str, Any]:
    """Make an existing version active (also the rollback); this replica switches at once."""
    detail: dict[str, Any] = await run_in_threadpool(
        _catalog(request).activate, site_id, body.version
    )
    return detail


@router.delete("/{site_id}")
async def delete_site(site_id: str, request: Request, jobs: Jobs, _: AdminKey) -> dict[str, Any]:
    """Remove a site and all its versions (refused while an adaptation job runs for it)."""
    check_site_id(site_id)
    busy = [r.id for r in jobs.all() if r.site == site_id and r.state not in TERMINAL]
    if busy:
        raise Conflict(f"site {site_id!r} has an adaptation job in progress", {"job_id": busy[0]})
    await run_in_threadpool(_catalog(request).delete, site_id)
    return {"deleted": site_id}


def _options(raw: dict[str, Any]) -> AdaptOptions:
    try:
        return AdaptOptions.model_validate(raw)
    except ValidationError as exc:
        detail = [{"loc": list(e["loc"]), "msg": e["msg"]} for e in exc.errors()]
        raise InvalidInput("invalid adaptation options", detail) from None


def _validate(data: Fingerprints, source: str, group: str, min_samples: int) -> Fingerprints:
    """Full schema check plus the service's own minimum; 422 with the reason."""
    try:
        data.validate(source, group)
    except SchemaError as exc:
        raise InvalidInput(str(exc), {"field": exc.field, "problem": exc.problem}) from None
    if len(data) < min_samples:
        raise InvalidInput(
            f"{len(data)} labelled fingerprints; adaptation needs at least {min_samples}",
            {"min_samples": min_samples, "got": len(data)},
        )
    return data


def _read_h5(path: Path, env: str | None, min_samples: int) -> Fingerprints:
    try:
        envs = list_environments(path)
    except SchemaError as exc:
        raise InvalidInput(str(exc), {"field": exc.field, "problem": exc.problem}) from None
    except OSError as exc:
        raise InvalidInput(
            "upload is not a readable HDF5 fingerprint file", {"reason": str(exc)}
        ) from None
    if env is None:
        if len(envs) != 1:
            raise InvalidInput(
                f"upload holds {len(envs)} environments; name one with the 'env' field",
                {"environments": envs},
            )
        env = envs[0]
    if env not in envs:
        raise InvalidInput(f"no environment {env!r} in the upload", {"environments": envs})
    try:
        data = read_environment(path, env)
    except SchemaError as exc:
        raise InvalidInput(str(exc), {"field": exc.field, "problem": exc.problem}) from None
    return _validate(data, "upload", env, min_samples)


def _from_json(doc: Any, min_samples: int) -> tuple[Fingerprints, dict[str, Any]]:
    if not isinstance(doc, dict) or "csi" not in doc or "pos" not in doc:
        raise InvalidInput(
            "JSON body must be an object with 'csi' [M][8][103][2] and 'pos' [M][2]",
            {"expected": {"csi": "[M][8][103][2]", "pos": "[M][2]", "options": {}}},
        )
    try:
        csi = np.asarray(doc["csi"], dtype=np.float32)
        pos = np.asarray(doc["pos"], dtype=np.float32)
    except (ValueError, TypeError) as exc:
        raise InvalidInput("csi and pos must be numeric arrays", {"reason": str(exc)}) from None
    options = doc.get("options") or {}
    if not isinstance(options, dict):
        raise InvalidInput("options must be an object", {"got": type(options).__name__})
    return _validate(Fingerprints(csi=csi, pos=pos), "request", "json", min_samples), options


@router.post("/{site_id}/adapt", status_code=202)
async def adapt_site(
    site_id: str, request: Request, settings: SettingsDep, jobs: Jobs, _: AdminKey
) -> dict[str, Any]:
    """Queue training a new head for a site from labelled fingerprints; 202 with the job.

    Bodies: `multipart/form-data` (file part `data` = HDF5 per the schema, fields = options
    and optional `env`), `application/x-hdf5` (options as query parameters), or JSON
    `{"csi", "pos", "options"}`. Everything is validated before anything is queued.
    """
    check_site_id(site_id)
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    upload_dir = settings.job_dir / "uploads"
    upload_dir.mkdir(parents=True, exist_ok=True)
    path: Path | None = None
    try:
        if ctype == "multipart/form-data":
            path, fields = await stream_multipart(request, settings.max_upload_bytes, upload_dir)
            if path is None:
                raise InvalidInput("multipart form has no 'data' file part (the HDF5 file)")
            env = fields.pop("env", None)
            options = _options(fields)
            data = await run_in_threadpool(_read_h5, path, env, settings.min_adapt_samples)
        elif ctype in ("application/x-hdf5", "application/octet-stream"):
            path = await stream_body_to_file(request, settings.max_upload_bytes, upload_dir)
            query = dict(request.query_params)
            env = query.pop("env", None)
            options = _options(query)
            data = await run_in_threadpool(_read_h5, path, env, settings.min_adapt_samples)
        elif ctype == "application/json":
            body = await read_body(request, settings.max_body_bytes)
            doc = await run_in_threadpool(parse_json, body)
            data, raw_options = await run_in_threadpool(_from_json, doc, settings.min_adapt_samples)
            options = _options(raw_options)
        else:
            raise UnsupportedMediaType(
                f"unsupported content type {ctype or '(none)'!r}",
                {"expected": ["multipart/form-data", "application/x-hdf5", "application/json"]},
            )
    finally:
        if path is not None:
            path.unlink(missing_ok=True)
    extra = {k: v for k, v in (("los", data.los), ("snr_db", data.snr_db)) if v is not None}
    record = await run_in_threadpool(jobs.submit, site_id, options, data.csi, data.pos, extra)
    return {"job_id": record.id, "url": f"/jobs/{record.id}", "job": to_json(record)}
