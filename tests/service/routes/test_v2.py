"""KServe V2 through the real tritonclient against a real uvicorn on loopback."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from tests.service.conftest import LOCATE, csi_batch
from tests.service.models import expected

pytestmark = pytest.mark.timeout(60)  # a real uvicorn process on loopback


@pytest.fixture
def server(start_server: Callable[..., Any]) -> Any:
    return start_server()


def _client(server: Any) -> triton.InferenceServerClient:
    return triton.InferenceServerClient(url=server.url.removeprefix("http://"))


@pytest.mark.parametrize("binary", [True, False])
def test_infer_with_tritonclient(server: Any, binary: bool) -> None:
    client = _client(server)
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("lab-nll", headers=dict(LOCATE))
    meta = client.get_model_metadata("lab-nll", headers=dict(LOCATE))
    assert meta["inputs"][0]["shape"] == [-1, 8, 103, 2] and meta["versions"] == ["v1"]
    csi = csi_batch(4, seed=7)
    inp = triton.InferInput("csi", list(csi.shape), "FP32")
    inp.set_data_from_numpy(csi, binary_data=binary)
    outs = [triton.InferRequestedOutput(n, binary_data=binary) for n in ("position", "sigma")]
    result = client.infer("lab-nll", [inp], outputs=outs, headers=dict(LOCATE), request_id="r1")
    pos, sigma = expected(csi, seed=1, bias=(1.0, 2.0))
    assert np.allclose(result.as_numpy("position"), pos, atol=1e-4)
    assert np.allclose(result.as_numpy("sigma"), sigma, atol=1e-4)
    assert result.get_response()["model_version"] == "v1"
    assert result.get_response()["id"] == "r1"


def test_infer_defaults_and_errors(server: Any) -> None:
    client = _client(server)
    csi = csi_batch(2)
    inp = triton.InferInput("csi", list(csi.shape), "FP32")
    inp.set_data_from_numpy(csi)
    result = client.infer("lab-mse", [inp], headers=dict(LOCATE))  # no outputs: all, binary
    assert result.as_numpy("position").shape == (2, 2) and result.as_numpy("sigma") is None
    with pytest.raises(InferenceServerException, match="no sigma"):
        client.infer(
            "lab-mse", [inp], outputs=[triton.InferRequestedOutput("sigma")], headers=dict(LOCATE)
        )
    with pytest.raises(InferenceServerException):
        client.infer("missing", [inp], headers=dict(LOCATE))
    with pytest.raises(InferenceServerException):
        client.infer("lab-nll", [inp])  # no key
    wrong = triton.InferInput("csi", [2, 8, 100, 2], "FP32")
    wrong.set_data_from_numpy(np.zeros((2, 8, 100, 2), np.float32))
    with pytest.raises(InferenceServerException, match="shape"):
        client.infer("lab-nll", [wrong], headers=dict(LOCATE))
    assert not client.is_model_ready("missing", headers=dict(LOCATE))
