"""POST /sites/{id}/adapt and GET /jobs/{id} with the in-process (spawn pool) executor."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.config import Settings
from tests.service.conftest import ADMIN, LOCATE, csi_batch
from tests.service.fake_trainer import FAIL_SEED
from training.config import TrainConfig
from training.data.fingerprints import EnvironmentMeta, Fingerprints, write_environment

# Each app spawns a worker pool (fresh interpreters importing torch): bound a hung job.
pytestmark = pytest.mark.timeout(120)


def labelled(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    pos = (rng.uniform(0, 10, (n, 2)) + np.array([100.0, 200.0])).astype(np.float32)
    return csi_batch(n, seed), pos


def wait_job(client: TestClient, job_id: str, timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job: dict[str, Any] = client.get(f"/jobs/{job_id}", headers=ADMIN).json()
        if job["state"] in ("succeeded", "failed"):
            return job
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} did not finish: {job}")


def h5_upload(tmp_path: Path, n: int, **fields: np.ndarray) -> bytes:
    csi, pos = labelled(n)
    data = Fingerprints(csi=fields.get("csi", csi), pos=fields.get("pos", pos))
    path = tmp_path / f"upload-{n}.h5"
    write_environment(path, "new-site", data, EnvironmentMeta(description="test"), overwrite=True)
    return path.read_bytes()


def test_json_adapt_end_to_end(client: TestClient) -> None:
    csi, pos = labelled(30)
    r = client.post(
        "/sites/fresh/adapt",
        json={"csi": csi.tolist(), "pos": pos.tolist(), "options": {"mode": "head", "seed": 1}},
        headers=ADMIN,
    )
    assert r.status_code == 202, r.text
    body = r.json()
    assert body["url"] == f"/jobs/{body['job_id']}" and body["job"]["state"] == "queued"
    job = wait_job(client, body["job_id"])
    assert job["state"] == "succeeded", job
    assert job["version"] == "v1" and job["samples"] == 30
    assert job["progress"]["epoch"] == 3 and job["progress"]["best_val_me"] == pytest.approx(10 / 3)
    assert job["metrics"]["val_me"] == pytest.approx(10 / 3) and job["metrics"]["samples"] == 30
    assert job["options"]["mode"] == "head"
    assert job["options"]["augment_copies"] == TrainConfig().augment_copies == 3  # the default
    # the new site answers near the centre of its training positions (the fake's bias)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        r = client.post("/locate", json={"site": "fresh", "csi": csi[:2].tolist()}, headers=LOCATE)
        if r.status_code == 200:
            break
        time.sleep(0.1)
    assert r.status_code == 200
    assert abs(r.json()["positions"][0]["x"] - pos[:, 0].mean()) < 3
    assert any(j["id"] == body["job_id"] for j in client.get("/jobs", headers=ADMIN).json()["jobs"])


def test_hdf5_multipart_upload_and_activate_false(client: TestClient, tmp_path: Path) -> None:
    r = client.post(
        "/sites/lab-nll/adapt",
        files={"data": ("data.h5", h5_upload(tmp_path, 25), "application/x-hdf5")},
        data={"mode": "finetune", "loss": "nll", "activate": "false", "seed": "4"},
        headers=ADMIN,
    )
    assert r.status_code == 202, r.text
    job = wait_job(client, r.json()["job_id"])
    assert job["state"] == "succeeded" and job["version"] == "v3"
    detail = client.get("/sites/lab-nll", headers=LOCATE).json()
    assert detail["active_version"] == "v1" and len(detail["versions"]) == 3
    # raw HDF5 body with options in the query
    r = client.post(
        "/sites/other/adapt?mode=head&val_fraction=0.3",
        content=h5_upload(tmp_path, 25),
        headers={**ADMIN, "Content-Type": "application/x-hdf5"},
    )
    assert r.status_code == 202, r.text
    assert wait_job(client, r.json()["job_id"])["state"] == "succeeded"


def test_validation_before_queueing(client: TestClient, tmp_path: Path) -> None:
    csi, pos = labelled(30)
    bad = csi.copy()
    bad[3, 1, 2, 0] = np.nan

    def post_json(doc: dict[str, Any]) -> Any:
        body = json.dumps(doc)  # allows NaN, as a careless client would send
        headers = {**ADMIN, "Content-Type": "application/json"}
        return client.post("/sites/fresh/adapt", content=body, headers=headers)

    r = post_json({"csi": bad.tolist(), "pos": pos.tolist()})
    assert r.status_code == 422 and "NaN" in r.json()["error"]["message"]
    r = post_json({"csi": csi[:5].tolist(), "pos": pos[:5].tolist()})
    assert r.status_code == 422 and r.json()["error"]["detail"]["min_samples"] == 10
    r = post_json({"csi": csi.tolist()})
    assert r.status_code == 422 and "pos" in r.json()["error"]["message"]
    r = post_json({"csi": csi[:, :4].tolist(), "pos": pos.tolist()})
    assert r.status_code == 422 and "shape" in r.json()["error"]["message"]
    r = post_json({"csi": csi.tolist(), "pos": pos[:20].tolist()})
    assert r.status_code == 422 and "lengths must match" in r.json()["error"]["message"]
    r = post_json({"csi": csi.tolist(), "pos": pos.tolist(), "options": {"mode": "magic"}})
    assert r.status_code == 422 and r.json()["error"]["detail"][0]["loc"] == ["mode"]
    r = post_json({"csi": csi.tolist(), "pos": pos.tolist(), "options": {"augment_copies": 17}})
    detail = r.json()["error"]["detail"][0]
    assert r.status_code == 422 and detail["loc"] == ["augment_copies"] and "16" in detail["msg"]
    r = client.post("/sites/BAD!/adapt", json={"csi": [], "pos": []}, headers=ADMIN)
    assert r.status_code == 422
    r = client.post(
        "/sites/fresh/adapt",
        files={"data": ("x.h5", b"not hdf5 at all", "application/x-hdf5")},
        headers=ADMIN,
    )
    assert r.status_code == 422 and "HDF5" in r.json()["error"]["message"]
    r = client.post("/sites/fresh/adapt", files={"other": ("x", b"1")}, headers=ADMIN)
    assert r.status_code == 422 and "'data'" in r.json()["error"]["message"]
    r = client.post(
        "/sites/fresh/adapt", content=b"x", headers={**ADMIN, "Content-Type": "text/csv"}
    )
    assert r.status_code == 415
    assert client.get("/jobs", headers=ADMIN).json()["jobs"] == []  # nothing was queued
    assert not list((tmp_path / "jobs" / "uploads").iterdir())  # temp uploads removed


def test_upload_limit(make_settings: Callable[..., Settings], tmp_path: Path) -> None:
    with TestClient(create_app(make_settings(max_upload_bytes=50_000))) as c:
        r = c.post(
            "/sites/fresh/adapt",
            files={"data": ("data.h5", h5_upload(tmp_path, 30), "application/x-hdf5")},
            headers=ADMIN,
        )
        assert r.status_code == 413 and r.json()["error"]["detail"]["limit_bytes"] == 50_000
        uploads = tmp_path / "jobs" / "uploads"
        assert not uploads.exists() or not list(uploads.iterdir())


def test_one_job_per_site_and_global_limit(
    make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_EPOCH_S", "0.5")
    csi, pos = labelled(12)
    doc = {"csi": csi.tolist(), "pos": pos.tolist()}
    with TestClient(create_app(make_settings(max_concurrent_jobs=2))) as c:
        first = c.post("/sites/a/adapt", json=doc, headers=ADMIN)
        assert first.status_code == 202
        r = c.post("/sites/a/adapt", json=doc, headers=ADMIN)
        assert (
            r.status_code == 409 and r.json()["error"]["detail"]["job_id"] == first.json()["job_id"]
        )
        assert c.delete("/sites/a", headers=ADMIN).status_code == 409
        assert c.post("/sites/b/adapt", json=doc, headers=ADMIN).status_code == 202
        r = c.post("/sites/c/adapt", json=doc, headers=ADMIN)
        assert r.status_code == 429 and r.json()["error"]["detail"]["limit"] == 2
        wait_job(c, first.json()["job_id"])
        assert c.post("/sites/a/adapt", json=doc, headers=ADMIN).status_code == 202


def test_failed_job_keeps_previous_version(client: TestClient) -> None:
    csi, pos = labelled(12)
    doc = {"csi": csi.tolist(), "pos": pos.tolist(), "options": {"seed": FAIL_SEED}}
    r = client.post("/sites/lab-nll/adapt", json=doc, headers=ADMIN)
    job = wait_job(client, r.json()["job_id"])
    assert job["state"] == "failed" and "on purpose" in job["error"]
    assert client.get("/sites/lab-nll", headers=LOCATE).json()["active_version"] == "v1"
    text = client.get("/metrics").text
    assert 'csipos_adapt_jobs_total{outcome="failed"} 1.0' in text


def test_killed_worker_leaves_previous_version_serving(
    make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("FAKE_EPOCHS", "100")
    monkeypatch.setenv("FAKE_EPOCH_S", "0.2")
    csi, pos = labelled(12)
    settings = make_settings()
    with TestClient(create_app(settings)) as c:
        r = c.post(
            "/sites/lab-nll/adapt", json={"csi": csi.tolist(), "pos": pos.tolist()}, headers=ADMIN
        )
        job_id = r.json()["job_id"]
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            job = c.get(f"/jobs/{job_id}", headers=ADMIN).json()
            if job["state"] == "running" and (job["progress"]["epoch"] or 0) >= 1:
                break
            time.sleep(0.1)
        assert job["worker_pid"] and job["worker_pid"] != os.getpid()
        os.kill(job["worker_pid"], signal.SIGKILL)
        job = wait_job(c, job_id, timeout=20)
        assert job["state"] == "failed" and "abnormally" in job["error"]
        one = {"site": "lab-nll", "csi": csi[:1].tolist()}
        r = c.post("/locate", json=one, headers=LOCATE)
        assert r.status_code == 200 and r.json()["model_version"] == "v1"
        # the pool is replaced: the next job runs
        monkeypatch.setenv("FAKE_EPOCHS", "1")
        r = c.post(
            "/sites/lab-nll/adapt", json={"csi": csi.tolist(), "pos": pos.tolist()}, headers=ADMIN
        )
        assert r.status_code == 202
        assert wait_job(c, r.json()["job_id"])["state"] == "succeeded"
    # records survive a restart
    with TestClient(create_app(settings)) as c:
        assert c.get(f"/jobs/{job_id}", headers=ADMIN).json()["state"] == "failed"
        assert c.get("/jobs/nope", headers=ADMIN).status_code == 422
        assert c.get("/jobs/" + "0" * 32, headers=ADMIN).status_code == 404


def test_training_budget_from_settings_reaches_the_trainer(
    make_settings: Callable[..., Settings],
) -> None:
    csi, pos = labelled(12)
    options = {"seed": 5, "val_fraction": 0.3, "calibrate_sigma": False, "augment_copies": 1}
    doc = {"csi": csi.tolist(), "pos": pos.tolist(), "options": options}
    settings = make_settings(
        adapt_max_epochs=7,
        adapt_patience=3,
        adapt_batch_size=16,
        adapt_min_steps=40,
        adapt_max_steps=90,
        adapt_threads=1,
    )
    with TestClient(create_app(settings)) as c:
        r = c.post("/sites/budget/adapt", json=doc, headers=ADMIN)
        assert r.status_code == 202, r.text
        assert r.json()["job"]["train"] == {
            "epochs": 7,
            "min_steps": 40,
            "max_steps": 90,
            "patience": 3,
            "batch_size": 16,
            "threads": 1,
        }
        assert r.json()["job"]["options"]["mode"] == "auto"  # the default target mode
        job = wait_job(c, r.json()["job_id"])
    assert job["state"] == "succeeded", job
    m = job["metrics"]
    assert (m["config_epochs"], m["config_patience"], m["config_batch_size"]) == (7, 3, 16)
    assert (m["config_min_steps"], m["config_max_steps"]) == (40, 90)
    assert m["threads"] == 1
    # the request's options still decide seed and validation fraction
    assert m["config_seed"] == 5 and m["config_val_fraction"] == pytest.approx(0.3)
    assert m["config_calibrate_sigma"] is False
    assert m["config_augment_copies"] == 1


def test_backbone_option_takes_name_and_version_refs(
    make_settings: Callable[..., Settings],
) -> None:
    csi, pos = labelled(12)
    with TestClient(create_app(make_settings())) as c:
        for ref, status in (("meml:v2", 202), ("meml", 202), ("meml:v0", 422), ("../x", 422)):
            options = {"backbone": ref, "mode": "gradual-paper"}
            doc = {"csi": csi.tolist(), "pos": pos.tolist(), "options": options}
            site = f"ref-{status}-{len(ref)}"
            r = c.post(f"/sites/{site}/adapt", json=doc, headers=ADMIN)
            assert r.status_code == status, r.text
            if status == 202:
                job = wait_job(c, r.json()["job_id"])
                assert job["metrics"]["backbone_ref"] == ref
                assert job["metrics"]["mode"] == "gradual-paper"
            else:
                assert r.json()["error"]["detail"][0]["loc"] == ["backbone"]
