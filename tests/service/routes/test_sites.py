"""Sites: list, detail, activate (rollback), delete; auth on every admin route."""

from __future__ import annotations

import time

from fastapi.testclient import TestClient

from tests.service.conftest import ADMIN, LOCATE, csi_batch
from tests.service.models import publish_linear
from training.repository import ModelRepository


def _locate_version(client: TestClient, site: str) -> str:
    r = client.post("/locate", json={"site": site, "csi": csi_batch(1).tolist()}, headers=LOCATE)
    assert r.status_code == 200, r.text
    return str(r.json()["model_version"])


def test_list_and_detail(client: TestClient) -> None:
    sites = {s["site"]: s for s in client.get("/sites", headers=LOCATE).json()["sites"]}
    assert set(sites) == {"lab-nll", "lab-mse"}
    assert sites["lab-nll"]["active_version"] == "v1" and sites["lab-nll"]["versions"] == 2
    d = client.get("/sites/lab-nll", headers=LOCATE).json()
    assert [v["version"] for v in d["versions"]] == ["v1", "v2"]
    assert d["versions"][0]["metrics"] == {"val_me": 1.0} and d["sigma_available"] is True
    assert client.get("/sites/nope", headers=LOCATE).status_code == 404
    assert client.get("/sites/..", headers=LOCATE).status_code in (404, 422)


def test_activate_and_rollback(client: TestClient) -> None:
    assert _locate_version(client, "lab-nll") == "v1"
    r = client.post("/sites/lab-nll/activate", json={"version": "v2"}, headers=ADMIN)
    assert r.status_code == 200 and r.json()["serving_version"] == "v2"
    assert _locate_version(client, "lab-nll") == "v2"
    r = client.post("/sites/lab-nll/activate", json={"version": "v1"}, headers=ADMIN)
    assert r.status_code == 200
    assert _locate_version(client, "lab-nll") == "v1"
    r = client.post("/sites/lab-nll/activate", json={"version": "v9"}, headers=ADMIN)
    assert r.status_code == 404 and "v9" in r.json()["error"]["message"]
    r = client.post("/sites/lab-nll/activate", json={"version": "latest"}, headers=ADMIN)
    assert r.status_code == 422
    r = client.post("/sites/lab-nll/activate", json={}, headers=ADMIN)
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_request"


def test_delete(client: TestClient) -> None:
    assert client.delete("/sites/lab-mse", headers=ADMIN).json() == {"deleted": "lab-mse"}
    r = client.post(
        "/locate", json={"site": "lab-mse", "csi": csi_batch(1).tolist()}, headers=LOCATE
    )
    assert r.status_code == 404
    assert client.delete("/sites/lab-mse", headers=ADMIN).status_code == 404


def test_watcher_picks_up_new_version(client: TestClient, repo: ModelRepository) -> None:
    """Another process publishes and activates: this replica switches without a restart."""
    publish_linear(repo, "lab-mse", "mse", seed=9)
    publish_linear(repo, "new-site", "nll", seed=9)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        sites = {s["site"]: s for s in client.get("/sites", headers=LOCATE).json()["sites"]}
        if sites["lab-mse"]["serving_version"] == "v2" and "new-site" in sites:
            break
        time.sleep(0.1)
    assert _locate_version(client, "lab-mse") == "v2"
    assert _locate_version(client, "new-site") == "v1"


def test_broken_new_version_keeps_old_serving(client: TestClient, repo: ModelRepository) -> None:
    def broken(directory, version):  # type: ignore[no-untyped-def]
        (directory / "model.onnx").write_bytes(b"not an onnx model")

    repo.publish_site("lab-mse", broken, loss="mse", parent=None)
    time.sleep(0.8)
    assert _locate_version(client, "lab-mse") == "v1"


def test_auth(client: TestClient) -> None:
    one = {"site": "lab-nll", "csi": csi_batch(1).tolist()}
    r = client.post("/locate", json=one)
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    assert (
        client.post("/locate", json=one, headers={"Authorization": "Bearer wrong"}).status_code
        == 401
    )
    assert client.post("/locate", json=one, headers=ADMIN).status_code == 200  # admin may locate
    cases: list[tuple[str, str, dict[str, object] | None]] = [
        ("POST", "/sites/lab-nll/activate", {"version": "v2"}),
        ("DELETE", "/sites/lab-nll", None),
        ("POST", "/sites/lab-nll/adapt", {"csi": [], "pos": []}),
        ("GET", "/jobs/abc", None),
    ]
    for method, path, body in cases:
        r = client.request(method, path, json=body, headers=LOCATE)
        assert r.status_code == 403, (path, r.text)
        assert client.request(method, path, json=body).status_code == 401
    assert _locate_version(client, "lab-nll") == "v1"  # nothing changed
    assert client.get("/sites", headers=LOCATE).status_code == 200
    assert client.get("/sites").status_code == 401
