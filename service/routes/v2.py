"""KServe Open Inference Protocol (V2) over the same positioning core as `/locate`.

Supports JSON tensors and the binary tensor extension: the request (and, when an output
asks for `binary_data`, the response) is a JSON header of `Inference-Header-Content-Length`
bytes followed by raw little-endian tensor bytes, so Triton/KServe clients work unchanged.

A multi-BS site takes one input per base station (``csi_<bs>``; with the binary
extension their bytes follow the header in input order) and answers the fused
`position`, `sigma` and `covariance` (`service.dataplane`).
"""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import APIRouter, Request, Response
from starlette.concurrency import run_in_threadpool

from service import dataplane
from service.config import Settings
from service.deps import LocateKey, Store, authorize
from service.errors import BadRequest, InvalidInput, Unavailable
from service.positioning import Positioner
from service.store import ServedSite
from service.uploads import parse_json, read_body

router = APIRouter(prefix="/v2", tags=["kserve-v2"])

HEADER_LENGTH = "inference-header-content-length"
_INLINE_PARSE_BYTES = 64 * 1024


@router.get("")
async def server_metadata() -> dict[str, Any]:
    """Server name, version and the protocol extensions supported."""
    return dataplane.server_metadata()


@router.get("/health/live")
async def live() -> dict[str, bool]:
    return {"live": True}


@router.get("/health/ready")
async def ready(request: Request) -> dict[str, bool]:
    if not getattr(request.app.state, "loaded", False):
        raise Unavailable("model repository not loaded yet")
    return {"ready": True}


@router.get("/models/{site}")
@router.get("/models/{site}/versions/{version}")
async def model_metadata(
    site: str, store: Store, _: LocateKey, version: str | None = None
) -> dict[str, Any]:
    return dataplane.model_metadata(dataplane.served(store, site, version))


@router.get("/models/{site}/ready")
@router.get("/models/{site}/versions/{version}/ready")
async def model_ready(
    site: str, store: Store, _: LocateKey, version: str | None = None
) -> dict[str, Any]:
    served = dataplane.served(store, site, version)
    return {"name": site, "ready": served.loaded}


def _header_and_binary(request: Request, body: bytes) -> tuple[bytes, bytes]:
    """Split a binary-extension body at `Inference-Header-Content-Length`."""
    header_len = request.headers.get(HEADER_LENGTH)
    if header_len is None:
        return body, b""
    if not header_len.isdigit() or int(header_len) > len(body):
        raise BadRequest(
            f"invalid Inference-Header-Content-Length {header_len!r}", {"body_bytes": len(body)}
        )
    return body[: int(header_len)], body[int(header_len) :]


def _parameters(item: dict[str, Any], what: str) -> dict[str, Any]:
    params = item.get("parameters") or {}
    if not isinstance(params, dict):
        raise InvalidInput(f"{what} parameters must be an object", {"got": params})
    return params


def _parse_per_bs(
    doc: Any, binary: bytes, max_batch: int, served: ServedSite
) -> tuple[dict[str, Any], Any]:
    """A multi-BS request: one input per base station (`csi_<bs>`), binary parts in order."""
    inputs = doc.get("inputs") if isinstance(doc, dict) else None
    names = dataplane.input_names(served)
    if not isinstance(inputs, list) or not inputs or not all(isinstance(t, dict) for t in inputs):
        raise InvalidInput(
            f"expected one input tensor per base station, any non-empty subset of {names}",
            {"got": inputs},
        )
    per_bs: dict[str, Any] = {}
    offset = 0
    for tensor in inputs:
        bs = dataplane.input_bs(served, tensor.get("name"))
        if bs in per_bs:
            raise InvalidInput(f"input {tensor.get('name')!r} given twice", {"expected": names})
        size = _parameters(tensor, "input").get("binary_data_size")
        raw = None
        if size is not None:
            if type(size) is not int or size < 0 or offset + size > len(binary):
                raise InvalidInput(
                    "binary_data_size does not match the bytes after the header",
                    {"binary_data_size": size, "got_bytes": len(binary) - offset},
                )
            raw = binary[offset : offset + size]
            offset += size
        per_bs[bs] = dataplane.input_tensor(
            tensor.get("datatype"),
            tensor.get("shape"),
            max_batch=max_batch,
            raw=raw,
            values=tensor.get("data"),
        )
    if offset != len(binary):
        raise InvalidInput(
            "binary_data_size does not match the bytes after the header",
            {"declared_bytes": offset, "got_bytes": len(binary)},
        )
    return doc, dataplane.same_batch(per_bs)


def _parse(
    head: bytes, binary: bytes, max_batch: int, served: ServedSite | None = None
) -> tuple[dict[str, Any], Any]:
    """The request header and its validated `csi` batch (JSON data or binary extension);
    for a multi-BS site the batch per base station, {bs id: [B,8,103,2]}."""
    doc = parse_json(head, "inference request header")
    if served is not None and served.multi_bs:
        return _parse_per_bs(doc, binary, max_batch, served)
    inputs = doc.get("inputs") if isinstance(doc, dict) else None
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise InvalidInput("expected exactly one input tensor named 'csi'", {"got": inputs})
    tensor = inputs[0]
    size = _parameters(tensor, "input").get("binary_data_size")
    if size is not None and (type(size) is not int or size != len(binary)):
        raise InvalidInput(
            "binary_data_size does not match the bytes after the header",
            {"binary_data_size": size, "got_bytes": len(binary)},
        )
    csi = dataplane.input_csi(
        tensor.get("name"),
        tensor.get("datatype"),
        tensor.get("shape"),
        max_batch=max_batch,
        raw=binary if size is not None else None,
        values=tensor.get("data"),
    )
    return doc, csi


def _wanted_outputs(doc: dict[str, Any], served: Any) -> list[tuple[str, bool]]:
    """(output name, as binary?) for each output to answer with."""
    default_binary = bool(_parameters(doc, "request").get("binary_data_output", False))
    requested = doc.get("outputs")
    if requested is not None and not isinstance(requested, list):
        raise InvalidInput("outputs must be a list", {"got": requested})
    items = [item if isinstance(item, dict) else {} for item in requested or []]
    names = dataplane.select_outputs([item.get("name") for item in items], served)
    if not items:
        return [(name, default_binary) for name in names]
    binary = [bool(_parameters(i, "output").get("binary_data", default_binary)) for i in items]
    return list(zip(names, binary, strict=True))


@router.post("/models/{site}/infer")
@router.post("/models/{site}/versions/{version}/infer")
async def infer(site: str, request: Request, version: str | None = None) -> Response:
    """Run the site model; outputs `position` and (nll models) `sigma`, FP32 [B,2], and
    with an out-of-site detector `novelty` FP32 [B] and `in_site` BOOL [B]; a multi-BS
    site takes `csi_<bs>` inputs and adds `covariance` [B,2,2] (and the UE's `novelty`
    and `in_site` when every BS has a detector)."""
    # No dependencies: FastAPI's solver costs about as much as this whole route's own
    # work for one fingerprint (bench/protocols.md).
    settings: Settings = request.app.state.settings
    positioner: Positioner = request.app.state.positioner
    authorize(request, settings, "locate")
    served = dataplane.served(positioner.store, site, version)
    body = await read_body(request, settings.max_body_bytes)  # inflated, capped: uploads.py
    head, binary = _header_and_binary(request, body)
    if len(body) > _INLINE_PARSE_BYTES:  # big batches parse off the event loop
        doc, csi = await run_in_threadpool(_parse, head, binary, settings.max_batch, served)
    else:
        doc, csi = _parse(head, binary, settings.max_batch, served)
    wanted = _wanted_outputs(doc, served)
    pred = (
        await positioner.locate_bs(site, csi)
        if isinstance(csi, dict)
        else await positioner.locate(site, csi)
    )
    outputs: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    arrays = dataplane.output_arrays(pred, [name for name, _binary in wanted])
    for (name, arr), (_name, as_binary) in zip(arrays, wanted, strict=True):
        entry: dict[str, Any] = {
            "name": name,
            "datatype": dataplane.output_datatype(arr),
            "shape": list(arr.shape),
        }
        if as_binary:
            data = arr.tobytes()
            entry["parameters"] = {"binary_data_size": len(data)}
            blobs.append(data)
        else:
            entry["data"] = arr.reshape(-1).tolist()
        outputs.append(entry)
    answer: dict[str, Any] = {"model_name": site, "model_version": pred.version, "outputs": outputs}
    if "id" in doc:
        answer["id"] = doc["id"]
    head_out = orjson.dumps(answer)
    if not blobs:
        return Response(head_out, media_type="application/json")
    return Response(
        head_out + b"".join(blobs),
        media_type="application/octet-stream",
        headers={"Inference-Header-Content-Length": str(len(head_out))},
    )
