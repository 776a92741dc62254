"""Health, readiness, metrics exposition, error shape for unexpected errors."""

from __future__ import annotations

import shutil
import subprocess

import pytest
from fastapi.testclient import TestClient

from tests.service.conftest import LOCATE, csi_batch


def test_health_and_ready(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz").json()
    assert ready["status"] == "ready" and ready["sites"] == ["lab-mse", "lab-nll"]
    r = client.get("/healthz", headers={"X-Request-ID": "abc-123"})
    assert r.headers["x-request-id"] == "abc-123"
    assert len(client.get("/healthz").headers["x-request-id"]) == 16


def test_unknown_route_and_method_have_the_error_shape(client: TestClient) -> None:
    r = client.get("/nowhere")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    r = client.put("/locate")
    assert r.status_code == 405 and "error" in r.json()


def test_unexpected_error_is_500_without_traceback(client: TestClient) -> None:
    def boom(*_: object) -> None:
        raise RuntimeError("secret internals")

    client.app.state.store.get = boom  # type: ignore[attr-defined]
    r = client.post(
        "/locate",
        json={"site": "lab-nll", "csi": csi_batch(1).tolist()},
        headers={**LOCATE, "X-Request-ID": "req-42"},
    )
    assert r.status_code == 500
    assert r.json() == {
        "error": {
            "code": "internal_error",
            "message": "internal server error",
            "detail": {"request_id": "req-42"},
        }
    }
    assert r.headers["x-request-id"] == "req-42"


def test_metrics_exposition(client: TestClient, tmp_path: object) -> None:
    client.post("/locate", json={"site": "lab-nll", "csi": csi_batch(3).tolist()}, headers=LOCATE)
    client.post("/locate", json={"site": "zzz", "csi": csi_batch(1).tolist()}, headers=LOCATE)
    text = client.get("/metrics").text
    assert 'csipos_locate_predictions_total{site="lab-nll"}' in text
    assert 'route="/locate"' in text and 'route="/sites/lab-nll"' not in text
    assert 'csipos_predicted_sigma_meters_bucket{axis="x"' in text
    assert 'csipos_model_info{loss="nll",site="lab-nll",version="v1"} 1.0' in text
    assert "csipos_models_loaded 2.0" in text
    assert 'csipos_adapt_jobs_total{outcome="succeeded"}' in text
    assert 'site="zzz"' not in text  # unknown sites never become label values
    if shutil.which("promtool") is None:
        pytest.skip("promtool not installed (Debian package prometheus)")
    check = subprocess.run(
        ["promtool", "check", "metrics"], input=text.encode(), capture_output=True, timeout=30
    )
    assert check.returncode == 0, check.stderr.decode() + check.stdout.decode()
