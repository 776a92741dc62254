"""ASGI middleware: request ids, access log lines and the request-duration histogram.

It also dispatches the hot route (`POST /locate`) to its endpoint itself: FastAPI's
router, its dependency solver and exception middleware cost about as much CPU as the
route's own work for one fingerprint (bench/protocols.md). The endpoint is the one the
router would call, so the route stays declared (and documented) there.

It is also the last line of defence: an unexpected exception becomes a 500 carrying the
request id. The catch is here, inside Starlette's ServerErrorMiddleware, because that
one re-raises after answering, and uvicorn then drops the keep-alive connection.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping

from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service import metrics
from service.errors import error_response, exception_response, internal_error
from service.logs import request_id

log = logging.getLogger("csipos.service.access")
_VALID_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


Endpoint = Callable[[Request], Awaitable[Response]]


class RequestContext:
    """Tags each request with an id (`X-Request-ID`, echoed back) and measures it;
    `direct` maps (method, path) to endpoints it calls without the router."""

    def __init__(self, app: ASGIApp, direct: Mapping[tuple[str, str], Endpoint] = {}) -> None:
        self.app = app
        self.direct = dict(direct)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = dict(scope.get("headers") or []).get(b"x-request-id", b"").decode("latin-1")
        rid = incoming if _VALID_ID.fullmatch(incoming) else uuid.uuid4().hex[:16]
        token = request_id.set(rid)
        status = 500
        started = False
        start = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start":
                started = True
                status = int(message["status"])
                headers = list(message.get("headers", []))
                headers.append((b"x-request-id", rid.encode()))
                message["headers"] = headers
            await send(message)

        endpoint = self.direct.get((scope["method"], scope["path"]))
        try:
            if endpoint is None:
                await self.app(scope, receive, send_with_id)
            else:
                await _call(endpoint, scope, receive, send_with_id)
        except ClientDisconnect:
            status = 499  # the client left while sending; nobody to answer
        except Exception:
            log.exception("unhandled error on %s %s", scope.get("method"), scope.get("path"))
            if started:
                raise  # half a response went out: only closing the connection is honest
            await internal_error(rid, str(scope.get("path", "")))(scope, receive, send_with_id)
        finally:
            elapsed = time.perf_counter() - start
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            if endpoint is not None:
                template = scope["path"]
            method = scope["method"] if scope["method"] in _METHODS else "OTHER"
            metrics.HTTP_DURATION.labels("http", template, method, str(status)).observe(elapsed)
            log.info(
                "%s %s %d",
                method,
                template,
                status,
                extra={"duration_s": round(elapsed, 6), "status": status, "route": template},
            )
            request_id.reset(token)


async def _call(endpoint: Endpoint, scope: Scope, receive: Receive, send: Send) -> None:
    request = Request(scope, receive)
    try:
        response = await endpoint(request)
    except Exception as exc:
        response = exception_response(request, exc)
    await response(scope, receive, send)


class BodyLimit:
    """A body limit on every route: a declared Content-Length above the route's limit is
    answered 413 before anything reads it (the adapt upload has its own, larger limit).
    Routes that read bodies also count the bytes as they stream (`service.uploads`)."""

    def __init__(self, app: ASGIApp, *, max_body_bytes: int, max_upload_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.max_upload_bytes = max_upload_bytes

    def limit_for(self, path: str) -> int:
        return self.max_upload_bytes if path.endswith("/adapt") else self.max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            declared = dict(scope.get("headers") or []).get(b"content-length", b"")
            limit = self.limit_for(scope.get("path", ""))
            if declared.isdigit() and int(declared) > limit:
                response = error_response(
                    413,
                    "payload_too_large",
                    f"request body of {int(declared)} bytes exceeds the limit",
                    {"limit_bytes": limit, "got_bytes": int(declared)},
                    path=scope.get("path", ""),
                    headers={"Connection": "close"},
                )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)
