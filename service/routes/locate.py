"""`POST /locate`: positions from CSI, as JSON or `application/x-npy`.

The route takes only the `Request`: no dependency injection or query-parameter models
(FastAPI runs those per request, about as long as the model), and it answers with orjson
bytes rather than a dict for FastAPI to encode (bench/protocols.md has the profile). The
parameters are documented in `_OPENAPI`.

A multi-BS site takes `csi` as an object of per-BS CSI (`{"bs0": [...], "bs2": [...]}`,
any non-empty subset of its base stations, the same batch size for each) and answers,
per UE, the fused position with its 2x2 covariance and rotated ellipse, plus each BS's
own estimate under `bs` (docs/architecture.md, "Multi-BS sites").
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import orjson
from fastapi import APIRouter, Request, Response
from starlette.concurrency import run_in_threadpool

from service import metrics
from service.config import Settings
from service.deps import authorize
from service.errors import BadRequest, InvalidInput, UnsupportedMediaType
from service.positioning import (
    FusedPrediction,
    Positioner,
    Prediction,
    as_csi_batch,
    as_csi_per_bs,
    ellipse,
)
from service.schemas import LocateResponse
from service.tracking import UE_PATTERN, Tracker, check_timestamp, check_ue, measurement
from service.uploads import parse_json, read_body
from training import fusion
from training.repository import NAME_PATTERN

router = APIRouter(tags=["locate"])
_INLINE_PARSE_BYTES = 64 * 1024
SITE_PATTERN = NAME_PATTERN.pattern
NPY_DTYPES = (np.dtype("<f4"), np.dtype(">f4"), np.dtype("<f8"), np.dtype(">f8"))

FUSED_CONFIDENCE = 0.95
"""Confidence of the fused ellipse when the request names none (multi-BS sites)."""

NO_SIGMA_NOTE = (
    "this site's model was trained with MSE loss and predicts no uncertainty; "
    "sigma_x and sigma_y are null"
)

_OPENAPI: dict[str, Any] = {
    "security": [{"bearer": []}],
    "parameters": [
        {
            "name": "site",
            "in": "query",
            "required": False,
            "schema": {"type": "string", "pattern": SITE_PATTERN},
            "description": "Site id (required for application/x-npy).",
        },
        {
            "name": "ellipse_confidence",
            "in": "query",
            "required": False,
            "schema": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1},
            "description": "Add an axis-aligned confidence ellipse with this confidence (0-1).",
        },
        {
            "name": "ue",
            "in": "query",
            "required": False,
            "schema": {"type": "string", "pattern": UE_PATTERN.pattern},
            "description": "UE id: track this UE (one fingerprint per request); the answer "
            "carries `track`.",
        },
        {
            "name": "timestamp",
            "in": "query",
            "required": False,
            "schema": {"type": "number", "minimum": 0, "exclusiveMaximum": 1e11},
            "description": "Measurement time in seconds (with `ue`; default: the server's "
            "receive time, Unix).",
        },
    ],
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["site", "csi"],
                    "properties": {
                        "site": {"type": "string", "pattern": SITE_PATTERN},
                        "csi": {
                            "description": "[8][103][2] or [B][8][103][2] floats; for a "
                            "multi-BS site an object {bs id: [8][103][2] or [B][8][103][2]} "
                            "with any non-empty subset of its base stations"
                        },
                        "ellipse_confidence": {
                            "type": "number",
                            "exclusiveMinimum": 0,
                            "exclusiveMaximum": 1,
                        },
                        "ue": {"type": "string", "pattern": UE_PATTERN.pattern},
                        "timestamp": {"type": "number", "minimum": 0, "exclusiveMaximum": 1e11},
                    },
                }
            },
            "application/x-npy": {"schema": {"type": "string", "format": "binary"}},
        },
    },
}


def _confidence(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < 1:
        raise InvalidInput(
            "ellipse_confidence must be a number strictly between 0 and 1",
            {"got": value, "example": 0.95},
        )
    return float(value)


def positions_json(pred: Prediction, confidence: float | None) -> dict[str, Any]:
    """The /locate answer for one prediction batch."""
    out: list[dict[str, Any]] = []
    pos = pred.position.tolist()
    sig = pred.sigma.tolist() if pred.sigma is not None else None
    novelty = pred.novelty.tolist() if pred.novelty is not None else None
    in_site = pred.in_site.tolist() if pred.in_site is not None else None
    for i, (x, y) in enumerate(pos):
        item: dict[str, Any] = {"x": x, "y": y, "sigma_x": None, "sigma_y": None}
        # Out-of-site detection: null for site versions published without a novelty model.
        item["in_site"] = None if in_site is None else in_site[i]
        item["novelty"] = None if novelty is None else novelty[i]
        if sig is not None:
            item["sigma_x"], item["sigma_y"] = sig[i]
            if confidence is not None:
                item["ellipse"] = ellipse(sig[i][0], sig[i][1], confidence)
        out.append(item)
    body: dict[str, Any] = {
        "site": pred.site,
        "model_version": pred.version,
        "loss": pred.loss,
        "sigma_available": pred.sigma is not None,
        "positions": out,
    }
    if pred.sigma is None:
        body["note"] = NO_SIGMA_NOTE
    return body


def _estimate(x: float, y: float, sigma: list[float] | None) -> dict[str, Any]:
    sx, sy = (sigma[0], sigma[1]) if sigma is not None else (None, None)
    return {"x": x, "y": y, "sigma_x": sx, "sigma_y": sy}


def fused_json(pred: FusedPrediction, confidence: float | None) -> dict[str, Any]:
    """The /locate answer of a multi-BS site: per UE the fused position (x, y, marginal
    sigmas, full `cov`, rotated `ellipse`) and each present BS's estimate under `bs`."""
    conf = confidence if confidence is not None else FUSED_CONFIDENCE
    per_bs = {
        bs: (
            p.position.tolist(),
            p.sigma.tolist() if p.sigma is not None else None,
            p.novelty.tolist() if p.novelty is not None else None,
            p.in_site.tolist() if p.in_site is not None else None,
        )
        for bs, p in pred.per_bs.items()
    }
    sigma = pred.sigma.tolist()
    novelty = pred.novelty.tolist() if pred.novelty is not None else None
    in_site = pred.in_site.tolist() if pred.in_site is not None else None
    out: list[dict[str, Any]] = []
    for i, (x, y) in enumerate(pred.position.tolist()):
        cov = pred.cov[i]
        item = _estimate(x, y, sigma[i])
        item["cov"] = cov.tolist()
        item["ellipse"] = fusion.ellipse(cov, conf)
        # Out-of-site: the UE's score (`ServedSite.ue_novelty`; null without per-BS detectors).
        item["in_site"] = None if in_site is None else in_site[i]
        item["novelty"] = None if novelty is None else novelty[i]
        item["bs"] = {}
        for bs, (pos, sig, nov, ins) in per_bs.items():
            est = _estimate(pos[i][0], pos[i][1], None if sig is None else sig[i])
            est["in_site"] = None if ins is None else ins[i]
            est["novelty"] = None if nov is None else nov[i]
            item["bs"][bs] = est
        out.append(item)
    body: dict[str, Any] = {
        "site": pred.site,
        "model_version": pred.version,
        "loss": pred.loss,
        "sigma_available": True,
        "base_stations": list(pred.per_bs),
        "fusion": {
            "method": pred.method,
            "sigma_source": pred.sigma_source,
            "inflation": pred.inflation,
            "joint_head": pred.joint,
        },
        "positions": out,
    }
    if pred.sigma_source == "validation_rmse":
        body["note"] = (
            "this site's models were trained with MSE loss: each base station's validation "
            "RMSE stands in for its sigma in the fusion; per-BS sigma_x and sigma_y are null"
        )
    return body


def parse_npy(body: bytes) -> np.ndarray:
    """An array from `.npy` bytes (no pickles), real float32 or float64 only: a complex
    array would lose its imaginary part in the cast, a bool one means a client bug."""
    try:
        arr: np.ndarray = np.load(io.BytesIO(body), allow_pickle=False)
    except Exception as exc:
        raise BadRequest(
            "body is not a valid .npy array", {"reason": str(exc), "expected": "numpy.save output"}
        ) from None
    if arr.dtype not in NPY_DTYPES:
        raise InvalidInput(
            f"npy array has dtype {arr.dtype}, expected float32 or float64",
            {"expected": ["float32", "float64"], "got": str(arr.dtype)},
        )
    return arr


def _query_confidence(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        number = float(value)
    except ValueError:
        raise InvalidInput(
            "ellipse_confidence must be a number strictly between 0 and 1",
            {"got": value, "example": 0.95},
        ) from None
    return _confidence(number)


@router.post(
    "/locate",
    openapi_extra=_OPENAPI,
    response_class=Response,
    responses={200: {"model": LocateResponse}},
)
async def locate(request: Request) -> Response:
    """Positions (metres) and 1-sigma uncertainties for one fingerprint or a batch."""
    settings: Settings = request.app.state.settings
    positioner: Positioner = request.app.state.positioner
    authorize(request, settings, "locate")
    site = request.query_params.get("site")
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    body = await read_body(request, settings.max_body_bytes)
    confidence = _query_confidence(request.query_params.get("ellipse_confidence"))
    ue: Any = request.query_params.get("ue")
    stamp: Any = request.query_params.get("timestamp")
    if ctype == "application/json":
        doc = (
            await run_in_threadpool(parse_json, body)
            if len(body) > _INLINE_PARSE_BYTES
            else parse_json(body)
        )
        if not isinstance(doc, dict) or "csi" not in doc:
            raise InvalidInput(
                "JSON body must be an object with 'site' and 'csi'",
                {"expected": {"site": "lab-los", "csi": "[8][103][2] or [B][8][103][2]"}},
            )
        site = doc.get("site", site)
        if "ellipse_confidence" in doc:
            confidence = _confidence(doc["ellipse_confidence"])
        ue, stamp = doc.get("ue", ue), doc.get("timestamp", stamp)
        raw: Any = doc["csi"]
    elif ctype in ("application/x-npy", "application/octet-stream"):
        raw = parse_npy(body)
    else:
        raise UnsupportedMediaType(
            f"unsupported content type {ctype or '(none)'!r}",
            {"expected": ["application/json", "application/x-npy"]},
        )
    if not isinstance(site, str) or not site:
        raise InvalidInput("missing site id", {"expected": "'site' in the body or ?site="})
    if ue is not None:
        ue = check_ue(ue)
        stamp = None if stamp is None else check_timestamp(stamp)
    elif stamp is not None:
        raise InvalidInput("timestamp needs a ue id", {"expected": "'ue' with 'timestamp'"})
    if isinstance(raw, dict):  # CSI per base station: a multi-BS site
        if len(body) > _INLINE_PARSE_BYTES:
            per_bs = await run_in_threadpool(as_csi_per_bs, raw, settings.max_batch)
        else:
            per_bs = as_csi_per_bs(raw, settings.max_batch)
        rows = next(iter(per_bs.values())).shape[0]
        if ue is not None and rows != 1:
            raise InvalidInput(
                "a tracked request (with ue) carries one fingerprint per base station",
                {"got": rows, "expected": "[8,103,2] or [1,8,103,2] per base station"},
            )
        fused = await positioner.locate_bs(site, per_bs)
        fused_answer = fused_json(fused, confidence)
        if ue is not None:
            noise = "predicted" if fused.sigma_source == "predicted" else "validation_me"
            measured = (fused.position[0].astype(np.float64), fused.cov[0], noise)
            fused_answer["track"] = await _track(request, fused, measured, ue, stamp)
        return Response(orjson.dumps(fused_answer), media_type="application/json")
    # Big batches are parsed off the event loop so other requests keep flowing.
    if len(body) > _INLINE_PARSE_BYTES:
        csi = await run_in_threadpool(as_csi_batch, raw, settings.max_batch)
    else:
        csi = as_csi_batch(raw, settings.max_batch)
    if ue is not None and csi.shape[0] != 1:
        raise InvalidInput(
            "a tracked request (with ue) carries one fingerprint",
            {"got": int(csi.shape[0]), "expected": "[8,103,2] or [1,8,103,2]"},
        )
    pred = await positioner.locate(site, csi)
    answer = positions_json(pred, confidence)
    if ue is not None:
        served = positioner.store.get(pred.site)
        manifest = served.manifest if served.version == pred.version else {}
        measured = measurement(pred, 0, manifest, settings.track_mse_sigma_m)
        answer["track"] = await _track(request, pred, measured, ue, stamp)
    return Response(orjson.dumps(answer), media_type="application/json")


async def _track(
    request: Request,
    pred: Prediction | FusedPrediction,
    measured: tuple[np.ndarray, np.ndarray, str],
    ue: str,
    stamp: float | None,
) -> dict[str, Any]:
    """Feed the (only) UE of `pred` to its track: `measured` is its position, the
    covariance taken as measurement noise and where that came from (the fused covariance
    of a multi-BS site; `tracking.measurement` of a single-BS one). The answer's `track`."""
    positioner: Positioner = request.app.state.positioner
    tracker: Tracker = request.app.state.tracker
    mean, cov, noise = measured
    label = metrics.site_label(pred.site, positioner.store.knows)
    spacing = _label_spacing(positioner, pred.site, pred.version)
    score = None if pred.novelty is None else float(pred.novelty[0])
    return await tracker.update(pred.site, label, ue, stamp, mean, cov, noise, spacing, score)


def _label_spacing(positioner: Positioner, site: str, version: str) -> float | None:
    """The label spacing of the version that answered (None if another one serves now)."""
    served = positioner.store.get(site)
    return served.label_spacing_m if served.version == version else None
