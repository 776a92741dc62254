"""KServe V2 over gRPC through the real tritonclient.grpc against a real `csipos serve`."""

from __future__ import annotations

import queue
from collections.abc import Callable
from typing import Any

import grpc
import httpx
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as triton
from tritonclient.utils import InferenceServerException

from service import healthcheck
from service.grpc import inference_pb2 as pb
from tests.service.conftest import ADMIN_KEY, LOCATE_KEY, csi_batch, free_port
from tests.service.models import expected
from training.repository import ModelRepository

pytestmark = pytest.mark.timeout(60)  # a real uvicorn process on loopback

LOCATE = {"authorization": f"Bearer {LOCATE_KEY}"}


def _serve(
    start_server: Callable[..., Any], *, flag: bool, **extra: Any
) -> tuple[Any, triton.InferenceServerClient, int]:
    """A server with gRPC on: by `csipos serve --grpc-port` or by the setting."""
    port = free_port()
    if flag:
        server = start_server(args=["--grpc-port", str(port)], **extra)
    else:
        server = start_server(grpc_port=port, **extra)
    return server, triton.InferenceServerClient(url=f"127.0.0.1:{port}"), port


def _status(exc: pytest.ExceptionInfo[InferenceServerException]) -> str:
    return str(exc.value.status())


def test_unary_calls_auth_errors_and_metrics(start_server: Callable[..., Any]) -> None:
    server, client, port = _serve(start_server, flag=True)
    healthcheck.check(server.port, port)  # what the container's HEALTHCHECK runs
    with pytest.raises(grpc.RpcError):
        healthcheck.check(server.port, free_port())  # gRPC down: unhealthy
    assert client.is_server_live() and client.is_server_ready()
    assert client.get_server_metadata().name == "csipos"
    assert client.is_model_ready("lab-nll", headers=LOCATE)
    assert not client.is_model_ready("missing", headers=LOCATE)
    meta = client.get_model_metadata("lab-nll", headers=LOCATE)
    assert list(meta.inputs[0].shape) == [-1, 8, 103, 2] and list(meta.versions) == ["v1"]
    assert [o.name for o in meta.outputs] == ["position", "sigma"]

    csi = csi_batch(4, seed=7)
    inp = triton.InferInput("csi", list(csi.shape), "FP32")
    inp.set_data_from_numpy(csi)
    result = client.infer("lab-nll", [inp], headers=LOCATE, request_id="r1")
    pos, sigma = expected(csi, seed=1, bias=(1.0, 2.0))
    np.testing.assert_allclose(result.as_numpy("position"), pos, atol=1e-4)
    np.testing.assert_allclose(result.as_numpy("sigma"), sigma, atol=1e-4)
    response = result.get_response()
    assert (response.model_version, response.id) == ("v1", "r1")
    # The admin key may locate too; a named output answers only that one.
    only = client.infer(
        "lab-mse",
        [inp],
        outputs=[triton.InferRequestedOutput("position")],
        headers={"authorization": f"Bearer {ADMIN_KEY}"},
    )
    np.testing.assert_allclose(only.as_numpy("position"), expected(csi, 3, (-1, -2))[0], atol=1e-4)
    assert only.as_numpy("sigma") is None

    with pytest.raises(InferenceServerException) as exc:
        client.infer("lab-nll", [inp])  # no key
    assert _status(exc) == "StatusCode.UNAUTHENTICATED"
    with pytest.raises(InferenceServerException) as exc:
        client.infer("lab-nll", [inp], headers={"authorization": "Bearer wrong-key-0123456789"})
    assert _status(exc) == "StatusCode.UNAUTHENTICATED"
    with pytest.raises(InferenceServerException) as exc:
        client.infer("missing", [inp], headers=LOCATE)
    assert _status(exc) == "StatusCode.NOT_FOUND"
    with pytest.raises(InferenceServerException, match="no sigma") as exc:
        client.infer(
            "lab-mse", [inp], outputs=[triton.InferRequestedOutput("sigma")], headers=LOCATE
        )
    assert _status(exc) == "StatusCode.INVALID_ARGUMENT"
    wrong = triton.InferInput("csi", [2, 8, 100, 2], "FP32")
    wrong.set_data_from_numpy(np.zeros((2, 8, 100, 2), np.float32))
    with pytest.raises(InferenceServerException, match="shape") as exc:
        client.infer("lab-nll", [wrong], headers=LOCATE)
    assert _status(exc) == "StatusCode.INVALID_ARGUMENT"
    nan = triton.InferInput("csi", [1, 8, 103, 2], "FP32")
    nan.set_data_from_numpy(np.full((1, 8, 103, 2), np.nan, np.float32))
    with pytest.raises(InferenceServerException, match="NaN"):
        client.infer("lab-nll", [nan], headers=LOCATE)

    text = httpx.get(server.url + "/metrics").text
    route = 'protocol="grpc",route="/inference.GRPCInferenceService/ModelInfer"'
    assert (
        f'csipos_http_request_duration_seconds_count{{method="POST",{route},status="200"}} 2.0'
        in text
    )
    assert f'{{method="POST",{route},status="401"}} 2.0' in text
    assert f'{{method="POST",{route},status="404"}} 1.0' in text
    assert 'protocol="http"' in text  # the /metrics scrape itself is counted as http
    client.close()

    # Typed contents instead of raw bytes (KServe clients may send either).
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        infer = channel.unary_unary(
            "/inference.GRPCInferenceService/ModelInfer",
            request_serializer=pb.ModelInferRequest.SerializeToString,
            response_deserializer=pb.ModelInferResponse.FromString,
        )
        request = pb.ModelInferRequest(model_name="lab-nll", id="typed")
        tensor = request.inputs.add(name="csi", datatype="FP32", shape=list(csi.shape))
        tensor.contents.fp32_contents.extend(csi.ravel().tolist())
        answer = infer(request, metadata=tuple(LOCATE.items()))
        got = np.frombuffer(answer.raw_output_contents[0], "<f4").reshape(4, 2)
        np.testing.assert_allclose(got, pos, atol=1e-4)
        assert [o.name for o in answer.outputs] == ["position", "sigma"]
        request.raw_input_contents.extend([csi.tobytes(), csi.tobytes()])  # 2 for 1 input
        with pytest.raises(grpc.RpcError) as err:
            infer(request, metadata=tuple(LOCATE.items()))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_stream_with_batching_answers_each_request(
    start_server: Callable[..., Any], repo: ModelRepository
) -> None:
    # Many distinct single fingerprints in flight on one stream: the server runs them
    # concurrently and its batcher coalesces them; each answer must be its own request's.
    server, client, _ = _serve(
        start_server, flag=False, batching_max_batch=16, batching_max_queue_delay_us=2000
    )
    results: queue.Queue[tuple[Any, Any]] = queue.Queue()
    client.start_stream(callback=lambda result, error: results.put((result, error)), headers=LOCATE)
    inputs = {f"q{i}": csi_batch(1, seed=1000 + i) for i in range(60)}
    for rid, csi in inputs.items():
        inp = triton.InferInput("csi", [1, 8, 103, 2], "FP32")
        inp.set_data_from_numpy(csi)
        client.async_stream_infer("lab-mse", [inp], request_id=rid)
    bad = triton.InferInput("csi", [1, 8, 3, 2], "FP32")
    bad.set_data_from_numpy(np.zeros((1, 8, 3, 2), np.float32))
    client.async_stream_infer("lab-mse", [bad], request_id="bad")
    got: dict[str, np.ndarray] = {}
    errors = []
    for _ in range(len(inputs) + 1):
        result, error = results.get(timeout=20)
        if error is not None:
            errors.append(error)
        else:
            got[result.get_response().id] = result.as_numpy("position")
    client.stop_stream()
    assert len(errors) == 1 and "shape" in str(errors[0])
    assert sorted(got) == sorted(inputs)
    # The reference: each fingerprint alone through onnxruntime on the same model file.
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    model = repo.path("site", "lab-mse") / "model.onnx"
    session = ort.InferenceSession(str(model), opts, providers=["CPUExecutionProvider"])
    for rid, csi in inputs.items():
        (alone,) = session.run(["position"], {"csi": csi})
        np.testing.assert_array_equal(got[rid], alone)  # bit-equal
    text = httpx.get(server.url + "/metrics").text
    batched = [
        line
        for line in text.splitlines()
        if line.startswith('csipos_batch_requests_sum{site="lab-mse"}')
    ]
    assert batched and float(batched[0].split()[-1]) == len(inputs)
    calls = [
        line
        for line in text.splitlines()
        if line.startswith('csipos_inference_batch_size_count{site="lab-mse"}')
    ]
    assert float(calls[0].split()[-1]) < len(inputs)  # coalesced into fewer model calls
    client.close()
