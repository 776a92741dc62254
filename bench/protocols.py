"""Benchmark every way to ask for a position, against ceilings measured in the same run.

Over loopback, on one full-size untrained site model (MEML backbone + nll head,
`training.export`), in one run:

- (a) raw onnxruntime, B=1 and B=64 (one session, 1 intra-op thread, called from as
  many threads as the server's inference pool);
- (b) the HTTP ceiling: bench/ceiling_app.py, a bare ASGI app on the same uvicorn stack
  doing /locate's unavoidable work inline (orjson parse, array, one model call, orjson
  answer);
- (c) `csipos serve --grpc-port` (dev mode, one worker): /locate JSON B=1, /locate npy
  B=1, KServe V2 HTTP with binary tensors, gRPC ModelInfer (unary) and ModelStreamInfer
  (one stream), each at concurrency 1 and 64, with dynamic batching off and on; and the
  B=64 binary paths against raw onnxruntime B=64.

The load generator is one asyncio process (uvloop): HTTP/1.1 keep-alive connections with
prebuilt request bytes, and grpc.aio on one channel; it runs on the same cores as the
server, as a gateway on the same host would. fp/s = fingerprints answered per second;
beside it, the server's CPU time per fingerprint, steadier on a shared machine. The three
servers run side by side and every round measures all cases (off and on back to back);
ratios are taken within a round, the table shows medians over rounds.

    nice -n 10 python3 bench/protocols.py [--rounds 3] [--requests 2000] [--requests-c1 300]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import grpc
import httpx
import numpy as np
import onnxruntime as ort
import uvloop

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from locate import build_repo  # noqa: E402  (bench/ is this script's sys.path[0])

from service.grpc import inference_pb2 as pb  # noqa: E402

INFER = "/inference.GRPCInferenceService/ModelInfer"
STREAM = "/inference.GRPCInferenceService/ModelStreamInfer"


@dataclass
class Result:
    case: str
    batching: str
    conc: int
    batch: int
    fps: float
    p50: float
    p99: float
    cpu_us: float = float("nan")
    """Server CPU time (all its threads) per fingerprint: what the box spends, whatever
    else runs on it; wall-clock fp/s on a shared machine moves with the other jobs."""


def summary(
    case: str,
    batching: str,
    conc: int,
    batch: int,
    wall: float,
    lat: list[float],
    cpu_s: float = float("nan"),
) -> Result:
    a = np.asarray(lat) * 1e3
    return Result(
        case,
        batching,
        conc,
        batch,
        len(lat) * batch / wall,
        float(np.percentile(a, 50)),
        float(np.percentile(a, 99)),
        cpu_s / (len(lat) * batch) * 1e6,
    )


def cpu_seconds(pid: int) -> float:
    """CPU time of every thread of a process so far (Linux schedstat, ns precision)."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):  # a thread ended
            total += int((task / "schedstat").read_text().split()[0])
    return total / 1e9


def measured(
    pid: int, load: Awaitable[tuple[float, list[float]]]
) -> tuple[float, list[float], float]:
    """Run a load against the server `pid`: (wall s, latencies, server CPU s)."""
    before = cpu_seconds(pid)
    wall, lat = asyncio.run(load)  # type: ignore[arg-type]
    return wall, lat, cpu_seconds(pid) - before


def raw_ort(model: Path, batch: int, n: int, threads: int) -> Result:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(model), opts, providers=["CPUExecutionProvider"])
    csi = np.random.default_rng(1).standard_normal((batch, 8, 103, 2)).astype(np.float32)
    for _ in range(20):
        sess.run(None, {"csi": csi})

    def one(_: int) -> float:
        t = time.perf_counter()
        sess.run(None, {"csi": csi})
        return time.perf_counter() - t

    t0, c0 = time.perf_counter(), time.process_time()
    with ThreadPoolExecutor(threads) as pool:
        lat = list(pool.map(one, range(n)))
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return summary("onnxruntime", "-", threads, batch, wall, lat, cpu)


# ---------------------------------------------------------------- request bodies


def csi_of(batch: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((batch, 8, 103, 2)).astype(np.float32)


def http_request(path: str, ctype: str, body: bytes, extra: str = "") -> bytes:
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {ctype}\r\n"
        f"Content-Length: {len(body)}\r\n{extra}\r\n"
    )
    return head.encode() + body


def json_locate(batch: int) -> bytes:
    csi = csi_of(batch)
    doc = {"site": "bench", "csi": (csi[0] if batch == 1 else csi).tolist()}
    return http_request("/locate", "application/json", json.dumps(doc).encode())


def npy_locate(batch: int) -> bytes:
    buf = io.BytesIO()
    np.save(buf, csi_of(batch))
    return http_request("/locate?site=bench", "application/x-npy", buf.getvalue())


def v2_binary(batch: int) -> bytes:
    raw = csi_of(batch).tobytes()
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "csi",
                    "datatype": "FP32",
                    "shape": [batch, 8, 103, 2],
                    "parameters": {"binary_data_size": len(raw)},
                }
            ],
            "outputs": [
                {"name": n, "parameters": {"binary_data": True}} for n in ("position", "sigma")
            ],
        }
    ).encode()
    return http_request(
        "/v2/models/bench/infer",
        "application/octet-stream",
        header + raw,
        f"Inference-Header-Content-Length: {len(header)}\r\n",
    )


def grpc_request(batch: int) -> bytes:
    req = pb.ModelInferRequest(model_name="bench")
    req.inputs.add(name="csi", datatype="FP32", shape=[batch, 8, 103, 2])
    req.raw_input_contents.append(csi_of(batch).tobytes())
    return req.SerializeToString()


# ---------------------------------------------------------------- load generators


async def _run_workers(
    conc: int, n: int, one: Callable[[int], Awaitable[None]]
) -> tuple[float, list[float]]:
    lat: list[float] = []
    left = n

    async def worker(i: int) -> None:
        nonlocal left
        while left > 0:
            left -= 1
            t = time.perf_counter()
            await one(i)
            lat.append(time.perf_counter() - t)

    t0 = time.perf_counter()
    await asyncio.gather(*(worker(i) for i in range(conc)))
    return time.perf_counter() - t0, lat


async def http_load(port: int, request: bytes, n: int, *, conc: int) -> tuple[float, list[float]]:
    conns = [await asyncio.open_connection("127.0.0.1", port) for _ in range(conc)]

    async def one(i: int) -> None:
        reader, writer = conns[i]
        writer.write(request)
        head = await reader.readuntil(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 200"):
            raise RuntimeError(head.decode(errors="replace"))
        length = 0
        for line in head.split(b"\r\n"):
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
        await reader.readexactly(length)

    for i in range(conc):  # warm every connection
        await one(i)
    try:
        return await _run_workers(conc, n, one)
    finally:
        for _, writer in conns:
            writer.close()


async def grpc_unary(port: int, request: bytes, n: int, *, conc: int) -> tuple[float, list[float]]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.unary_unary(INFER)

        async def one(_: int) -> None:
            await call(request)

        for _ in range(20):
            await one(0)
        return await _run_workers(conc, n, one)


async def grpc_stream(port: int, request: bytes, n: int, *, conc: int) -> tuple[float, list[float]]:
    """One stream with up to `conc` requests in flight; answers come back in order."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stream = channel.stream_stream(STREAM)()
        for _ in range(20):
            await stream.write(request)
            await stream.read()
        slots = asyncio.Semaphore(conc)
        sent: list[float] = []
        lat: list[float] = []

        async def write() -> None:
            for _ in range(n):
                await slots.acquire()
                sent.append(time.perf_counter())
                await stream.write(request)

        t0 = time.perf_counter()
        writer = asyncio.ensure_future(write())
        for i in range(n):
            answer = await stream.read()
            lat.append(time.perf_counter() - sent[i])
            slots.release()
            if pb.ModelStreamInferResponse.FromString(answer).error_message:
                raise RuntimeError(pb.ModelStreamInferResponse.FromString(answer).error_message)
        wall = time.perf_counter() - t0
        await writer
        await stream.done_writing()
        return wall, lat


# ---------------------------------------------------------------- servers


def wait_ready(url: str, proc: subprocess.Popen[bytes]) -> None:
    for _ in range(300):
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            if httpx.get(url, timeout=1).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} not ready")


def start_csipos(
    tmp: Path, port: int, grpc_port: int, batching: dict[str, str]
) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "CSIPOS_DEV_MODE": "true",
        "CSIPOS_MODEL_DIR": str(tmp / "models"),
        "CSIPOS_JOB_DIR": str(tmp / "jobs"),
        "CSIPOS_LOG_LEVEL": "WARNING",
        **batching,
    }
    cmd = [sys.executable, "-c", "from service.cli import main; main()", "serve"]
    cmd += ["--port", str(port), "--grpc-port", str(grpc_port), "--log-level", "warning"]
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT)
    wait_ready(f"http://127.0.0.1:{port}/readyz", proc)
    return proc


def start_ceiling(model: Path, port: int) -> subprocess.Popen[bytes]:
    env = {**os.environ, "CEILING_MODEL": str(model)}
    cmd = [sys.executable, "-m", "uvicorn", "ceiling_app:app", "--app-dir", str(ROOT / "bench")]
    cmd += ["--port", str(port), "--log-level", "warning", "--no-access-log"]
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT)
    wait_ready(f"http://127.0.0.1:{port}/", proc)
    return proc


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ---------------------------------------------------------------- report


Load = Callable[[int], Awaitable[tuple[float, list[float]]]]
HTTP_CASES = {"/locate JSON": json_locate, "/locate npy": npy_locate, "V2 HTTP binary": v2_binary}
Key = tuple[str, str, int, int]  # case, batching, clients, B


def server_cases(port: int, gport: int, clients: int) -> list[tuple[str, int, int, Load]]:
    """(case, clients, B, load(n)) against one running `csipos serve`."""
    cases: list[tuple[str, int, int, Load]] = []
    for conc in (1, clients):
        for name, make in HTTP_CASES.items():
            cases.append((name, conc, 1, partial(http_load, port, make(1), conc=conc)))
        g = grpc_request(1)
        cases.append(("gRPC unary", conc, 1, partial(grpc_unary, gport, g, conc=conc)))
        cases.append(("gRPC stream", conc, 1, partial(grpc_stream, gport, g, conc=conc)))
    threads = os.cpu_count() or 1
    for name in ("/locate npy", "V2 HTTP binary"):
        big = HTTP_CASES[name](64)
        cases.append((name, threads, 64, partial(http_load, port, big, conc=threads)))
    g64 = grpc_request(64)
    cases.append(("gRPC unary", threads, 64, partial(grpc_unary, gport, g64, conc=threads)))
    return cases


def fmt_table(results: dict[Key, list[Result]], ratios: dict[Key, dict[str, list[float]]]) -> str:
    """Medians over the rounds; each ratio is taken within its round, then the median."""
    lines = [
        "| case | batching | clients | B | fp/s | p50 ms | p99 ms | server CPU µs/fp "
        "| ÷ HTTP ceiling | ÷ ceiling, CPU | ÷ ort B=64 | ÷ ort B=64, CPU | on ÷ off "
        "| on ÷ off, CPU | on ÷ off p99 |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]

    def med(values: list[float] | None, fmt: str = ".2f") -> str:
        return "" if not values else format(float(np.median(values)), fmt)

    for key, rs in results.items():
        case, batching, conc, batch = key
        fps = med([r.fps for r in rs], ",.0f")
        p50, p99 = med([r.p50 for r in rs]), med([r.p99 for r in rs])
        cpu = med([r.cpu_us for r in rs], ".0f")
        rr = ratios.get(key, {})
        lines.append(
            f"| {case} | {batching} | {conc} | {batch} | {fps} | {p50} | {p99} | {cpu} | "
            f"{med(rr.get('ceiling'))} | {med(rr.get('ceiling_cpu'))} | "
            f"{med(rr.get('ort64'))} | {med(rr.get('ort64_cpu'))} | {med(rr.get('on_off'))} | "
            f"{med(rr.get('on_off_cpu'))} | "
            f"{med(rr.get('on_off_p99'))} |"
        )
    return "\n".join(lines)


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--requests", type=int, default=2000, help="requests per case, many clients")
    ap.add_argument("--requests-c1", type=int, default=300, help="requests per case, 1 client")
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--max-batch", type=int, default=64, help="batching_max_batch when on")
    ap.add_argument("--delay-us", type=int, default=0, help="batching_max_queue_delay_us when on")
    args = ap.parse_args()
    threads = os.cpu_count() or 1

    def count(conc: int, batch: int) -> int:
        if batch > 1:
            return max(50, args.requests // 20)
        return args.requests_c1 if conc == 1 else args.requests

    results: dict[Key, list[Result]] = {}
    ratios: dict[Key, dict[str, list[float]]] = {}

    def record(r: Result) -> Result:
        results.setdefault((r.case, r.batching, r.conc, r.batch), []).append(r)
        print(
            f"  {r.case:<32} {r.batching:<3} c={r.conc:<3} B={r.batch:<3} "
            f"{r.fps:>8,.0f} fp/s  p50 {r.p50:7.2f}  p99 {r.p99:7.2f} ms",
            flush=True,
        )
        return r

    def ratio(key: Key, name: str, value: float) -> None:
        ratios.setdefault(key, {}).setdefault(name, []).append(value)

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        model = build_repo(tmp / "models")
        print(f"$ python3 {' '.join(sys.argv)}", flush=True)
        print(f"before: {uptime()}; cores={threads}", flush=True)
        batching_env = {
            "CSIPOS_BATCHING_MAX_BATCH": str(args.max_batch),
            "CSIPOS_BATCHING_MAX_QUEUE_DELAY_US": str(args.delay_us),
        }
        ceiling_port = free_port()
        ports = {"off": (free_port(), free_port()), "on": (free_port(), free_port())}
        procs = [start_ceiling(model, ceiling_port)]
        try:
            procs.append(start_csipos(tmp, *ports["off"], {}))
            procs.append(start_csipos(tmp, *ports["on"], batching_env))
            cases = {b: server_cases(*ports[b], args.clients) for b in ("off", "on")}
            for rnd in range(args.rounds):
                print(f"round {rnd + 1}/{args.rounds}", flush=True)
                ort1 = record(raw_ort(model, 1, 4000, threads))
                ort64 = record(raw_ort(model, 64, 200, threads))
                ratio(("onnxruntime", "-", threads, 1), "ort64", ort1.fps / ort64.fps)
                ratio(("onnxruntime", "-", threads, 1), "ort64_cpu", ort64.cpu_us / ort1.cpu_us)
                ratio(("onnxruntime", "-", threads, 64), "ort64", 1.0)
                ratio(("onnxruntime", "-", threads, 64), "ort64_cpu", 1.0)
                ceiling: dict[int, float] = {}
                ceiling_cpu: dict[int, float] = {}
                for conc in (1, args.clients):
                    wall, lat, cpu = measured(
                        procs[0].pid,
                        http_load(ceiling_port, json_locate(1), count(conc, 1), conc=conc),
                    )
                    r = summary("HTTP ceiling (bare ASGI, JSON)", "-", conc, 1, wall, lat, cpu)
                    record(r)
                    ceiling[conc] = r.fps
                    ceiling_cpu[conc] = r.cpu_us
                    ratio(("HTTP ceiling (bare ASGI, JSON)", "-", conc, 1), "ceiling_cpu", 1.0)
                    ratio(("HTTP ceiling (bare ASGI, JSON)", "-", conc, 1), "ceiling", 1.0)
                # Off and on alternate case by case (first one, then the other, swapping
                # each round), so a burst of load from elsewhere hits both alike.
                order = ("off", "on") if rnd % 2 == 0 else ("on", "off")
                for i in range(len(cases["off"])):
                    got: dict[str, Result] = {}
                    for batching in order:
                        name, conc, batch, run = cases[batching][i]
                        if batch > 1 and batching == "on":
                            continue  # B=64 requests run alone with batching on too
                        pid = procs[1 if batching == "off" else 2].pid
                        wall, lat, cpu = measured(pid, run(count(conc, batch)))
                        got[batching] = record(summary(name, batching, conc, batch, wall, lat, cpu))
                    for batching, r in got.items():
                        key = (r.case, batching, r.conc, r.batch)
                        ratio(key, "ort64", r.fps / ort64.fps)
                        ratio(key, "ort64_cpu", ort64.cpu_us / r.cpu_us)
                        if r.batch == 1:
                            ratio(key, "ceiling", r.fps / ceiling[r.conc])
                            ratio(key, "ceiling_cpu", ceiling_cpu[r.conc] / r.cpu_us)
                    if len(got) == 2:
                        key = (got["on"].case, "on", got["on"].conc, got["on"].batch)
                        ratio(key, "on_off", got["on"].fps / got["off"].fps)
                        ratio(key, "on_off_cpu", got["off"].cpu_us / got["on"].cpu_us)
                        ratio(key, "on_off_p99", got["on"].p99 / got["off"].p99)
        finally:
            for proc in procs:
                stop(proc)
        print()
        print(fmt_table(results, ratios))
        print()
        print(f"after: {uptime()}")


if __name__ == "__main__":
    uvloop.install()
    main()
