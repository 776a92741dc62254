"""Admission control for inference (`/locate`, V2 `infer`): shed load instead of queueing
without bound.

- At most `max_in_flight` inference requests per worker process; beyond that the
  answer is 503 with Retry-After at once, before the body is read.
- A deadline per request (`inference_deadline_s`): if no response has started by then,
  the work is cancelled and the answer is 503 with Retry-After.
- A client that hangs up gets no more work: once its body is read, the middleware
  listens for the disconnect and cancels the request, which drops its model call if
  it has not started yet (a cancelled asyncio future cancels its executor job).

It is a plain ASGI middleware so it works whatever the positioning core does inside.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service import metrics
from service.errors import error_response

log = logging.getLogger("csipos.service.admission")

INFERENCE_PATHS = re.compile(r"^/(locate|v2/models/[^/]+(/versions/[^/]+)?/infer)/?$")


class Admission:
    """Bounded in-flight inference per process, a deadline, and no work for gone clients."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        max_in_flight: int,
        deadline_s: float,
        retry_after_s: int = 1,
        drain_bytes: int = 8 * 1024 * 1024,
    ) -> None:
        self.app = app
        self.max_in_flight = max_in_flight
        self.deadline_s = deadline_s
        self.retry_after_s = retry_after_s
        self.in_flight = 0
        self.drain_bytes = drain_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not INFERENCE_PATHS.match(scope.get("path", "")):
            await self.app(scope, receive, send)
            return
        if self.in_flight >= self.max_in_flight:
            metrics.SHED.labels("overloaded").inc()
            await self._drain(receive)
            await self._unavailable(
                scope,
                receive,
                send,
                "overloaded",
                "too many inference requests in progress; retry shortly",
                {"max_in_flight": self.max_in_flight},
            )
            return
        self.in_flight += 1
        metrics.IN_FLIGHT.inc()
        try:
            await self._run(scope, receive, send)
        finally:
            self.in_flight -= 1
            metrics.IN_FLIGHT.dec()

    async def _run(self, scope: Scope, receive: Receive, send: Send) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.deadline_s
        body_read = asyncio.Event()
        started = answered = False

        async def tracked_receive() -> Message:
            message = await receive()
            if message["type"] != "http.request" or not message.get("more_body", False):
                body_read.set()
            return message

        async def tracked_send(message: Message) -> None:
            nonlocal started, answered
            if message["type"] == "http.response.start":
                started = True
            elif message["type"] == "http.response.body" and not message.get("more_body"):
                answered = True
            await send(message)

        async def client_gone() -> bool:
            """True if the client hung up before its answer was sent."""
            await body_read.wait()
            while True:  # after the body, the server only reports the disconnect
                if (await receive())["type"] == "http.disconnect":
                    return not answered

        work = asyncio.ensure_future(self.app(scope, tracked_receive, tracked_send))
        watch = asyncio.ensure_future(client_gone())
        try:
            await asyncio.wait(
                {work, watch}, timeout=self.deadline_s, return_when="FIRST_COMPLETED"
            )
            if watch.done() and not work.done():
                if watch.result():
                    metrics.SHED.labels("client_gone").inc()
                    await _cancel(work)
                    return
                # The answer went out: let the app finish its bookkeeping.
                await asyncio.wait({work}, timeout=max(0.0, deadline - loop.time()))
        finally:
            watch.cancel()
        if work.done():
            work.result()  # re-raise the app's own errors
            return
        await _cancel(work)
        if started:
            return  # too late for a clean answer; the server closes the connection
        metrics.SHED.labels("deadline").inc()
        await self._unavailable(
            scope,
            receive,
            send,
            "overloaded",
            f"no answer within the {self.deadline_s:g} s deadline; retry shortly",
            {"deadline_s": self.deadline_s},
        )

    async def _drain(self, receive: Receive) -> None:
        """Read and drop the body (bounded in bytes and time) so the client hears the 503:
        answering while it still sends makes the kernel reset the connection."""
        size = 0
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(2):
                while size <= self.drain_bytes:
                    message = await receive()
                    size += len(message.get("body", b""))
                    if message["type"] != "http.request" or not message.get("more_body"):
                        return

    async def _unavailable(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        code: str,
        message: str,
        detail: dict[str, object],
    ) -> None:
        response = error_response(
            503, code, message, detail, path=scope.get("path", ""), retry_after=self.retry_after_s
        )
        await response(scope, receive, send)


async def _cancel(task: asyncio.Future[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task
