"""KServe V2 over gRPC on a multi-BS site: one input per BS, fused outputs (tritonclient)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as triton
from tritonclient.utils import InferenceServerException

from tests.service.conftest import LOCATE_KEY, csi_batch, free_port
from tests.service.models import expected, publish_linear_multi_bs
from training import fusion
from training.repository import ModelRepository

pytestmark = pytest.mark.timeout(60)  # a real uvicorn process on loopback

LOCATE = {"authorization": f"Bearer {LOCATE_KEY}"}
STATIONS = {"bs0": (11, (1.0, 2.0)), "bs1": (12, (3.0, 1.0)), "bs2": (13, (2.0, 5.0))}


def test_one_input_per_bs(repo: ModelRepository, start_server: Callable[..., Any]) -> None:
    publish_linear_multi_bs(repo, "hall", "nll", STATIONS)
    port = free_port()
    start_server(grpc_port=port)
    client = triton.InferenceServerClient(url=f"127.0.0.1:{port}")
    meta = client.get_model_metadata("hall", headers=LOCATE)
    assert [i.name for i in meta.inputs] == ["csi_bs0", "csi_bs1", "csi_bs2"]
    assert [list(o.shape) for o in meta.outputs] == [[-1, 2], [-1, 2], [-1, 2, 2]]

    csi = {"bs1": csi_batch(2, seed=3), "bs2": csi_batch(2, seed=4)}
    inputs = []
    for bs, arr in csi.items():
        inp = triton.InferInput(f"csi_{bs}", list(arr.shape), "FP32")
        inp.set_data_from_numpy(arr)
        inputs.append(inp)
    result = client.infer("hall", inputs, headers=LOCATE)
    est = {bs: expected(arr, *STATIONS[bs]) for bs, arr in csi.items()}
    mean, cov = fusion.fuse(
        np.stack([est[bs][0] for bs in csi]),
        np.stack([fusion.diag_cov(est[bs][1]) for bs in csi]),
    )
    assert np.allclose(result.as_numpy("position"), mean, atol=1e-4)
    assert np.allclose(result.as_numpy("covariance"), cov, rtol=1e-4)

    bad = triton.InferInput("csi_nope", [1, 8, 103, 2], "FP32")
    bad.set_data_from_numpy(csi_batch(1))
    with pytest.raises(InferenceServerException, match="unknown input 'csi_nope'") as exc:
        client.infer("hall", [bad], headers=LOCATE)
    assert "INVALID_ARGUMENT" in str(exc.value.status())
