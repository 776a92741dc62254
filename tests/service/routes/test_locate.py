"""POST /locate: JSON and npy, single and batch, sigma and MSE-only sites, errors."""

from __future__ import annotations

import io
import json

import numpy as np
from fastapi.testclient import TestClient

from tests.service.conftest import LOCATE, csi_batch
from tests.service.models import expected


def test_single_json_matches_model(client: TestClient) -> None:
    csi = csi_batch(1)
    r = client.post("/locate", json={"site": "lab-nll", "csi": csi[0].tolist()}, headers=LOCATE)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["site"] == "lab-nll" and body["model_version"] == "v1"
    pos, sigma = expected(csi, seed=1, bias=(1.0, 2.0))
    p = body["positions"][0]
    assert np.allclose([p["x"], p["y"]], pos[0], atol=1e-4)
    assert np.allclose([p["sigma_x"], p["sigma_y"]], sigma[0], atol=1e-4)
    assert body["sigma_available"] is True and "ellipse" not in p


def test_batch_npy_and_ellipse(client: TestClient) -> None:
    csi = csi_batch(5, seed=4)
    buf = io.BytesIO()
    np.save(buf, csi)
    r = client.post(
        "/locate?site=lab-nll&ellipse_confidence=0.95",
        content=buf.getvalue(),
        headers={**LOCATE, "Content-Type": "application/x-npy"},
    )
    assert r.status_code == 200, r.text
    positions = r.json()["positions"]
    pos, sigma = expected(csi, seed=1, bias=(1.0, 2.0))
    assert len(positions) == 5
    got = np.array([[p["x"], p["y"]] for p in positions])
    assert np.allclose(got, pos, atol=1e-4)
    e = positions[0]["ellipse"]
    k = np.sqrt(-2 * np.log(0.05))
    assert np.isclose(e["semi_axis_x"], k * sigma[0, 0], rtol=1e-4)
    assert np.isclose(e["semi_major"], k * sigma[0].max(), rtol=1e-4)
    assert e["confidence"] == 0.95


def test_mse_site_says_it_has_no_sigma(client: TestClient) -> None:
    csi = csi_batch(2)
    r = client.post(
        "/locate",
        json={"site": "lab-mse", "csi": csi.tolist(), "ellipse_confidence": 0.9},
        headers=LOCATE,
    )
    assert r.status_code == 200
    body = r.json()
    assert body["sigma_available"] is False and "MSE" in body["note"]
    assert all(p["sigma_x"] is None and "ellipse" not in p for p in body["positions"])


def _error(r: object, status: int, code: str | None = None) -> dict[str, object]:
    assert r.status_code == status, r.text  # type: ignore[attr-defined]
    err = r.json()["error"]  # type: ignore[attr-defined]
    assert set(err) == {"code", "message", "detail"}
    if code:
        assert err["code"] == code
    return err  # type: ignore[no-any-return]


def test_errors(client: TestClient) -> None:
    one = csi_batch(1)[0].tolist()
    _error(client.post("/locate", json={"site": "nope", "csi": one}, headers=LOCATE), 404)
    _error(client.post("/locate", json={"site": "../etc", "csi": one}, headers=LOCATE), 422)
    err = _error(
        client.post("/locate", json={"site": "lab-nll", "csi": [[1.0, 2.0]]}, headers=LOCATE), 422
    )
    assert err["detail"]["got"] == [1, 2]  # type: ignore[index]
    bad = csi_batch(2)
    bad[1, 0, 0, 0] = np.nan
    npy = io.BytesIO()
    np.save(npy, bad)
    err = _error(
        client.post(
            "/locate?site=lab-nll",
            content=npy.getvalue(),
            headers={**LOCATE, "Content-Type": "application/x-npy"},
        ),
        422,
    )
    assert "NaN" in str(err["message"]) and err["detail"]["fingerprints"] == [1]  # type: ignore[index]
    # The same NaN as JSON (Python's json.dumps writes a bare NaN): the same precise 422.
    body = json.dumps({"site": "lab-nll", "csi": bad.tolist()}).encode()
    assert b"NaN" in body
    err = _error(
        client.post(
            "/locate", content=body, headers={**LOCATE, "Content-Type": "application/json"}
        ),
        422,
    )
    assert "NaN" in str(err["message"]) and err["detail"]["fingerprints"] == [1]  # type: ignore[index]
    _error(
        client.post(
            "/locate", content=b"{", headers={**LOCATE, "Content-Type": "application/json"}
        ),
        400,
    )
    _error(
        client.post(
            "/locate?site=lab-nll",
            content=b"garbage",
            headers={**LOCATE, "Content-Type": "application/x-npy"},
        ),
        400,
    )
    _error(
        client.post("/locate", content=b"x", headers={**LOCATE, "Content-Type": "text/plain"}),
        415,
    )
    _error(
        client.post(
            "/locate", json={"site": "lab-nll", "csi": one, "ellipse_confidence": 2}, headers=LOCATE
        ),
        422,
    )
    _error(client.post("/locate", json={"csi": one}, headers=LOCATE), 422)


def test_limits(make_settings: object) -> None:
    from service.app import create_app

    settings = make_settings(max_batch=3, max_body_bytes=200_000)  # type: ignore[operator]
    with TestClient(create_app(settings)) as c:
        r = c.post(
            "/locate", json={"site": "lab-nll", "csi": csi_batch(4).tolist()}, headers=LOCATE
        )
        assert r.status_code == 413 and r.json()["error"]["detail"]["max_batch"] == 3
        big = csi_batch(20).tolist()
        r = c.post("/locate", json={"site": "lab-nll", "csi": big}, headers=LOCATE)
        assert r.status_code == 413 and r.json()["error"]["detail"]["limit_bytes"] == 200_000
