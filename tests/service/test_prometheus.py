"""A real Prometheus scrapes a real multi-worker `csipos serve`; promtool checks the text."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import tritonclient.grpc as triton

from tests.service.conftest import LOCATE, csi_batch, free_port

pytestmark = [
    pytest.mark.skipif(
        shutil.which("prometheus") is None or shutil.which("promtool") is None,
        reason="prometheus/promtool not installed (Debian package prometheus)",
    ),
    pytest.mark.timeout(120),  # two uvicorn workers and a Prometheus server
]


def test_scrape_two_workers(start_server: Callable[..., Any], tmp_path: Path) -> None:
    grpc_port = free_port()  # both workers serve gRPC on it (SO_REUSEPORT)
    server = start_server(
        workers=2, env={"PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "prom-mp")}, grpc_port=grpc_port
    )
    body = {"site": "lab-nll", "csi": csi_batch(3).tolist()}
    inp = triton.InferInput("csi", [3, 8, 103, 2], "FP32")
    inp.set_data_from_numpy(csi_batch(3))
    with httpx.Client(base_url=server.url, headers=LOCATE) as http:
        for _ in range(4):  # new connections spread over both workers
            with httpx.Client(base_url=server.url, headers=LOCATE) as one:
                assert one.post("/locate", json=body).status_code == 200
            with triton.InferenceServerClient(f"127.0.0.1:{grpc_port}") as client:
                grpc_key = {"authorization": LOCATE["Authorization"]}
                assert client.infer("lab-nll", [inp], headers=grpc_key).as_numpy("position").any()
        text = http.get("/metrics").text
    assert 'csipos_locate_predictions_total{site="lab-nll"} 24.0' in text
    assert (
        'protocol="grpc",route="/inference.GRPCInferenceService/ModelInfer",status="200"} 4.0'
        in text
    )
    check = subprocess.run(
        ["promtool", "check", "metrics"], input=text.encode(), capture_output=True, timeout=30
    )
    assert check.returncode == 0, check.stderr.decode() + check.stdout.decode()

    prom_port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s}\n"
        "scrape_configs:\n"
        "  - job_name: csipos\n"
        f"    static_configs: [{{targets: ['127.0.0.1:{server.port}']}}]\n"
    )
    prom = subprocess.Popen(
        [
            "prometheus",
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{prom_port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        value = None
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline and value != "24":
            try:
                r = httpx.get(
                    f"http://127.0.0.1:{prom_port}/api/v1/query",
                    params={"query": 'sum(csipos_locate_predictions_total{site="lab-nll"})'},
                    timeout=2,
                )
                result = r.json()["data"]["result"]
                value = result[0]["value"][1] if result else None
            except (httpx.HTTPError, KeyError, ValueError):
                pass
            time.sleep(0.5)
        assert value == "24"
    finally:
        prom.terminate()
        prom.wait(timeout=10)
