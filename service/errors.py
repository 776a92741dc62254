"""One error hierarchy for the service; each class carries its HTTP status and code.

Routes raise these; `install_handlers` turns them (and validation errors, and anything
unexpected) into `{"error": {"code", "message", "detail"}}`, never a traceback. Under
`/v2/` (KServe) `error` is the message string, as the protocol's clients expect.
"""

# ruff: noqa: N818  (HTTP-style names, as in MLServer: NotFound, Conflict, ...)

from __future__ import annotations

import logging
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

    def __init__(self, message: str, detail: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail


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


class TooManyJobs(ServiceError):
    status, code = 429, "too_many_jobs"


class Unavailable(ServiceError):
    status, code = 503, "unavailable"


def error_body(code: str, message: str, detail: Any = None) -> dict[str, Any]:
    """The one JSON shape of every error answer."""
    return {"error": {"code": code, "message": message, "detail": detail}}


def kserve_error_body(code: str, message: str, detail: Any = None) -> dict[str, Any]:
    """Under /v2 the Open Inference Protocol's shape: `error` is the message string
    (Triton/KServe clients print it), with our code and detail beside it."""
    return {"error": message, "code": code, "detail": detail}


def _respond(
    status: int, code: str, message: str, detail: Any = None, request: Request | None = None
) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    v2 = request is not None and request.url.path.startswith("/v2/")
    body = kserve_error_body(code, message, detail) if v2 else error_body(code, message, detail)
    return JSONResponse(body, status_code=status, headers=headers)


def error_response(request: Request, exc: Exception) -> JSONResponse:
    """The error answer for an exception from a route that the router does not run
    (`service.middleware.RequestContext`'s direct routes): what the handlers would say."""
    if isinstance(exc, ServiceError):
        return _respond(exc.status, exc.code, exc.message, exc.detail, request)
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return _respond(500, "internal_error", "internal server error", None, request)


_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
}


def install_handlers(app: FastAPI) -> None:
    """Register the handlers that give every error the same JSON shape."""

    async def service_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ServiceError)
        return _respond(exc.status, exc.code, exc.message, exc.detail, request)

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
        return _respond(exc.status_code, code, str(exc.detail), None, request)

    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        # Logged with the traceback for operators; the client gets the shape only.
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return _respond(500, "internal_error", "internal server error", None, request)

    app.add_exception_handler(ServiceError, service_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(Exception, unexpected)
