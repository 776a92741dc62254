"""The KServe V2 (Open Inference Protocol) data plane, shared by its HTTP and gRPC transports.

Each transport unpacks its own framing (JSON + binary extension, or protobuf) and hands
the pieces here: which site version, the one input tensor, the outputs asked for. The
checks and their 4xx answers are the same whichever way a request came in.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from service.errors import InvalidInput, PayloadTooLarge, SiteNotFound
from service.positioning import CSI_SHAPE, Prediction, as_csi_batch
from service.store import ModelStore, ServedSite

INPUT = "csi"
DTYPES: dict[str, type[np.floating[Any]]] = {
    "FP32": np.float32,
    "FP64": np.float64,
    "FP16": np.float16,
}
EXTENSIONS = ["binary_tensor_data"]


def server_metadata() -> dict[str, Any]:
    """Server name, version and the protocol extensions supported."""
    from training.repository import csipos_version

    return {"name": "csipos", "version": csipos_version(), "extensions": EXTENSIONS}


def served(store: ModelStore, site: str, version: str | None = None) -> ServedSite:
    """The site's served model; 404 when it is not the version asked for."""
    model = store.get(site)
    if version and version != model.version:
        raise SiteNotFound(
            f"site {site!r} serves version {model.version}, not {version!r}",
            {"serving_version": model.version},
        )
    return model


def output_names(model: ServedSite) -> list[str]:
    return ["position", "sigma"] if model.has_sigma else ["position"]


def model_metadata(model: ServedSite) -> dict[str, Any]:
    """The model's V2 metadata: one FP32 input `csi`, outputs `position` (and `sigma`)."""
    return {
        "name": model.site,
        "versions": [model.version],
        "platform": "onnxruntime_onnx",
        "inputs": [{"name": INPUT, "datatype": "FP32", "shape": [-1, *CSI_SHAPE]}],
        "outputs": [
            {"name": name, "datatype": "FP32", "shape": [-1, 2]} for name in output_names(model)
        ],
        "parameters": {"loss": model.loss},
    }


def input_csi(
    name: Any,
    datatype: Any,
    shape: Any,
    *,
    max_batch: int,
    raw: bytes | None = None,
    values: Any = None,
) -> np.ndarray:
    """The validated float32 [B,8,103,2] batch from one V2 input tensor.

    The tensor's elements come either as raw little-endian bytes (`raw`: the binary
    extension, gRPC's `raw_input_contents`) or as numbers (`values`: JSON `data`,
    gRPC's typed `contents`).
    """
    if name != INPUT:
        raise InvalidInput(f"unknown input {name!r}", {"expected": INPUT})
    dtype = DTYPES.get(datatype) if isinstance(datatype, str) else None
    if dtype is None:
        raise InvalidInput(f"unsupported datatype {datatype!r}", {"expected": sorted(DTYPES)})
    if not isinstance(shape, Sequence) or not all(
        type(s) is int and s >= 0
        for s in shape  # bool is an int: refuse it too
    ):
        raise InvalidInput("input shape must be a list of non-negative integers", {"got": shape})
    # Python ints: np.prod would overflow silently on [2**62, 4] and pass the checks below.
    count = math.prod(shape)
    most = max_batch * math.prod(CSI_SHAPE)
    if count > most:
        raise PayloadTooLarge(
            "input tensor has more elements than the batch limit allows",
            {"max_batch": max_batch, "max_elements": most, "shape": list(shape)},
        )
    if raw is not None:
        expected = count * np.dtype(dtype).itemsize
        if len(raw) != expected:
            raise InvalidInput(
                "binary tensor size does not match shape and datatype",
                {"expected_bytes": expected, "got_bytes": len(raw)},
            )
        flat = np.frombuffer(raw, dtype=np.dtype(dtype).newbyteorder("<"))
    else:
        try:
            flat = np.asarray(values, dtype=dtype).reshape(-1)
        except (ValueError, TypeError, RecursionError) as exc:
            raise InvalidInput("input data is not numeric", {"reason": str(exc)}) from None
        if flat.size != count:
            raise InvalidInput(
                "input data does not match its shape", {"shape": list(shape), "elements": flat.size}
            )
    return as_csi_batch(flat.reshape(tuple(shape)), max_batch)


def select_outputs(requested: Sequence[Any] | None, model: ServedSite) -> list[str]:
    """The outputs to answer with: all of them unless the request names some."""
    available = output_names(model)
    if not requested:
        return available
    for name in requested:
        if name not in available:
            note = " (this site's model is MSE-only and has no sigma)" if name == "sigma" else ""
            raise InvalidInput(f"unknown output {name!r}{note}", {"available": available})
    return list(requested)


def output_arrays(pred: Prediction, names: Sequence[str]) -> list[tuple[str, np.ndarray]]:
    """(name, little-endian float32 [B,2]) for each output asked for."""
    arrays = {"position": pred.position, "sigma": pred.sigma}
    return [(name, np.ascontiguousarray(arrays[name], dtype="<f4")) for name in names]
