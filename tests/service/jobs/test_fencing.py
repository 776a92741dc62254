"""Jobs that die stay dead: leases fence the publish, workers die with their owner, and
a job's state never goes from failed to succeeded (issue 11).

The kill tests assert the same three things each time: the job is failed, no new
version ever appears, and the next job for the site is accepted.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from service.adaptation import AdaptOptions
from service.app import create_app
from service.config import Settings
from service.jobs.records import JobRecord, JobStore
from tests.service.conftest import ADMIN, Server
from tests.service.jobs.test_adapt_jobs import labelled, wait_job
from tests.service.models import publish_linear
from training.repository import LeaseLost, ModelRepository

pytestmark = pytest.mark.timeout(120)


def gone(pid: int) -> bool:
    """Dead (a zombie waiting for its reaper counts as dead)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state in ("Z", "X")


def wait_for(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _doc(**options: Any) -> dict[str, Any]:
    csi, pos = labelled(12)
    return {"csi": csi.tolist(), "pos": pos.tolist(), "options": {"mode": "head", **options}}


def test_a_job_declared_dead_cannot_publish_or_succeed(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs")
    record = JobRecord(id="a" * 32, site="lab", options=AdaptOptions(), samples=1, created=0.0)
    store.write(record)
    claimed = store.claim(record.id, os.getpid())
    assert claimed is not None
    _, lease = claimed
    assert store.claim(record.id, os.getpid()) is None  # one run per job
    repo = ModelRepository(tmp_path / "models", fence=lambda: store.lease(record.id, lease))
    assert publish_linear(repo, "lab", "mse") == "v1"  # while the lease holds
    store.fail_if_open(record.id, "worker stopped responding (no heartbeat)")
    with pytest.raises(LeaseLost):
        publish_linear(repo, "lab", "mse")
    assert repo.site_versions("lab") == ["v1"]
    assert not [p for p in (repo.root / "sites" / "lab").iterdir() if p.name.startswith(".")]
    assert store.update_leased(record.id, lease, state="succeeded") is None
    final = store.get(record.id)
    assert final is not None and final.state == "failed" and "heartbeat" in (final.error or "")


def test_stalled_worker_is_fenced_after_it_is_declared_dead(
    make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_EPOCHS", "30")
    monkeypatch.setenv("FAKE_EPOCH_S", "0.25")
    with TestClient(create_app(make_settings(job_stale_after_s=5))) as c:
        job_id = c.post("/sites/lab-nll/adapt", json=_doc(), headers=ADMIN).json()["job_id"]

        def started() -> bool:
            job = c.get(f"/jobs/{job_id}", headers=ADMIN).json()
            return bool(job["state"] == "running" and (job["progress"]["epoch"] or 0) >= 1)

        wait_for(started, 60, "the job to run")
        pid = c.get(f"/jobs/{job_id}", headers=ADMIN).json()["worker_pid"]
        os.kill(pid, signal.SIGSTOP)
        try:
            job = wait_job(c, job_id, timeout=20)
            assert job["state"] == "failed" and "heartbeat" in job["error"]
        finally:
            os.kill(pid, signal.SIGCONT)
        time.sleep(9)  # the worker finishes training and tries to publish
        job = c.get(f"/jobs/{job_id}", headers=ADMIN).json()
        assert job["state"] == "failed" and "heartbeat" in job["error"], job
        assert ModelRepository(c.app.state.settings.model_dir).site_versions("lab-nll") == [  # type: ignore[attr-defined]
            "v1",
            "v2",
        ]
        monkeypatch.setenv("FAKE_EPOCHS", "1")
        r = c.post("/sites/lab-nll/adapt", json=_doc(), headers=ADMIN)
        assert r.status_code == 202, r.text
        assert wait_job(c, r.json()["job_id"])["version"] == "v3"


@pytest.mark.parametrize("moment", ["training", "publish"])
def test_server_killed_mid_job_process_pool(
    start_server: Callable[..., Server],
    repo: ModelRepository,
    tmp_path: Path,
    moment: str,
) -> None:
    marker = tmp_path / "mid-publish"
    env = {"FAKE_EPOCHS": "30", "FAKE_EPOCH_S": "0.2"}
    if moment == "publish":
        env = {"FAKE_EPOCHS": "1", "FAKE_PUBLISH_MARKER": str(marker), "FAKE_PUBLISH_S": "5"}
    server = start_server(env=env)
    r = httpx.post(server.url + "/sites/lab-nll/adapt", json=_doc(), headers=ADMIN)
    job_url = server.url + r.json()["url"]

    def reached() -> bool:
        if moment == "publish":
            return marker.exists()
        job = httpx.get(job_url, headers=ADMIN).json()
        return bool(job["state"] == "running" and (job["progress"]["epoch"] or 0) >= 1)

    wait_for(reached, 60, f"the job to reach {moment}")
    worker = httpx.get(job_url, headers=ADMIN).json()["worker_pid"]
    server.proc.kill()
    server.proc.wait()
    wait_for(lambda: gone(worker), 5, "the orphaned pool worker to die")

    again = start_server(env={"FAKE_EPOCHS": "1"})
    job_url = again.url + r.json()["url"]
    assert httpx.get(job_url, headers=ADMIN).json()["state"] == "failed"
    time.sleep(6)  # longer than the rest of the killed job would have taken
    assert repo.site_versions("lab-nll") == ["v1", "v2"]
    assert httpx.get(job_url, headers=ADMIN).json()["state"] == "failed"
    r = httpx.post(again.url + "/sites/lab-nll/adapt", json=_doc(), headers=ADMIN)
    assert r.status_code == 202, r.text


def _children(pid: int) -> set[int]:
    out: set[int] = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        out.update(int(c) for c in text)
    return out


def test_sigterm_stops_pool_workers_idle_and_busy(
    start_server: Callable[..., Server],
) -> None:
    server = start_server(env={"FAKE_EPOCHS": "1"})
    r = httpx.post(server.url + "/sites/lab-nll/adapt", json=_doc(), headers=ADMIN)
    job_url = server.url + r.json()["url"]
    wait_for(
        lambda: httpx.get(job_url, headers=ADMIN).json()["state"] == "succeeded", 60, "the job"
    )
    idle = _children(server.proc.pid)
    assert idle  # the pool worker and the resource tracker stay between jobs
    server.proc.send_signal(signal.SIGTERM)
    server.proc.wait(timeout=20)
    wait_for(lambda: all(gone(p) for p in idle), 10, "idle pool processes to exit")

    busy = start_server(env={"FAKE_EPOCHS": "100", "FAKE_EPOCH_S": "0.2"})
    r = httpx.post(busy.url + "/sites/lab-nll/adapt", json=_doc(), headers=ADMIN)
    job_url = busy.url + r.json()["url"]
    wait_for(lambda: httpx.get(job_url, headers=ADMIN).json()["state"] == "running", 60, "the job")
    children = _children(busy.proc.pid)
    busy.proc.send_signal(signal.SIGTERM)
    busy.proc.wait(timeout=20)
    wait_for(lambda: all(gone(p) for p in children), 10, "busy pool processes to exit")
