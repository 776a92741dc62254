"""Load test of admission control: many concurrent /locate clients over loopback.

Starts `csipos serve` (one worker process, default admission settings unless given) on a
temporary repository holding one untrained but full-size site model, then runs phases
of N concurrent clients, each sending single-fingerprint JSON requests back to back
for a fixed time:

- 1 client: the baseline latency and throughput, measured in the same run;
- 64 clients: must see zero errors (every answer 200);
- 512 clients, patient (client timeout above the server's deadline): every request is
  answered (200 or 503) within the deadline, and no model call is made for a request
  whose client left: the server's prediction count equals the 200s the clients got;
  clients honour Retry-After on a 503, as Triton's and most HTTP clients' retry do;
- 512 clients, impatient (client timeout below the deadline): clients give up, and the
  server drops their queued work (`csipos_requests_shed_total{reason="client_gone"}`);
  at most one in-progress model call per inference thread can be computed in vain.

Bounded and loopback only:

    python3 bench/load.py [--seconds 5] [--max-in-flight 128] [--deadline 2]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
from locate import build_repo  # bench/ is this script's sys.path[0]

ROOT = Path(__file__).resolve().parents[1]
KEY = "bench-locate-key-0123456789"
RETRY_AFTER_S = 1.0
"""The server's Retry-After; the clients honour it (a retry storm measures the clients)."""
SLACK_S = 0.5
"""Allowed beyond the deadline: the server's clock starts when the request reaches the
app, after the kernel and uvicorn queued it, and the clients share the CPU."""


@dataclass
class Phase:
    name: str
    clients: int
    timeout_s: float
    statuses: Counter[str] = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)
    computed: int = 0
    shed: dict[str, float] = field(default_factory=dict)
    wall_s: float = 0.0

    @property
    def answered(self) -> int:
        return sum(v for k, v in self.statuses.items() if k.isdigit())

    def pct(self, q: float) -> float:
        return float(np.percentile(np.asarray(self.latencies) * 1e3, q)) if self.latencies else 0.0


def scrape(url: str) -> tuple[int, dict[str, float]]:
    text = httpx.get(url + "/metrics", timeout=60).text
    m = re.search(r'^csipos_locate_predictions_total\{site="bench"\} (\S+)$', text, re.M)
    shed = {
        k: float(v)
        for k, v in re.findall(r'^csipos_requests_shed_total\{reason="(\w+)"\} (\S+)$', text, re.M)
    }
    return int(float(m.group(1))) if m else 0, shed


async def _request(host: str, port: int, raw: bytes, state: dict[str, object]) -> int:
    """One request on the client's keep-alive connection (raw HTTP/1.1: httpx costs more
    CPU per request than the server does, and would measure itself)."""
    conn = state.get("conn")
    if conn is None:
        conn = await asyncio.open_connection(host, port)
        state["conn"] = conn
    reader, writer = conn  # type: ignore[misc]
    try:
        writer.write(raw)
        status_line = await reader.readuntil(b"\r\n")
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(re.search(rb"(?i)content-length: (\d+)", head).group(1))  # type: ignore[union-attr]
        await reader.readexactly(length)
        if re.search(rb"(?i)connection: close", head):
            writer.close()
            state["conn"] = None
        return int(status_line.split()[1])
    except BaseException:
        writer.close()
        state["conn"] = None
        raise


async def run_phase(url: str, phase: Phase, body: bytes, seconds: float) -> None:
    host, port = url.removeprefix("http://").split(":")
    raw = (
        f"POST /locate HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {KEY}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    stop = time.monotonic() + seconds

    async def client() -> None:
        state: dict[str, object] = {}
        while time.monotonic() < stop:
            start = time.perf_counter()
            try:
                async with asyncio.timeout(phase.timeout_s):
                    status = await _request(host, int(port), raw, state)
                phase.statuses[str(status)] += 1
                phase.latencies.append(time.perf_counter() - start)
                if status == 503:
                    await asyncio.sleep(RETRY_AFTER_S)  # a well-behaved client backs off
            except TimeoutError:
                phase.statuses["client timeout"] += 1
            except OSError as exc:
                phase.statuses[type(exc).__name__] += 1
        conn = state.get("conn")
        if conn is not None:
            conn[1].close()  # type: ignore[index]

    before, shed_before = scrape(url)
    t0 = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(phase.clients)))
    phase.wall_s = time.perf_counter() - t0
    await asyncio.sleep(1.0)  # let abandoned work finish, so it is counted
    after, shed_after = scrape(url)
    phase.computed = after - before
    phase.shed = {k: v - shed_before.get(k, 0.0) for k, v in shed_after.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--max-in-flight", type=int, default=None)
    p.add_argument("--deadline", type=float, default=2.0)
    args = p.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="csipos-load-"))
    build_repo(tmp / "models")
    port = 18000 + os.getpid() % 1000
    url = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "CSIPOS_MODEL_DIR": str(tmp / "models"),
        "CSIPOS_JOB_DIR": str(tmp / "jobs"),
        "CSIPOS_ADMIN_KEYS": "bench-admin-key-0123456789",
        "CSIPOS_LOCATE_KEYS": KEY,
        "CSIPOS_INFERENCE_DEADLINE_S": str(args.deadline),
        "CSIPOS_LOG_LEVEL": "WARNING",
    }
    if args.max_in_flight is not None:
        env["CSIPOS_MAX_IN_FLIGHT"] = str(args.max_in_flight)
    server = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from service.cli import main; main()",
            "serve",
            "--port",
            str(port),
        ],
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(300):
            try:
                if httpx.get(url + "/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        csi = np.random.default_rng(0).standard_normal((8, 103, 2)).astype(np.float32)
        body = json.dumps({"site": "bench", "csi": csi.tolist()}).encode()
        d = args.deadline
        phases = [
            Phase("1 client (baseline)", 1, d + 5),
            Phase("64 clients", 64, d + 5),
            Phase("512 clients, patient", 512, d + 5),
            Phase("512 clients, impatient", 512, d / 4),
        ]
        for phase in phases:
            asyncio.run(run_phase(url, phase, body, args.seconds))
            print(f"{phase.name}: {dict(phase.statuses)}", file=sys.stderr)
    finally:
        server.terminate()
        server.wait(timeout=20)

    base = phases[0]
    base_rps = base.statuses["200"] / base.wall_s
    print(
        f"deadline {d:g} s, max in flight {args.max_in_flight or 'default (128)'}, "
        f"{args.seconds:g} s a phase, load: {os.getloadavg()[0]:.2f}"
    )
    print()
    print(
        "| phase | answers | 200 | 503 | other | p50 ms | p99 ms | max ms | 200/s (x base) "
        "| computed - 200s | shed (overloaded / deadline / client_gone) |"
    )
    print("|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---|")
    for ph in phases:
        other = {k: v for k, v in ph.statuses.items() if k not in ("200", "503")}
        rps = ph.statuses["200"] / ph.wall_s
        shed = " / ".join(
            str(int(ph.shed.get(k, 0))) for k in ("overloaded", "deadline", "client_gone")
        )
        print(
            f"| {ph.name} | {ph.answered} | {ph.statuses['200']} | {ph.statuses['503']} "
            f"| {dict(other) or '-'} | {ph.pct(50):.1f} | {ph.pct(99):.1f} "
            f"| {max(ph.latencies, default=0) * 1e3:.0f} | {rps:.0f} ({rps / base_rps:.2f}) "
            f"| {ph.computed - ph.statuses['200']} | {shed} |"
        )
    checks = {
        "64 clients: zero errors": phases[1].statuses["200"] == phases[1].answered
        and not [k for k in phases[1].statuses if not k.isdigit()],
        "512 patient: every request answered 200/503": set(phases[2].statuses) <= {"200", "503"},
        "512 patient: all within the deadline": max(phases[2].latencies, default=0) <= d + SLACK_S,
        "512 patient: nothing computed for a gone client": phases[2].computed
        == phases[2].statuses["200"],
    }
    print()
    for name, ok in checks.items():
        print(f"- {'PASS' if ok else 'FAIL'}: {name}")
    if not all(checks.values()):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
