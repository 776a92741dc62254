"""Benchmark /locate over loopback beside raw onnxruntime on the same model and batch.

Starts `csipos serve` (dev mode) on a temporary repository holding one untrained but
full-size site model (MEML backbone + nll head, exported by training.export), then for
batch sizes 1 and 64 and bodies JSON and npy measures request latency (p50, p99) and
throughput (fingerprints/s) with a few concurrent clients; the ceiling is the same ONNX
model run directly in onnxruntime, single-threaded per call, same batch.

The ceiling and the HTTP cases are measured in alternating rounds and each ratio is
taken within its round, so load from other processes hits both alike; the table
gives medians over the rounds.

    python3 bench/locate.py [--requests 200] [--concurrency 4] [--rounds 3]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort

ROOT = Path(__file__).resolve().parents[1]


def build_repo(root: Path) -> Path:
    from training.export import site_model_onnx
    from training.nets import Backbone, Head, SiteModel
    from training.repository import ModelRepository

    model = SiteModel(Backbone(seed=0), Head(loss="nll", seed=0)).eval()

    def write(directory: Path, version: str) -> None:
        data = site_model_onnx(model, site="bench", version=version, backbone_ref="bench:v1")
        (directory / "model.onnx").write_bytes(data)

    repo = ModelRepository(root)
    repo.publish_site("bench", write, loss="nll", parent=None)
    return repo.path("site", "bench") / "model.onnx"


def percentiles(lat: list[float]) -> tuple[float, float]:
    a = np.asarray(lat) * 1e3
    return float(np.percentile(a, 50)), float(np.percentile(a, 99))


def raw_ort(model: Path, csi: np.ndarray, n: int, conc: int) -> tuple[float, float, float]:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(model), opts, providers=["CPUExecutionProvider"])
    sess.run(None, {"csi": csi})

    def one(_: int) -> float:
        t = time.perf_counter()
        sess.run(None, {"csi": csi})
        return time.perf_counter() - t

    t0 = time.perf_counter()
    with ThreadPoolExecutor(conc) as pool:
        lat = list(pool.map(one, range(n)))
    wall = time.perf_counter() - t0
    p50, p99 = percentiles(lat)
    return n * csi.shape[0] / wall, p50, p99


def http_bench(
    url: str, csi: np.ndarray, kind: str, n: int, conc: int
) -> tuple[float, float, float]:
    if kind == "json":
        body = json.dumps({"site": "bench", "csi": csi.tolist()}).encode()
        headers, path = {"Content-Type": "application/json"}, "/locate"
    else:
        buf = io.BytesIO()
        np.save(buf, csi)
        body = buf.getvalue()
        headers, path = {"Content-Type": "application/x-npy"}, "/locate?site=bench"
    clients = [httpx.Client(base_url=url, headers=headers) for _ in range(conc)]
    for c in clients:
        assert c.post(path, content=body).status_code == 200

    def one(i: int) -> float:
        t = time.perf_counter()
        r = clients[i % conc].post(path, content=body)
        r.raise_for_status()
        return time.perf_counter() - t

    t0 = time.perf_counter()
    with ThreadPoolExecutor(conc) as pool:
        lat = list(pool.map(one, range(n)))
    wall = time.perf_counter() - t0
    for c in clients:
        c.close()
    p50, p99 = percentiles(lat)
    return n * csi.shape[0] / wall, p50, p99


def row(name: str, *cols: float | str) -> str:
    """One table row: name, fp/s, p50, p99, ceiling, ratio."""
    fmts = [">10.0f", ">9.2f", ">9.2f", ">14.0f", ">7.2f"]
    widths = [10, 9, 9, 14, 7]
    cells = [
        f"{c:{f}}" if not isinstance(c, str) else f"{c:>{w}}"
        for c, f, w in zip(cols, fmts, widths, strict=True)
    ]
    return f"{name:<14}" + "".join(cells)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--port", type=int, default=8765)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model = build_repo(Path(tmp) / "models")
        env = {
            **os.environ,
            "CSIPOS_DEV_MODE": "true",
            "CSIPOS_MODEL_DIR": str(Path(tmp) / "models"),
            "CSIPOS_JOB_DIR": str(Path(tmp) / "jobs"),
            "CSIPOS_LOG_LEVEL": "WARNING",
        }
        server = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "from service.cli import main; main()",
                "serve",
                "--port",
                str(args.port),
                "--log-level",
                "warning",
            ],
            env=env,
            cwd=ROOT,
        )
        url = f"http://127.0.0.1:{args.port}"
        try:
            for _ in range(150):
                try:
                    if httpx.get(url + "/readyz").status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                time.sleep(0.2)
            print(
                f"requests={args.requests} concurrency={args.concurrency} "
                f"rounds={args.rounds} cores={os.cpu_count()}"
            )
            print(row("case", "fp/s", "p50 ms", "p99 ms", "ceiling fp/s", "ratio"))
            rng = np.random.default_rng(0)
            for batch in (1, 64):
                csi = rng.standard_normal((batch, 8, 103, 2)).astype(np.float32)
                rounds: dict[str, list[tuple[float, float, float, float]]] = {}
                for _ in range(args.rounds):
                    ceil, c50, c99 = raw_ort(model, csi, args.requests, args.concurrency)
                    rounds.setdefault("ort", []).append((ceil, c50, c99, ceil))
                    for kind in ("json", "npy"):
                        t, p50, p99 = http_bench(url, csi, kind, args.requests, args.concurrency)
                        rounds.setdefault(kind, []).append((t, p50, p99, ceil))
                for kind, results in rounds.items():
                    a = np.asarray(results)
                    med = np.median(a, axis=0)
                    ratio = float(np.median(a[:, 0] / a[:, 3]))
                    print(row(f"{kind} B={batch}", *med.tolist(), ratio))
        finally:
            server.terminate()
            server.wait(timeout=10)


if __name__ == "__main__":
    main()
