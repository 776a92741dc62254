"""KServe V2 over HTTP on a multi-BS site: one input per BS, fused outputs (tritonclient)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from tests.service.conftest import LOCATE, csi_batch
from tests.service.models import expected, publish_linear_multi_bs
from training import fusion
from training.repository import ModelRepository

pytestmark = pytest.mark.timeout(60)  # a real uvicorn process on loopback

STATIONS = {"bs0": (11, (1.0, 2.0)), "bs1": (12, (3.0, 1.0)), "bs2": (13, (2.0, 5.0))}


@pytest.fixture
def server(repo: ModelRepository, start_server: Callable[..., Any]) -> Any:
    publish_linear_multi_bs(repo, "hall", "nll", STATIONS)
    return start_server()


def _fused(csi: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    est = {bs: expected(arr, *STATIONS[bs]) for bs, arr in csi.items()}
    means = np.stack([est[bs][0] for bs in csi])
    covs = np.stack([fusion.diag_cov(est[bs][1]) for bs in csi])
    return fusion.fuse(means, covs)


@pytest.mark.parametrize("binary", [True, False])
def test_one_input_per_bs(server: Any, binary: bool) -> None:
    client = triton.InferenceServerClient(url=server.url.removeprefix("http://"))
    meta = client.get_model_metadata("hall", headers=dict(LOCATE))
    assert [i["name"] for i in meta["inputs"]] == ["csi_bs0", "csi_bs1", "csi_bs2"]
    assert [o["name"] for o in meta["outputs"]] == ["position", "sigma", "covariance"]
    assert meta["parameters"]["base_stations"] == ["bs0", "bs1", "bs2"]
    csi = {"bs2": csi_batch(3, seed=1), "bs0": csi_batch(3, seed=2)}
    inputs = []
    for bs, arr in csi.items():
        inp = triton.InferInput(f"csi_{bs}", list(arr.shape), "FP32")
        inp.set_data_from_numpy(arr, binary_data=binary)
        inputs.append(inp)
    outs = [
        triton.InferRequestedOutput(n, binary_data=binary)
        for n in ("position", "sigma", "covariance")
    ]
    result = client.infer("hall", inputs, outputs=outs, headers=dict(LOCATE))
    mean, cov = _fused(csi)
    assert np.allclose(result.as_numpy("position"), mean, atol=1e-4)
    assert np.allclose(result.as_numpy("covariance"), cov, rtol=1e-4)
    assert np.allclose(result.as_numpy("sigma") ** 2, np.diagonal(cov, axis1=1, axis2=2), rtol=1e-4)


def test_bad_inputs_are_refused(server: Any) -> None:
    client = triton.InferenceServerClient(url=server.url.removeprefix("http://"))

    def infer(named: dict[str, np.ndarray]) -> Any:
        inputs = []
        for name, arr in named.items():
            inp = triton.InferInput(name, list(arr.shape), "FP32")
            inp.set_data_from_numpy(arr)
            inputs.append(inp)
        return client.infer("hall", inputs, headers=dict(LOCATE))

    with pytest.raises(InferenceServerException, match="unknown input 'csi_bs7'"):
        infer({"csi_bs7": csi_batch(1)})
    with pytest.raises(InferenceServerException, match="unknown input 'csi'"):
        infer({"csi": csi_batch(1)})
    with pytest.raises(InferenceServerException, match="same batch size"):
        infer({"csi_bs0": csi_batch(1), "csi_bs1": csi_batch(2)})
    with pytest.raises(InferenceServerException, match="wrong shape"):
        infer({"csi_bs0": np.zeros((1, 8, 100, 2), dtype=np.float32)})
    assert infer({"csi_bs1": csi_batch(2)}).as_numpy("covariance").shape == (2, 2, 2)
