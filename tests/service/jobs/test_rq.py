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
from tests.service.conftest import ADMIN, LOCATE, REPO_ROOT, settings_env
from tests.service.jobs.test_adapt_jobs import labelled, wait_job
from tests.service.jobs.test_fencing import gone, wait_for
from training.repository import ModelRepository

pytestmark = [
    pytest.mark.skipif(
        shutil.which("redis-server") is None, reason="redis-server not installed (Debian package)"
    ),
    pytest.mark.timeout(120),  # redis-server and `csipos worker` subprocesses
]


class RQWorker:
    """A real `csipos worker` process and the API settings that enqueue to it."""

    def __init__(
        self,
        redis_url: str,
        repo: ModelRepository,
        tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch,
        **fake: str,
    ) -> None:
        self.redis_url, self.repo, self.tmp_path, self.monkeypatch = (
            redis_url,
            repo,
            tmp_path,
            monkeypatch,
        )
        env = {**os.environ, **settings_env(repo, tmp_path, redis_url=redis_url)}
        env.update({"PYTHONPATH": str(REPO_ROOT), "FAKE_EPOCHS": "30", "FAKE_EPOCH_S": "0.1"})
        env.update(fake)
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "from service.cli import main; main()", "worker"],
            env=env,
            cwd=REPO_ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def settings(self, **extra: object) -> Settings:
        env = settings_env(self.repo, self.tmp_path, redis_url=self.redis_url, **extra)
        for k, v in env.items():
            self.monkeypatch.setenv(k, v)
        return Settings()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
        try:  # a loaded machine may take a while to shut a warm worker down
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)


@pytest.fixture
def start_worker(
    redis_url: str, repo: ModelRepository, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[..., RQWorker]]:
    workers: list[RQWorker] = []

    def start(**fake: str) -> RQWorker:
        workers.append(RQWorker(redis_url, repo, tmp_path, monkeypatch, **fake))
        return workers[-1]

    yield start
    for w in workers:
        w.stop()


@pytest.fixture
def worker(start_worker: Callable[..., RQWorker]) -> Callable[..., Settings]:
    return start_worker().settings


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


@pytest.mark.parametrize("moment", ["training", "publish"])
def test_rq_worker_killed_mid_job(
    start_worker: Callable[..., RQWorker], repo: ModelRepository, tmp_path: Path, moment: str
) -> None:
    """SIGKILL of the `csipos worker` itself: its work horse dies with it, the job turns
    failed (no heartbeat), no version appears, and the next job is accepted."""
    marker = tmp_path / "mid-publish"
    fake = {"FAKE_PUBLISH_MARKER": str(marker), "FAKE_EPOCHS": "1"} if moment == "publish" else {}
    w = start_worker(**fake)
    csi, pos = labelled(12)
    doc = {"csi": csi.tolist(), "pos": pos.tolist(), "options": {"mode": "head"}}
    with TestClient(create_app(w.settings(job_stale_after_s=3))) as c:
        job_id = c.post("/sites/lab-nll/adapt", json=doc, headers=ADMIN).json()["job_id"]
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            job = c.get(f"/jobs/{job_id}", headers=ADMIN).json()
            if moment == "publish" and marker.exists():
                break
            if moment == "training" and (job["progress"]["epoch"] or 0) >= 1:
                break
            time.sleep(0.1)
        horse = c.get(f"/jobs/{job_id}", headers=ADMIN).json()["worker_pid"]
        w.proc.kill()
        w.proc.wait()
        wait_for(lambda: gone(horse), 5, "the work horse to die with its worker")
        job = wait_job(c, job_id, timeout=30)
        assert job["state"] == "failed", job
        time.sleep(5)  # longer than the rest of the killed job would have taken
        assert repo.site_versions("lab-nll") == ["v1", "v2"]
        assert c.get(f"/jobs/{job_id}", headers=ADMIN).json()["state"] == "failed"
        assert c.post("/sites/lab-nll/adapt", json=doc, headers=ADMIN).status_code == 202
