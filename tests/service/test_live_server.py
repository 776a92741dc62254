"""Behaviour that only a real `csipos serve` on loopback shows: a full disk, a refused
upload the client still hears about, a keep-alive connection that survives errors, and
a site that is loading rather than missing."""

from __future__ import annotations

import os
import resource
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tests.service.conftest import ADMIN, LOCATE, Server, csi_batch
from tests.service.jobs.test_adapt_jobs import labelled
from tests.service.models import publish_linear
from tests.service.test_adaptation import good_file
from training.repository import ModelRepository

pytestmark = pytest.mark.timeout(90)


def _small_files() -> None:
    # Files over 2 MB fail with EFBIG, as writes do on a full disk (Python ignores SIGXFSZ).
    resource.setrlimit(resource.RLIMIT_FSIZE, (2_000_000, 2_000_000))


def test_full_disk_is_503_and_the_connection_survives(
    start_server: Callable[..., Server], tmp_path: Path
) -> None:
    server = start_server(preexec=_small_files)
    upload = good_file(tmp_path / "big.h5", n=400).read_bytes()
    assert len(upload) > 2_000_000
    with httpx.Client(base_url=server.url, timeout=30) as c:
        r = c.post(
            "/sites/fresh/adapt",
            content=upload,
            headers={**ADMIN, "Content-Type": "application/x-hdf5"},
        )
        assert r.status_code == 503, r.text
        assert r.json()["error"]["code"] == "insufficient_storage"
        assert int(r.headers["retry-after"]) > 0
        # bad input on the same keep-alive connection, then good input
        deep = b'{"site": "lab-nll", "csi": ' + b"[" * 5000 + b"]" * 5000 + b"}"
        r = c.post("/locate", content=deep, headers={**LOCATE, "Content-Type": "application/json"})
        assert r.status_code == 400
        one = {"site": "lab-nll", "csi": csi_batch(1).tolist()}
        assert c.post("/locate", json=one, headers=LOCATE).status_code == 200
        assert len(c._transport._pool.connections) == 1  # type: ignore[attr-defined]


def test_refused_upload_answer_reaches_the_client(start_server: Callable[..., Server]) -> None:
    """A 6 MB body without a key: the client reads the 401, not a connection reset."""
    server = start_server()
    body = b"\0" * 6_000_000
    for path in ("/sites/lab-nll/adapt", "/sites/lab-nll/activate"):
        r = httpx.post(
            server.url + path,
            content=body,
            headers={"Content-Type": "application/x-hdf5"},
            timeout=30,
        )
        assert r.status_code == 401, r.text


def test_loading_site_is_503_and_jobs_report_serving(
    start_server: Callable[..., Server], repo: ModelRepository
) -> None:
    # A watcher that polls rarely: only the job view's load makes the site serve at once.
    server = start_server(watch_interval_s=60)
    publish_linear(repo, "late", "nll", seed=1)
    one = {"site": "late", "csi": csi_batch(1).tolist()}
    r = httpx.post(server.url + "/locate", json=one, headers=LOCATE)
    assert r.status_code == 503, r.text
    assert r.json()["error"]["code"] == "loading" and int(r.headers["retry-after"]) >= 1
    r = httpx.post(server.url + "/locate", json={**one, "site": "never"}, headers=LOCATE)
    assert r.status_code == 404

    csi, pos = labelled(12)
    doc = {"csi": csi.tolist(), "pos": pos.tolist(), "options": {"mode": "head"}}
    r = httpx.post(server.url + "/sites/fresh/adapt", json=doc, headers=ADMIN)
    assert r.status_code == 202, r.text
    job_url = server.url + r.json()["url"]
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        job = httpx.get(job_url, headers=ADMIN).json()
        if job["state"] in ("succeeded", "failed"):
            break
        assert job["serving"] is False
        time.sleep(0.2)
    assert job["state"] == "succeeded" and job["serving"] is True, job
    r = httpx.post(server.url + "/locate", json={**one, "site": "fresh"}, headers=LOCATE)
    assert r.status_code == 200 and r.json()["model_version"] == job["version"]


def test_serve_removes_leftovers_of_crashed_publishes(
    start_server: Callable[..., Server], repo: ModelRepository
) -> None:
    """`csipos serve` runs the repository's gc at start (an hour-old temp is a crash's)."""
    stale = repo.root / "sites" / "lab-nll" / ".tmp-v9-dead"
    fresh = repo.root / "sites" / "lab-nll" / ".tmp-v10-running"
    for d in (stale, fresh):
        d.mkdir()
        (d / "model.onnx").write_bytes(b"half")
    old = time.time() - 2 * 3600
    os.utime(stale, (old, old))
    start_server()
    assert not stale.exists() and fresh.exists()
