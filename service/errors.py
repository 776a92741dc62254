"""One error hierarchy for the service; each class carries its HTTP status and code.

Routes raise these; `install_handlers` turns them (and validation errors, and anything
unexpected) into `{"error": {"code", "message", "detail"}}`, never a traceback. Under
`/v2/` (KServe) `error` is the message string, as the protocol's clients expect.
"""

# ruff: noqa: N818  (HTTP-style names, as in MLServer: NotFound, Conflict, ...)

from __future__ import annotations

import asyncio
import logging
import math
import re
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("csipos.service")


class ServiceError(Exception):
    """Base of every error the API answers with; subclasses set `status` and `code`."""

    status = 500
    code = "internal_error"
    retry_after: int | None = None
    """Seconds a client should wait before retrying (sent as `Retry-After`), if any."""

    def __init__(self, message: str, detail: Any = None, *, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail
        if retry_after is not None:
            self.retry_after = retry_after


class BadRequest(ServiceError):
    status, code = 400, "bad_request"


class Unauthorized(ServiceError):
    status, code = 401, "unauthorized"


class Forbidden(ServiceError):
    status, code = 403, "forbidden"


class NotFound(ServiceError):
    status, code = 404, "not_found"


class SiteNotFound(NotFound):
    code = "site_not_found"


class JobNotFound(NotFound):
    code = "job_not_found"


class Conflict(ServiceError):
    status, code = 409, "conflict"


class PayloadTooLarge(ServiceError):
    status, code = 413, "payload_too_large"


class UnsupportedMediaType(ServiceError):
    status, code = 415, "unsupported_media_type"


class InvalidInput(ServiceError):
    """Well-formed request whose content is wrong (shapes, NaN, too few samples)."""

    status, code = 422, "invalid_input"


class InvalidRequest(InvalidInput):
    """The request does not match the documented schema (a body the route reads itself)."""

    code = "invalid_request"


class TooManyJobs(ServiceError):
    status, code = 429, "too_many_jobs"


class Unavailable(ServiceError):
    status, code = 503, "unavailable"
    retry_after = 1


class Overloaded(Unavailable):
    """Admission control shed the request (too many in flight, or past its deadline)."""

    code = "overloaded"


class SiteLoading(Unavailable):
    """The site's active version exists but this replica has not loaded it yet."""

    code = "loading"


class StorageFull(Unavailable):
    """The server's disk cannot take the upload now; not the client's fault."""

    code = "insufficient_storage"
    retry_after = 30


def json_safe(value: Any, depth: int = 0) -> Any:
    """`value` with what JSON cannot carry made printable: NaN/Inf and odd objects become
    strings, and nesting is cut at 8 levels (a detail echoes client input, which may be
    a 1,000-deep list). Without this a detail such as `{"got": NaN}` turned a 422 into a 500."""
    if isinstance(value, bool | int | str) or value is None:
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if depth >= 8:
        return "..."
    if isinstance(value, dict):
        return {str(k): json_safe(v, depth + 1) for k, v in list(value.items())[:50]}
    if isinstance(value, list | tuple):
        return [json_safe(v, depth + 1) for v in value[:50]]
    return str(value)[:200]


def error_body(code: str, message: str, detail: Any = None) -> dict[str, Any]:
    """The one JSON shape of every error answer."""
    return {"error": {"code": code, "message": message, "detail": json_safe(detail)}}


def kserve_error_body(code: str, message: str, detail: Any = None) -> dict[str, Any]:
    """Under /v2 the Open Inference Protocol's shape: `error` is the message string
    (Triton/KServe clients print it), with our code and detail beside it."""
    return {"error": message, "code": code, "detail": json_safe(detail)}


def error_response(
    status: int,
    code: str,
    message: str,
    detail: Any = None,
    *,
    path: str = "",
    retry_after: int | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    """The JSON response for an error (KServe's shape under /v2/)."""
    extra = dict(headers or {})
    if status == 401:
        extra["WWW-Authenticate"] = "Bearer"
    if retry_after is not None:
        extra["Retry-After"] = str(retry_after)
    v2 = path.startswith("/v2/")
    body = kserve_error_body(code, message, detail) if v2 else error_body(code, message, detail)
    return JSONResponse(body, status_code=status, headers=extra or None)


def _respond(
    status: int,
    code: str,
    message: str,
    detail: Any = None,
    request: Request | None = None,
    retry_after: int | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    path = request.url.path if request is not None else ""
    return error_response(
        status, code, message, detail, path=path, retry_after=retry_after, headers=headers
    )


def exception_response(request: Request, exc: Exception) -> JSONResponse:
    """The error answer for a `ServiceError` from a route that the router does not run
    (`service.middleware.RequestContext`'s direct routes): what the handlers would say.
    Anything else propagates to `RequestContext` (500 with the request id)."""
    if isinstance(exc, ServiceError):
        return _respond(
            exc.status, exc.code, exc.message, exc.detail, request, retry_after=exc.retry_after
        )
    raise exc


_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    408: "request_timeout",
    413: "payload_too_large",
    415: "unsupported_media_type",
}


async def _drain(request: Request, limit: int) -> None:
    """Read and drop a body the route refused before reading (e.g. 401 on an upload), up
    to `limit` bytes: a server that answers while the client still sends resets the
    connection, and the client sees the reset instead of our answer."""
    size = 0
    try:
        async with asyncio.timeout(5):
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    return
    except (RuntimeError, TimeoutError, OSError):
        return  # consumed already, or the client is slow or gone: nothing to save


def _allowed_methods(request: Request) -> str | None:
    """Every method some route offers on this path, from the OpenAPI spec's paths
    (Starlette names only the first route that matched: GET of GET /sites/{id}, not
    DELETE of its sibling). None if the path is not in the spec."""
    table: list[tuple[re.Pattern[str], set[str]]] | None = getattr(
        request.app.state, "allowed_methods", None
    )
    if table is None:
        table = []
        for path, item in request.app.openapi().get("paths", {}).items():
            pattern = re.compile("^" + re.sub(r"\{[^/}]+\}", "[^/]+", path) + "$")
            table.append((pattern, {m.upper() for m in item if m.isalpha()}))
        request.app.state.allowed_methods = table
    methods = set().union(*(ms for p, ms in table if p.match(request.url.path)))
    return ", ".join(sorted(methods)) if methods else None


def install_handlers(app: FastAPI) -> None:
    """Register the handlers that give every error the same JSON shape."""

    async def service_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ServiceError)
        if exc.status != 413:
            await _drain(request, request.app.state.settings.max_body_bytes)
        return _respond(
            exc.status, exc.code, exc.message, exc.detail, request, retry_after=exc.retry_after
        )

    async def validation_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        detail = [
            {"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
            for e in exc.errors()
        ]
        return _respond(
            422, "invalid_request", "request does not match the schema", detail, request
        )

    async def http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        code = _HTTP_CODES.get(exc.status_code, "http_error")
        # Keeps e.g. the `Allow` header of a 405 (RFC 9110 requires it).
        headers = dict(exc.headers) if exc.headers else None
        allowed = _allowed_methods(request) if exc.status_code == 405 else None
        if allowed is not None:
            headers = {**(headers or {}), "Allow": allowed}
        return _respond(exc.status_code, code, str(exc.detail), None, request, headers=headers)

    app.add_exception_handler(ServiceError, service_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    # Anything else is answered by `service.middleware.RequestContext` (500 with the
    # request id), inside Starlette's ServerErrorMiddleware, so the connection survives.


def internal_error(request_id: str, path: str) -> JSONResponse:
    """The answer to an unexpected exception: no traceback, the id to find it in the log."""
    return error_response(
        500,
        "internal_error",
        "internal server error",
        {"request_id": request_id},
        path=path,
    )
