"""The V2 data plane: the same checks, and 4xx answers, for HTTP and gRPC requests."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service import dataplane
from service.errors import InvalidInput, PayloadTooLarge
from tests.service.conftest import LOCATE, csi_batch

ONE = csi_batch(1)


def _infer(client: TestClient, doc: Any, binary: bytes = b"") -> Any:
    body = (doc if isinstance(doc, bytes) else __import__("json").dumps(doc).encode()) + binary
    headers = {**LOCATE, "Content-Type": "application/octet-stream"}
    if binary:
        headers["Inference-Header-Content-Length"] = str(len(body) - len(binary))
    return client.post("/v2/models/lab-nll/infer", content=body, headers=headers)


def _tensor(**over: Any) -> dict[str, Any]:
    t = {"name": "csi", "datatype": "FP32", "shape": [1, 8, 103, 2], "data": ONE.ravel().tolist()}
    return {**t, **over}


@pytest.mark.parametrize(
    ("doc", "words"),
    [
        ({"inputs": [_tensor(parameters="x")]}, "parameters"),
        ({"inputs": [_tensor(shape=[True, 8, 103, 2])]}, "shape"),
        ({"inputs": [_tensor(shape=[1, 8, 103, -2])]}, "shape"),
        ({"inputs": [_tensor(datatype="INT8")]}, "datatype"),
        ({"inputs": [_tensor(name="x")]}, "input"),
        ({"inputs": [_tensor(data=[1.0, 2.0])]}, "shape"),
        ({"inputs": [_tensor(data=["a"] * 1648)]}, "numeric"),
        ({"inputs": [_tensor()], "outputs": "position"}, "outputs"),
        ({"inputs": [_tensor()], "outputs": [{"name": "x"}]}, "output"),
        ({"inputs": [_tensor()], "parameters": ["x"]}, "parameters"),
        ({"inputs": [_tensor(), _tensor()]}, "one input"),
    ],
)
def test_bad_v2_requests_are_422(client: TestClient, doc: Any, words: str) -> None:
    r = _infer(client, doc)
    assert r.status_code == 422, r.text
    assert words in r.json()["error"], r.json()


def test_binary_size_must_match(client: TestClient) -> None:
    raw = ONE.tobytes()
    doc = {"inputs": [_tensor(data=None, parameters={"binary_data_size": len(raw) - 4})]}
    r = _infer(client, doc, raw)
    assert r.status_code == 422 and "binary_data_size" in r.json()["error"]
    doc = {"inputs": [_tensor(data=None, parameters={"binary_data_size": len(raw)})]}
    r = _infer(client, doc, raw)
    assert r.status_code == 200, r.text


def test_input_csi_raw_and_values_agree() -> None:
    raw = dataplane.input_csi(
        "csi", "FP32", [2, 8, 103, 2], max_batch=8, raw=csi_batch(2).tobytes()
    )
    values = dataplane.input_csi("csi", "FP64", (2, 8, 103, 2), max_batch=8, values=csi_batch(2))
    np.testing.assert_array_equal(raw, values)
    assert raw.dtype == np.float32 and raw.flags.c_contiguous
    with pytest.raises(InvalidInput, match="binary tensor size"):
        dataplane.input_csi("csi", "FP32", [1, 8, 103, 2], max_batch=8, raw=b"\0" * 12)
    with pytest.raises(PayloadTooLarge):
        dataplane.input_csi("csi", "FP32", [9, 8, 103, 2], max_batch=8, raw=csi_batch(9).tobytes())
