"""Inputs that once answered 500: each now gets a 4xx in our error shape (issue 11).

The TestClient raises any exception that escapes the app, so each of these also checks
that nothing reached the server's last-resort handler.
"""

from __future__ import annotations

import gzip
import io
import json
import zlib
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.config import Settings
from tests.service.conftest import ADMIN, LOCATE, csi_batch


@pytest.fixture
def strict(settings: Settings) -> Iterator[TestClient]:
    """A client that fails the test if an exception escapes the app."""
    with TestClient(create_app(settings), raise_server_exceptions=True) as c:
        yield c


def error_of(r: Any, status: int, code: str | None = None) -> dict[str, Any]:
    assert r.status_code == status, r.text
    body = r.json()
    err = body["error"] if isinstance(body["error"], dict) else body
    if code is not None:
        assert err["code"] == code, err
    return err  # type: ignore[no-any-return]


def _npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr)
    return buf.getvalue()


def test_nan_ellipse_confidence(strict: TestClient) -> None:
    one = {"site": "lab-nll", "csi": csi_batch(1)[0].tolist()}
    for value in ("nan", "inf", "-inf"):
        r = strict.post(f"/locate?ellipse_confidence={value}", json=one, headers=LOCATE)
        err = error_of(r, 422, "invalid_input")
        assert err["detail"]["got"] in ("nan", "inf", "-inf")


def _deep(levels: int) -> bytes:
    return b"[" * levels + b"1" + b"]" * levels


@pytest.mark.parametrize("levels", [1_000, 5_000, 100_000])
def test_deeply_nested_json(strict: TestClient, levels: int) -> None:
    body = b'{"site": "lab-nll", "csi": ' + _deep(levels) + b"}"
    json_headers = {"Content-Type": "application/json"}
    r = strict.post("/locate", content=body, headers={**LOCATE, **json_headers})
    assert r.status_code in (400, 422), r.text
    adapt = b'{"csi": ' + _deep(levels) + b', "pos": []}'
    r = strict.post("/sites/fresh/adapt", content=adapt, headers={**ADMIN, **json_headers})
    assert r.status_code in (400, 422), r.text


def _infer(client: TestClient, doc: dict[str, Any]) -> Any:
    return client.post("/v2/models/lab-nll/infer", json=doc, headers=LOCATE)


def test_v2_malformed_requests(strict: TestClient) -> None:
    csi = csi_batch(1)
    good = {"name": "csi", "datatype": "FP32", "shape": [1, 8, 103, 2]}
    data = csi.reshape(-1).tolist()
    huge = {**good, "shape": [4611686018427387904, 4], "data": [1.0] * 4}
    error_of(_infer(strict, {"inputs": [huge]}), 413, "payload_too_large")
    error_of(_infer(strict, {"inputs": [{**good, "data": data}], "outputs": 5}), 422)
    error_of(_infer(strict, {"inputs": [{**good, "data": data}], "parameters": "x"}), 422)
    error_of(_infer(strict, {"inputs": [{**good, "data": data, "parameters": "x"}]}), 422)
    doc = {"inputs": [{**good, "data": data}], "outputs": [{"name": "position", "parameters": "x"}]}
    error_of(_infer(strict, doc), 422)
    error_of(_infer(strict, {"inputs": [{**good, "data": data}], "outputs": ["x"]}), 422)
    r = strict.post(
        "/v2/models/lab-nll/infer", content=b"[1, 2]", headers={**LOCATE, "Content-Type": "a/b"}
    )
    error_of(r, 422)
    assert _infer(strict, {"inputs": [{**good, "data": data}]}).status_code == 200


def test_an_all_zero_fingerprint_is_rejected_not_answered_with_nulls(strict: TestClient) -> None:
    """No channel measured: the exported models' timing removal gives NaN on it (the
    answer was 200 with null positions). /locate and V2 alike say which and why."""
    csi = csi_batch(3)
    csi[1] = 0.0
    r = strict.post("/locate", json={"site": "lab-nll", "csi": csi.tolist()}, headers=LOCATE)
    err = error_of(r, 422, "invalid_input")
    assert "all zeros" in err["message"] and err["detail"]["fingerprints"] == [1]
    v2 = {"name": "csi", "datatype": "FP32", "shape": [3, 8, 103, 2], "data": csi.ravel().tolist()}
    err = error_of(_infer(strict, {"inputs": [v2]}), 422, "invalid_input")
    assert err["detail"]["fingerprints"] == [1]
    one = {"site": "lab-nll", "csi": csi[0].tolist()}
    assert strict.post("/locate", json=one, headers=LOCATE).status_code == 200


def test_gzip_and_deflate_bodies_are_inflated_with_a_cap(make_settings: Any) -> None:
    settings = make_settings(max_body_bytes=1_000_000)
    with TestClient(create_app(settings), raise_server_exceptions=True) as c:
        doc = {"inputs": [{"name": "csi", "datatype": "FP32", "shape": [1, 8, 103, 2]}]}
        doc["inputs"][0]["data"] = csi_batch(1).reshape(-1).tolist()
        raw = json.dumps(doc).encode()
        for encoding, packed in (("gzip", gzip.compress(raw)), ("deflate", zlib.compress(raw))):
            headers = {**LOCATE, "Content-Type": "application/json", "Content-Encoding": encoding}
            r = c.post("/v2/models/lab-nll/infer", content=packed, headers=headers)
            assert r.status_code == 200, r.text
        # 50 MB of zeros in a 50 KB body: refused once the decoded bytes pass the limit
        bomb = gzip.compress(b" " * 50_000_000, compresslevel=9)
        assert len(bomb) < 100_000
        headers = {**LOCATE, "Content-Type": "application/json", "Content-Encoding": "gzip"}
        for path in ("/v2/models/lab-nll/infer", "/locate"):
            err = error_of(c.post(path, content=bomb, headers=headers), 413)
            assert err["detail"]["limit_bytes"] == 1_000_000
        error_of(c.post("/locate", content=b"\x1f\x8bnot gzip", headers=headers), 400)
        error_of(c.post("/locate", content=gzip.compress(raw)[:-20], headers=headers), 400)
        headers["Content-Encoding"] = "br"
        error_of(c.post("/locate", content=raw, headers=headers), 415)


@pytest.mark.parametrize("dtype", [np.complex64, np.complex128, np.bool_, np.int32, np.float16])
def test_npy_dtype_must_be_real_float(strict: TestClient, dtype: Any) -> None:
    body = _npy(csi_batch(2).astype(dtype))
    headers = {**LOCATE, "Content-Type": "application/x-npy"}
    err = error_of(strict.post("/locate?site=lab-nll", content=body, headers=headers), 422)
    assert err["detail"]["expected"] == ["float32", "float64"]
    for ok in (np.float32, np.float64, ">f4"):
        body = _npy(csi_batch(2).astype(ok))
        r = strict.post("/locate?site=lab-nll", content=body, headers=headers)
        assert r.status_code == 200, r.text


def test_trace_and_unknown_methods_say_what_is_allowed(strict: TestClient) -> None:
    r = strict.request("TRACE", "/locate")
    assert r.status_code == 405 and r.headers["allow"] == "POST"
    assert r.json()["error"]["code"] == "method_not_allowed"
    # every route on the path counts, not only the first that matched
    assert strict.options("/sites/lab-nll").headers["allow"] == "DELETE, GET"
    assert strict.head("/healthz").headers["allow"] == "GET"


def test_no_filesystem_path_in_errors(strict: TestClient, settings: Settings) -> None:
    for r in (
        strict.get("/sites/nope", headers=LOCATE),
        strict.post("/sites/nope/activate", json={"version": "v1"}, headers=ADMIN),
        strict.delete("/sites/nope", headers=ADMIN),
        strict.post("/sites/lab-nll/activate", json={"version": "v9"}, headers=ADMIN),
    ):
        assert r.status_code == 404, r.text
        assert str(settings.model_dir) not in r.text and "/tmp" not in r.text


@pytest.mark.timeout(60)
def test_site_lists_behind_a_setting(start_server: Any) -> None:
    # A fresh process: the metrics registry is per process.
    server = start_server(expose_site_lists="false")
    one = {"site": "lab-nll", "csi": csi_batch(1).tolist()}
    assert httpx.post(server.url + "/locate", json=one, headers=LOCATE).status_code == 200
    assert httpx.get(server.url + "/readyz").json() == {"status": "ready", "sites_loaded": 2}
    text = httpx.get(server.url + "/metrics").text
    assert "lab-nll" not in text and 'csipos_locate_predictions_total{site="all"} 1.0' in text


def test_site_lists_shown_by_default(strict: TestClient) -> None:
    assert strict.get("/readyz").json()["sites"] == ["lab-mse", "lab-nll"]


def test_admin_body_is_not_read_before_the_key(strict: TestClient) -> None:
    big = b"x" * 9_000_000  # over the 8 MiB body limit: refused from the header alone
    r = strict.post("/sites/lab-nll/activate", content=big)
    error_of(r, 413)
    r = strict.post("/sites/lab-nll/activate", content=b'{"version": "v2"}')
    error_of(r, 401)
    r = strict.post("/sites/lab-nll/activate", content=b'{"version": "v2"}', headers=LOCATE)
    error_of(r, 403)
    r = strict.post("/sites/lab-nll/activate", content=b"[", headers=ADMIN)
    error_of(r, 400)
    r = strict.post("/sites/lab-nll/activate", json={"version": ""}, headers=ADMIN)
    error_of(r, 422, "invalid_request")
