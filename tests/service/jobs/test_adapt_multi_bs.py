"""A 3-BS site through the API with the real trainer: one upload, one model per BS,
per-BS metrics in GET /sites/{id}, then /locate with a subset of the BSs."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.config import Settings
from tests.service.conftest import ADMIN, ADMIN_KEY, LOCATE, LOCATE_KEY
from tests.service.jobs.test_adapt_jobs import wait_job
from tests.training.toychannel import toy_site
from training.checkpoint import save_backbone
from training.data.fingerprints import write_environment
from training.data.site import write_site
from training.nets import Backbone
from training.repository import ModelRepository

pytestmark = pytest.mark.timeout(300)  # spawned training workers on a busy machine


def _settings(tmp_path: Path) -> Settings:
    repo = ModelRepository(tmp_path / "models")
    save_backbone(repo, "meml", Backbone(seed=0), loss="mse")
    repo.set_default_backbone("meml")
    return Settings(
        model_dir=repo.root,
        job_dir=tmp_path / "jobs",
        admin_keys=[ADMIN_KEY],
        locate_keys=[LOCATE_KEY],
        watch_interval_s=0.2,
        inference_threads=2,
        min_adapt_samples=10,
        log_level="WARNING",
        adapt_max_epochs=2,
        adapt_min_steps=0,
        adapt_patience=1,
        adapt_threads=1,
    )


def _upload(c: TestClient, site: str, path: Path, **fields: str) -> Any:
    return c.post(
        f"/sites/{site}/adapt",
        files={"data": ("site.h5", path.read_bytes(), "application/x-hdf5")},
        data={"mode": "head", "seed": "0", "augment_copies": "0", **fields},
        headers=ADMIN,
    )


def test_three_bs_upload_adapts_every_bs_and_locates(tmp_path: Path) -> None:
    site = toy_site(120, seed=9, drop=0.1)
    path = tmp_path / "hall.h5"
    write_site(path, "hall", site)
    with TestClient(create_app(_settings(tmp_path)), raise_server_exceptions=False) as c:
        r = _upload(c, "hall", path)
        assert r.status_code == 202, r.text
        job = wait_job(c, r.json()["job_id"], timeout=240)
        assert job["state"] == "succeeded", job
        assert job["samples"] == len(site) and set(job["metrics"]["bs"]) == set(site.bs_ids)
        assert job["metrics"]["chosen_mode"] == "bs0=head,bs1=head,bs2=head"
        detail = c.get("/sites/hall", headers=ADMIN).json()
        version = detail["versions"][0]
        assert version["base_stations"] == ["bs0", "bs1", "bs2"]
        assert all(version["metrics"]["bs"][bs]["me"] > 0 for bs in site.bs_ids)
        csi = {bs: site.station(bs).csi[:4].tolist() for bs in ("bs0", "bs2")}
        deadline = time.monotonic() + 15
        while True:
            r = c.post("/locate", json={"site": "hall", "csi": csi}, headers=LOCATE)
            if r.status_code == 200 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["base_stations"] == ["bs0", "bs2"] and len(body["positions"]) == 4
        cov = np.array(body["positions"][0]["cov"])
        assert cov.shape == (2, 2) and np.linalg.eigvalsh(cov).min() > 0


def test_bad_multi_bs_uploads_are_422(tmp_path: Path) -> None:
    few = toy_site(60, seed=1, drop=0.0)
    few.stations["bs1"] = few.subset(np.arange(5)).stations["bs1"]  # bs1 heard 5 UEs
    few_path = tmp_path / "few.h5"
    write_site(few_path, "hall", few)
    moved = toy_site(30, seed=2, drop=0.0)
    moved_path = tmp_path / "moved.h5"
    for bs, st in moved.stations.items():
        d = st.data.subset(slice(None))
        d.pos = d.pos + (0.5 if bs == "bs2" else 0.0)
        write_environment(moved_path, f"g/{bs}", d, st.meta)
    two_labs = tmp_path / "labs.h5"  # one-BS scenes side by side: not one site
    for k, bs in enumerate(("lab-a", "lab-b")):
        d = toy_site(30, seed=10 + k, stations={"x": (0.0, 0.0)}, drop=0.0).station("x")
        write_environment(two_labs, bs, d, moved.stations["bs0"].meta)
    with TestClient(create_app(_settings(tmp_path)), raise_server_exceptions=False) as c:
        r = _upload(c, "hall", two_labs)
        assert (
            r.status_code == 422 and "name one with the 'env' field" in r.json()["error"]["message"]
        )
        r = _upload(c, "lab", two_labs, env="lab-a")  # naming one: a single-BS site
        assert r.status_code == 202, r.text
        assert wait_job(c, r.json()["job_id"], timeout=240)["state"] == "succeeded"
        r = _upload(c, "hall", few_path)
        assert r.status_code == 422 and "base station 'bs1' has 5" in r.json()["error"]["message"]
        r = _upload(c, "hall", moved_path, env="g")
        assert r.status_code == 422, r.text
        assert "differs from the other base stations" in r.json()["error"]["message"]
        r = _upload(c, "hall", moved_path, env="nope")
        assert r.status_code == 422 and "no environment 'nope'" in r.json()["error"]["message"]
