"""KServe Open Inference Protocol (V2) over the same positioning core as `/locate`.

Supports JSON tensors and the binary tensor extension: the request (and, when an output
asks for `binary_data`, the response) is a JSON header of `Inference-Header-Content-Length`
bytes followed by raw little-endian tensor bytes, so Triton/KServe clients work unchanged.
"""

from __future__ import annotations

import gzip
import json
import zlib
from typing import Any

import numpy as np
from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from service.deps import LocateKey, PositionerDep, SettingsDep, Store
from service.errors import BadRequest, InvalidInput, SiteNotFound, Unavailable
from service.positioning import CSI_SHAPE, as_csi_batch
from service.store import ServedSite
from service.uploads import parse_json, read_body

router = APIRouter(prefix="/v2", tags=["kserve-v2"])

HEADER_LENGTH = "inference-header-content-length"
_DTYPES = {"FP32": np.float32, "FP64": np.float64, "FP16": np.float16}


@router.get("")
async def server_metadata() -> dict[str, Any]:
    """Server name, version and the protocol extensions supported."""
    from training.repository import csipos_version

    return {"name": "csipos", "version": csipos_version(), "extensions": ["binary_tensor_data"]}


@router.get("/health/live")
async def live() -> dict[str, bool]:
    return {"live": True}


@router.get("/health/ready")
async def ready(request: Request) -> dict[str, bool]:
    if not getattr(request.app.state, "loaded", False):
        raise Unavailable("model repository not loaded yet")
    return {"ready": True}


def _served(store: Any, site: str, version: str | None) -> ServedSite:
    served: ServedSite = store.get(site)
    if version is not None and version != served.version:
        raise SiteNotFound(
            f"site {site!r} serves version {served.version}, not {version!r}",
            {"serving_version": served.version},
        )
    return served


def _metadata(served: ServedSite) -> dict[str, Any]:
    outputs = [{"name": "position", "datatype": "FP32", "shape": [-1, 2]}]
    if served.has_sigma:
        outputs.append({"name": "sigma", "datatype": "FP32", "shape": [-1, 2]})
    return {
        "name": served.site,
        "versions": [served.version],
        "platform": "onnxruntime_onnx",
        "inputs": [{"name": "csi", "datatype": "FP32", "shape": [-1, *CSI_SHAPE]}],
        "outputs": outputs,
        "parameters": {"loss": served.loss},
    }


@router.get("/models/{site}")
@router.get("/models/{site}/versions/{version}")
async def model_metadata(
    site: str, store: Store, _: LocateKey, version: str | None = None
) -> dict[str, Any]:
    return _metadata(_served(store, site, version))


@router.get("/models/{site}/ready")
@router.get("/models/{site}/versions/{version}/ready")
async def model_ready(
    site: str, store: Store, _: LocateKey, version: str | None = None
) -> dict[str, Any]:
    served = _served(store, site, version)
    return {"name": site, "ready": served.loaded}


def _decode(request: Request, body: bytes, limit: int) -> bytes:
    encoding = request.headers.get("content-encoding", "identity").lower()
    try:
        if encoding == "gzip":
            out = gzip.decompress(body)
        elif encoding == "deflate":
            out = zlib.decompress(body)
        elif encoding == "identity":
            return body
        else:
            raise BadRequest(f"unsupported content encoding {encoding!r}")
    except (OSError, zlib.error) as exc:
        raise BadRequest(f"cannot decode {encoding} body", {"reason": str(exc)}) from None
    if len(out) > limit:
        raise InvalidInput("decompressed body exceeds the limit", {"limit_bytes": limit})
    return out


def _input_tensor(request: Request, body: bytes) -> tuple[dict[str, Any], np.ndarray]:
    """The request header and the `csi` input tensor (JSON data or binary extension)."""
    header_len = request.headers.get(HEADER_LENGTH)
    if header_len is not None:
        if not header_len.isdigit() or int(header_len) > len(body):
            raise BadRequest(
                f"invalid Inference-Header-Content-Length {header_len!r}",
                {"body_bytes": len(body)},
            )
        head, binary = body[: int(header_len)], body[int(header_len) :]
    else:
        head, binary = body, b""
    doc = parse_json(head, "inference request header")
    inputs = doc.get("inputs") if isinstance(doc, dict) else None
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise InvalidInput("expected exactly one input tensor named 'csi'", {"got": inputs})
    tensor = inputs[0]
    if tensor.get("name") != "csi":
        raise InvalidInput(f"unknown input {tensor.get('name')!r}", {"expected": "csi"})
    dtype = _DTYPES.get(str(tensor.get("datatype")))
    if dtype is None:
        raise InvalidInput(
            f"unsupported datatype {tensor.get('datatype')!r}", {"expected": sorted(_DTYPES)}
        )
    shape = tensor.get("shape")
    if not isinstance(shape, list) or not all(isinstance(s, int) and s >= 0 for s in shape):
        raise InvalidInput("input shape must be a list of non-negative integers", {"got": shape})
    count = int(np.prod(shape)) if shape else 1
    size = (tensor.get("parameters") or {}).get("binary_data_size")
    if size is not None:
        expected = count * np.dtype(dtype).itemsize
        if size != expected or len(binary) != size:
            raise InvalidInput(
                "binary tensor size does not match shape and datatype",
                {"expected_bytes": expected, "binary_data_size": size, "got_bytes": len(binary)},
            )
        flat = np.frombuffer(binary, dtype=np.dtype(dtype).newbyteorder("<"))
    else:
        try:
            flat = np.asarray(tensor.get("data"), dtype=dtype).reshape(-1)
        except (ValueError, TypeError) as exc:
            raise InvalidInput("input data is not numeric", {"reason": str(exc)}) from None
        if flat.size != count:
            raise InvalidInput(
                "input data does not match its shape", {"shape": shape, "elements": int(flat.size)}
            )
    return doc, flat.reshape(shape)


def _wanted_outputs(doc: dict[str, Any], served: ServedSite) -> list[tuple[str, bool]]:
    default_binary = bool((doc.get("parameters") or {}).get("binary_data_output", False))
    requested = doc.get("outputs")
    available = ["position", "sigma"] if served.has_sigma else ["position"]
    if not requested:
        return [(name, default_binary) for name in available]
    out = []
    for item in requested:
        name = item.get("name") if isinstance(item, dict) else None
        if name not in available:
            note = " (this site's model is MSE-only and has no sigma)" if name == "sigma" else ""
            raise InvalidInput(f"unknown output {name!r}{note}", {"available": available})
        binary = (item.get("parameters") or {}).get("binary_data", default_binary)
        out.append((name, bool(binary)))
    return out


@router.post("/models/{site}/infer")
@router.post("/models/{site}/versions/{version}/infer")
async def infer(
    site: str,
    request: Request,
    settings: SettingsDep,
    store: Store,
    positioner: PositionerDep,
    _: LocateKey,
    version: str | None = None,
) -> Response:
    """Run the site model; outputs `position` and (nll models) `sigma`, FP32 [B,2]."""
    served = _served(store, site, version)
    raw = await read_body(request, settings.max_body_bytes)
    body = _decode(request, raw, settings.max_body_bytes)
    doc, tensor = await run_in_threadpool(_input_tensor, request, body)
    csi = await run_in_threadpool(as_csi_batch, tensor, settings.max_batch)
    wanted = _wanted_outputs(doc, served)
    pred = await positioner.locate(site, csi)
    arrays = {"position": pred.position, "sigma": pred.sigma}
    outputs: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    for name, binary in wanted:
        arr = np.ascontiguousarray(arrays[name], dtype="<f4")
        entry: dict[str, Any] = {"name": name, "datatype": "FP32", "shape": list(arr.shape)}
        if binary:
            raw = arr.tobytes()
            entry["parameters"] = {"binary_data_size": len(raw)}
            blobs.append(raw)
        else:
            entry["data"] = arr.reshape(-1).tolist()
        outputs.append(entry)
    answer: dict[str, Any] = {"model_name": site, "model_version": pred.version, "outputs": outputs}
    if "id" in doc:
        answer["id"] = doc["id"]
    if not blobs:
        return JSONResponse(answer)
    head = json.dumps(answer).encode()
    return Response(
        head + b"".join(blobs),
        media_type="application/octet-stream",
        headers={"Inference-Header-Content-Length": str(len(head))},
    )
