"""Adaptation jobs through RQ on a real redis-server to a real `csipos worker`."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.config import Settings
from tests.service.conftest import ADMIN, LOCATE, REPO_ROOT, free_port, settings_env
from tests.service.jobs.test_adapt_jobs import labelled, wait_job
from training.repository import ModelRepository

pytestmark = [
    pytest.mark.skipif(
        shutil.which("redis-server") is None, reason="redis-server not installed (Debian package)"
    ),
    pytest.mark.timeout(120),  # redis-server and `csipos worker` subprocesses
]


@pytest.fixture
def redis_url(tmp_path: Path) -> Iterator[str]:
    port = free_port()
    proc = subprocess.Popen(
        [
            "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
    )
    from redis import Redis

    conn = Redis(port=port)
    for _ in range(100):
        try:
            conn.ping()
            break
        except Exception:
            time.sleep(0.05)
    yield f"redis://127.0.0.1:{port}/0"
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture
def worker(
    redis_url: str, repo: ModelRepository, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[..., Settings]]:
    env = {**os.environ, **settings_env(repo, tmp_path, redis_url=redis_url)}
    env.update(PYTHONPATH=str(REPO_ROOT), FAKE_EPOCHS="30", FAKE_EPOCH_S="0.1")
    proc = subprocess.Popen(
        [sys.executable, "-c", "from service.cli import main; main()", "worker"],
        env=env,
        cwd=REPO_ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )

    def settings(**extra: object) -> Settings:
        for k, v in settings_env(repo, tmp_path, redis_url=redis_url, **extra).items():
            monkeypatch.setenv(k, v)
        return Settings()

    yield settings
    proc.terminate()
    proc.wait(timeout=10)


def test_job_runs_on_rq_worker_and_survives_a_killed_horse(
    worker: Callable[..., Settings],
) -> None:
    csi, pos = labelled(12)
    doc = {"csi": csi.tolist(), "pos": pos.tolist(), "options": {"mode": "head"}}
    with TestClient(create_app(worker(job_stale_after_s=5))) as c:
        assert c.get("/readyz").status_code == 200
        r = c.post("/sites/rq-site/adapt", json=doc, headers=ADMIN)
        assert r.status_code == 202 and r.json()["job"]["executor"] == "rq"
        job = wait_job(c, r.json()["job_id"])
        assert job["state"] == "succeeded" and job["version"] == "v1", job
        assert job["worker_pid"] != os.getpid()
        time.sleep(0.5)  # the store's watcher picks the new site up
        one = {"site": "rq-site", "csi": csi[:1].tolist()}
        assert c.post("/locate", json=one, headers=LOCATE).json()["model_version"] == "v1"

        # kill the process running the second job: previous version keeps serving
        r = c.post("/sites/rq-site/adapt", json=doc, headers=ADMIN)
        job_id = r.json()["job_id"]
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            job = c.get(f"/jobs/{job_id}", headers=ADMIN).json()
            if job["state"] == "running" and (job["progress"]["epoch"] or 0) >= 1:
                break
            time.sleep(0.1)
        os.kill(job["worker_pid"], signal.SIGKILL)
        job = wait_job(c, job_id, timeout=30)
        assert job["state"] == "failed", job
        assert c.post("/locate", json=one, headers=LOCATE).json()["model_version"] == "v1"
