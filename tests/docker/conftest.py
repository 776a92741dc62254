"""Fixtures for the deployment checks: paths, and a real /metrics scrape of the service."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from pydantic import SecretStr

from tests.docker.promql import REPO

DOCKER = REPO / "docker"
DASHBOARD = DOCKER / "grafana" / "dashboards" / "csipos.json"
PROMETHEUS = DOCKER / "prometheus"
COMPOSE_FILE = REPO / "docker-compose.yml"

ADMIN_KEY = "docker-test-admin-key-0123456789"
LOCATE_KEY = "docker-test-locate-key-0123456789"


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def run(cmd: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False, **kw)


def need(tool: str, how: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.skip(f"{tool} not installed ({how})")
    return path


@pytest.fixture(scope="session")
def scraped_series(tmp_path_factory: pytest.TempPathFactory) -> set[str]:
    """Sample names on a real /metrics of `service.app.create_app`, after real traffic.

    The repository holds one tiny nll site (the service tests' linear ONNX model),
    so that every labelled series has been observed at least once: an HTTP
    request, an inference, predictions, sigma, and the job metrics.
    """
    from service.app import create_app
    from service.config import Settings
    from tests.service.models import publish_linear, publish_novelty_site
    from training.repository import ModelRepository

    root = tmp_path_factory.mktemp("scrape")
    repo = ModelRepository(root / "models")
    publish_linear(repo, "lab", "nll", seed=1, bias=(1.0, 2.0))
    own = publish_novelty_site(repo, "toy")  # a site with an out-of-site detector
    settings = Settings(
        model_dir=root / "models",
        job_dir=root / "jobs",
        admin_keys=[SecretStr(ADMIN_KEY)],
        locate_keys=[SecretStr(LOCATE_KEY)],
        log_level="WARNING",
    )
    csi = np.random.default_rng(0).standard_normal((3, 8, 103, 2)).astype(np.float32)
    with TestClient(create_app(settings)) as client:
        r = client.post(
            "/locate",
            json={"site": "lab", "csi": csi.tolist()},
            headers={"Authorization": f"Bearer {LOCATE_KEY}"},
        )
        assert r.status_code == 200, r.text
        r = client.post(
            "/locate",
            json={"site": "toy", "csi": own.csi[:2].tolist()},
            headers={"Authorization": f"Bearer {LOCATE_KEY}"},
        )
        assert r.status_code == 200, r.text
        # a tracked UE whose last measurement jumps 50 m: tracks, restarts and the gate
        tracker = client.app.state.tracker  # type: ignore[attr-defined]

        async def track() -> None:
            for i, x in enumerate([1.0, 1.0, 1.0, 51.0]):
                z = np.array([x, 0.0])
                await tracker.update("lab", "lab", "ue", float(i), z, 0.04 * np.eye(2), "set")
            # a tracked UE out of site at a site with a detector (a score over 1)
            cov = 0.04 * np.eye(2)
            await tracker.update("toy", "toy", "far", 0.0, np.zeros(2), cov, "set", novelty=5.0)

        asyncio.run(track())
        text = client.get("/metrics").text
    return {s.name for fam in text_string_to_metric_families(text) for s in fam.samples}
