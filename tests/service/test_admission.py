"""Admission control: bounded in-flight inference, a deadline, no work for gone clients.

The middleware is driven directly with an ASGI app whose work we can see, then checked
once end to end against a real server under a burst of concurrent requests.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from service.admission import Admission
from tests.service.conftest import LOCATE, Server, csi_batch


class SlowApp:
    """Reads the body, then 'computes' for `work_s`; records what it started and finished."""

    def __init__(self, work_s: float) -> None:
        self.work_s = work_s
        self.started = 0
        self.finished = 0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        while (await receive()).get("more_body", False):
            pass
        self.started += 1
        await asyncio.sleep(self.work_s)
        self.finished += 1
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})


def _scope(path: str = "/locate") -> dict[str, Any]:
    return {"type": "http", "method": "POST", "path": path, "headers": []}


class Client:
    """One request's side of the ASGI conversation; `hang_up()` disconnects it."""

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []
        self._gone = asyncio.Event()
        self._body_sent = False

    async def receive(self) -> dict[str, Any]:
        if not self._body_sent:
            self._body_sent = True
            return {"type": "http.request", "body": b"{}", "more_body": False}
        await self._gone.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: dict[str, Any]) -> None:
        self.sent.append(message)

    def hang_up(self) -> None:
        self._gone.set()

    @property
    def status(self) -> int | None:
        for m in self.sent:
            if m["type"] == "http.response.start":
                return int(m["status"])
        return None

    def header(self, name: bytes) -> bytes | None:
        for m in self.sent:
            if m["type"] == "http.response.start":
                return dict(m["headers"]).get(name)
        return None

    def body(self) -> Any:
        return json.loads(b"".join(m.get("body", b"") for m in self.sent[1:]))


async def _call(mw: Admission, client: Client, path: str = "/locate") -> None:
    await mw(_scope(path), client.receive, client.send)


def test_beyond_the_in_flight_limit_is_503_with_retry_after() -> None:
    async def run() -> None:
        app = SlowApp(0.2)
        mw = Admission(app, max_in_flight=3, deadline_s=5)
        clients = [Client() for _ in range(5)]
        await asyncio.gather(*(_call(mw, c) for c in clients))
        statuses = sorted(c.status or 0 for c in clients)
        assert statuses == [200, 200, 200, 503, 503]
        shed = next(c for c in clients if c.status == 503)
        assert shed.header(b"retry-after") == b"1"
        assert shed.body()["error"]["code"] == "overloaded"
        assert app.started == 3 and mw.in_flight == 0

    asyncio.run(run())


def test_deadline_cancels_the_work_and_answers_503() -> None:
    async def run() -> None:
        app = SlowApp(1.0)
        mw = Admission(app, max_in_flight=10, deadline_s=0.1)
        client = Client()
        await _call(mw, client)
        assert client.status == 503 and client.header(b"retry-after") == b"1"
        assert "deadline" in client.body()["error"]["message"]
        assert app.started == 1 and app.finished == 0  # cancelled, not run to the end

    asyncio.run(run())


def test_no_work_for_a_client_that_hung_up() -> None:
    async def run() -> None:
        app = SlowApp(0.5)
        mw = Admission(app, max_in_flight=10, deadline_s=5)
        client = Client()
        task = asyncio.create_task(_call(mw, client))
        await asyncio.sleep(0.05)
        client.hang_up()
        await asyncio.wait_for(task, 1)
        assert app.finished == 0 and client.status is None and mw.in_flight == 0

    asyncio.run(run())


def test_other_routes_are_not_admitted_or_counted() -> None:
    async def run() -> None:
        app = SlowApp(0.05)
        mw = Admission(app, max_in_flight=1, deadline_s=0.01)
        clients = [Client() for _ in range(3)]
        await asyncio.gather(*(_call(mw, c, "/sites/x/adapt") for c in clients))
        assert [c.status for c in clients] == [200, 200, 200]

    asyncio.run(run())


@pytest.mark.timeout(90)
def test_overloaded_server_sheds_with_503(start_server: Callable[..., Server]) -> None:
    server = start_server(max_in_flight=2, inference_threads=1)
    batch = {"site": "lab-nll", "csi": csi_batch(64).tolist()}
    body = json.dumps(batch).encode()
    headers = {**LOCATE, "Content-Type": "application/json"}

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as c:
            return await asyncio.gather(
                *(c.post("/locate", content=body, headers=headers) for _ in range(24))
            )

    responses = asyncio.run(burst())
    statuses = [r.status_code for r in responses]
    assert set(statuses) <= {200, 503} and statuses.count(200) >= 2 and 503 in statuses
    shed = next(r for r in responses if r.status_code == 503)
    assert shed.headers["retry-after"] == "1" and shed.json()["error"]["code"] == "overloaded"
    text = httpx.get(server.url + "/metrics").text
    assert 'csipos_requests_shed_total{reason="overloaded"}' in text
