"""Route dependencies as `Annotated` aliases, so route signatures read like prose."""

from __future__ import annotations

import hmac
from typing import Annotated, Literal

from fastapi import Depends, Request
from fastapi.security import HTTPBearer
from pydantic import SecretStr

from service.config import Settings
from service.errors import Forbidden, Unauthorized
from service.jobs.manager import JobManager
from service.positioning import Positioner
from service.store import ModelStore

Scope = Literal["locate", "admin"]


async def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def get_store(request: Request) -> ModelStore:
    store: ModelStore = request.app.state.store
    return store


async def get_positioner(request: Request) -> Positioner:
    positioner: Positioner = request.app.state.positioner
    return positioner


async def get_jobs(request: Request) -> JobManager:
    jobs: JobManager = request.app.state.jobs
    return jobs


def _matches(token: str, keys: list[SecretStr]) -> bool:
    # Compare against every key (no early exit) in constant time per key.
    found = False
    for key in keys:
        found |= hmac.compare_digest(token.encode(), key.get_secret_value().encode())
    return found


def authorize(request: Request, settings: Settings, scope: Scope) -> Scope | None:
    """Check the bearer key for a scope; returns the key's scope (None when auth is off)."""
    return check_bearer(request.headers.get("authorization", ""), settings, scope)


def check_bearer(header: str, settings: Settings, scope: Scope) -> Scope | None:
    """The scope of an `Authorization: Bearer <key>` value (HTTP header or gRPC metadata)."""
    if not settings.auth_enabled:
        return None  # dev mode with no keys: the settings validator allows only this
    kind, _, token = header.partition(" ")
    if kind.lower() != "bearer" or not token.strip():
        raise Unauthorized("missing API key", {"expected": "Authorization: Bearer <key>"})
    token = token.strip()
    if _matches(token, settings.admin_keys):
        return "admin"
    if _matches(token, settings.locate_keys):
        if scope == "admin":
            raise Forbidden("this API key lacks the admin scope", {"required_scope": "admin"})
        return "locate"
    raise Unauthorized("invalid API key")


# Declares the bearer scheme in the OpenAPI spec; `authorize` reads the header itself
# so that a missing key is our 401, not FastAPI's 403. Dependencies are `async def`
# although they never await: FastAPI runs a plain `def` dependency in a worker thread.
_bearer = HTTPBearer(
    auto_error=False,
    scheme_name="bearer",
    description="API key with the `locate` scope (inference, listing) or `admin` (all).",
)


async def require_locate(request: Request, _: object = Depends(_bearer)) -> Scope | None:
    return authorize(request, request.app.state.settings, "locate")


async def require_admin(request: Request, _: object = Depends(_bearer)) -> Scope | None:
    return authorize(request, request.app.state.settings, "admin")


SettingsDep = Annotated[Settings, Depends(get_settings)]
Store = Annotated[ModelStore, Depends(get_store)]
PositionerDep = Annotated[Positioner, Depends(get_positioner)]
Jobs = Annotated[JobManager, Depends(get_jobs)]
LocateKey = Annotated[Scope | None, Depends(require_locate)]
AdminKey = Annotated[Scope | None, Depends(require_admin)]
