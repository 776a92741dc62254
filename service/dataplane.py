"""The KServe V2 (Open Inference Protocol) data plane, shared by its HTTP and gRPC transports.

Each transport unpacks its own framing (JSON + binary extension, or protobuf) and hands
the pieces here: which site version, the one input tensor, the outputs asked for. The
checks and their 4xx answers are the same whichever way a request came in.

A multi-BS site takes one input per base station, named ``csi_<bs>`` (any non-empty
subset, the same batch size each), and answers the fused `position`, its marginal
`sigma` and the full `covariance` FP32 [B,2,2].

A site version with an out-of-site detector (every BS's, for a multi-BS site) also
answers `novelty` FP32 [B] (above 1: not from this site; a multi-BS site's is the
median over the UE's BSs, or its cross-BS consistency score where larger:
`ServedSite.ue_novelty`) and `in_site` BOOL [B], as `/locate` does.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from service.errors import InvalidInput, PayloadTooLarge, SiteNotFound
from service.positioning import CSI_SHAPE, FusedPrediction, Prediction, as_csi_batch
from service.store import ModelStore, ServedSite

INPUT = "csi"
BS_INPUT_PREFIX = "csi_"
"""A multi-BS site's inputs: ``csi_<bs id>``, one per base station."""
FUSED_OUTPUTS = ["position", "sigma", "covariance"]
NOVELTY_OUTPUTS = ["novelty", "in_site"]
"""Outputs of a site version with an out-of-site detector (`training.novelty`)."""
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
    if model.multi_bs:  # novelty and in_site per UE (`ServedSite.ue_novelty`)
        return FUSED_OUTPUTS + NOVELTY_OUTPUTS if model.bs_novelty else list(FUSED_OUTPUTS)
    names = ["position", "sigma"] if model.has_sigma else ["position"]
    return names + NOVELTY_OUTPUTS if model.novelty is not None else names


def output_datatype(arr: np.ndarray) -> str:
    """The V2 datatype of an output array (`output_arrays` gives FP32 or BOOL)."""
    return "BOOL" if arr.dtype == np.bool_ else "FP32"


def _output_shape(name: str) -> list[int]:
    if name == "covariance":
        return [-1, 2, 2]
    return [-1] if name in NOVELTY_OUTPUTS else [-1, 2]


def input_names(model: ServedSite) -> list[str]:
    """`csi`, or ``csi_<bs>`` per base station of a multi-BS site."""
    if model.multi_bs:
        return [BS_INPUT_PREFIX + bs for bs in model.base_stations]
    return [INPUT]


def input_bs(model: ServedSite, name: Any) -> str:
    """The BS id of a multi-BS site's input tensor name; 422 for names the site lacks."""
    names = input_names(model)
    if not isinstance(name, str) or name not in names:
        raise InvalidInput(
            f"unknown input {name!r}", {"expected": f"any non-empty subset of {names}"}
        )
    return name[len(BS_INPUT_PREFIX) :]


def model_metadata(model: ServedSite) -> dict[str, Any]:
    """The model's V2 metadata: one FP32 input `csi` (one per BS, ``csi_<bs>``, for a
    multi-BS site), outputs `position` (and `sigma`; `covariance` when fused)."""
    params: dict[str, Any] = {"loss": model.loss}
    if model.multi_bs:
        params["base_stations"] = list(model.base_stations)
        params["inputs"] = "any non-empty subset, the same batch size each"
    return {
        "name": model.site,
        "versions": [model.version],
        "platform": "onnxruntime_onnx",
        "inputs": [
            {"name": name, "datatype": "FP32", "shape": [-1, *CSI_SHAPE]}
            for name in input_names(model)
        ],
        "outputs": [
            {
                "name": name,
                "datatype": "BOOL" if name == "in_site" else "FP32",
                "shape": _output_shape(name),
            }
            for name in output_names(model)
        ],
        "parameters": params,
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
    return input_tensor(datatype, shape, max_batch=max_batch, raw=raw, values=values)


def input_tensor(
    datatype: Any,
    shape: Any,
    *,
    max_batch: int,
    raw: bytes | None = None,
    values: Any = None,
) -> np.ndarray:
    """`input_csi` without the name check (multi-BS inputs are checked by `input_bs`)."""
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


def same_batch(per_bs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """422 unless the inputs of a multi-BS request have one batch size."""
    sizes = {bs: int(arr.shape[0]) for bs, arr in per_bs.items()}
    if len(set(sizes.values())) > 1:
        raise InvalidInput(
            "every base station's input needs the same batch size (one row per UE)",
            {"batch_sizes": sizes},
        )
    return per_bs


def output_arrays(
    pred: Prediction | FusedPrediction, names: Sequence[str]
) -> list[tuple[str, np.ndarray]]:
    """(name, array) per output asked for: little-endian float32 [B,2] (`covariance`
    [B,2,2], `novelty` [B]), or bool [B] for `in_site` (one byte each, as V2 BOOL)."""
    arrays: dict[str, np.ndarray | None] = {"position": pred.position, "sigma": pred.sigma}
    if isinstance(pred, FusedPrediction):
        arrays["covariance"] = pred.cov
    arrays["novelty"] = pred.novelty
    arrays["in_site"] = pred.in_site
    out = []
    for name in names:
        arr = arrays.get(name)
        if arr is None:  # asked for, but this prediction has none (validated before)
            raise InvalidInput(f"output {name!r} is not available for this site version")
        dtype = np.bool_ if name == "in_site" else np.dtype("<f4")
        out.append((name, np.ascontiguousarray(arr, dtype=dtype)))
    return out
