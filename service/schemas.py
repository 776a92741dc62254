"""The API's documented shapes: response models, the error body, and the statuses each
route can answer, so the OpenAPI spec matches what the service sends (schemathesis
checks it against a real server in tests/service/test_openapi.py).

Responses are documented with `responses=`, not validated with `response_model`:
/locate answers batches of up to `max_batch` positions and must not pay for a second
validation of its own output.
"""

from __future__ import annotations

from typing import Any, Literal

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel, ConfigDict, Field


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class ErrorDetail(BaseModel):
    code: str = Field(description="Stable machine-readable code, e.g. 'site_not_found'.")
    message: str = Field(description="What went wrong, for people.")
    detail: Any = Field(None, description="Structured context (expected values, limits...).")


class ErrorBody(BaseModel):
    """Every error of the API (outside /v2)."""

    error: ErrorDetail


class KServeErrorBody(_Open):
    """Errors under /v2 (Open Inference Protocol: `error` is the message)."""

    error: str
    code: str | None = None
    detail: Any = None


class Ellipse(_Open):
    semi_axis_x: float
    semi_axis_y: float
    semi_major: float
    semi_minor: float
    orientation_deg: float
    confidence: float
    k: float


class RotatedEllipse(_Open):
    """The ellipse of a full covariance (multi-BS sites): major axis at `orientation_deg`
    counter-clockwise from the x axis, in [0, 180)."""

    semi_major: float
    semi_minor: float
    orientation_deg: float
    confidence: float
    k: float


class BsEstimate(_Open):
    x: float
    y: float
    sigma_x: float | None
    sigma_y: float | None
    in_site: bool | None = Field(
        None, description="This base station's own out-of-site judgement (null without one)."
    )
    novelty: float | None = Field(None, description="This base station's out-of-site score.")


class Position(_Open):
    x: float
    y: float
    sigma_x: float | None
    sigma_y: float | None
    in_site: bool | None = Field(
        None,
        description="False when the fingerprint does not look like the site's training "
        "fingerprints (its sigma is then at least the site's position spread); null when the "
        "site version has no out-of-site detector (published before it). Multi-BS sites: "
        "true when at least half of the base stations that heard the UE say so (the median "
        "of their novelty scores is at most 1) and, where the version has one, the "
        "cross-BS consistency check passes (the BSs' views fit one place of the site).",
    )
    novelty: float | None = Field(
        None,
        description="Out-of-site score: Mahalanobis distance of the backbone features from "
        "the site's training features over the site's calibrated threshold (above 1: "
        "out of site); multi-BS sites: the median of the BSs' scores or the cross-BS "
        "consistency score, whichever is larger; null without a detector.",
    )
    ellipse: Ellipse | RotatedEllipse | None = None
    cov: list[list[float]] | None = Field(
        None, description="Multi-BS sites: the fused 2x2 covariance (m^2)."
    )
    bs: dict[str, BsEstimate] | None = Field(
        None, description="Multi-BS sites: each present base station's own estimate."
    )


class Track(_Open):
    """A UE's filtered state after this request's measurement (requests with `ue`)."""

    ue: str
    time: float = Field(description="Seconds: the track's time (this measurement's, unless stale).")
    x: float
    y: float
    vx: float = Field(description="Velocity, m/s.")
    vy: float
    cov: list[list[float]] = Field(description="2x2 covariance of (x, y), m^2.")
    gated: bool = Field(description="The measurement failed the outlier gate: not applied.")
    stale: bool = Field(description="At or before the track's time (repeat): not applied.")
    reset: Literal["new", "expired", "gated"] | None = Field(
        description="Why the track (re)started at this measurement, if it did."
    )
    age_s: float = Field(description="Seconds since the track (re)started.")
    updates: int = Field(description="Measurements applied since the track (re)started.")
    measurement_noise: Literal["predicted", "validation_me", "setting"] = Field(
        description="Where the measurement's covariance came from (MSE models have no sigma)."
    )
    novelty: float | None = Field(
        None,
        description="The UE's out-of-site score averaged over its track (time constant "
        "CSIPOS_TRACK_NOVELTY_TIME_S); null when the site has no out-of-site detector.",
    )
    in_site: bool | None = Field(
        None, description="The averaged score at most 1: the UE, not one fingerprint, is in site."
    )
    noise_scale: float = Field(
        1.0,
        description="What the track multiplies each measurement's covariance by, learnt from "
        "its innovations (>= 1; 1 while CSIPOS_TRACK_NOISE_TIME_S is 0): above 1, this UE's "
        "fingerprints err more than their covariance says.",
    )


class LocateResponse(_Open):
    site: str
    model_version: str
    loss: str
    sigma_available: bool
    positions: list[Position]
    note: str | None = None
    track: Track | None = None
    base_stations: list[str] | None = Field(
        None, description="Multi-BS sites: the base stations fused, in the site's order."
    )
    fusion: dict[str, Any] | None = None


class SiteSummary(_Open):
    site: str
    active_version: str | None
    serving_version: str | None
    loss: str | None
    versions: int


class SiteList(_Open):
    sites: list[SiteSummary]


class VersionSummary(_Open):
    version: str


class SiteDetail(_Open):
    site: str
    active_version: str | None
    serving_version: str | None
    sigma_available: bool | None
    versions: list[VersionSummary]
    base_stations: list[str] | None = Field(
        None, description="Multi-BS sites: the served version's base stations."
    )


class JobView(_Open):
    id: str
    site: str
    state: Literal["queued", "running", "succeeded", "failed"]
    serving: bool | None = Field(
        None, description="Succeeded and activated: this replica serves the version made."
    )
    version: str | None = None
    error: str | None = None


class JobAccepted(_Open):
    job_id: str
    url: str
    job: JobView


class JobList(_Open):
    jobs: list[JobView]


_STATUS_TEXT = {
    400: "Malformed request (not JSON, bad encoding, bad multipart).",
    401: "Missing or invalid API key.",
    403: "The key lacks the scope this route needs.",
    404: "No such site, version or job.",
    409: "Conflicts with the current state (a job already runs for the site).",
    413: "Body, decoded body, batch or upload larger than the limits.",
    415: "Unsupported Content-Type or Content-Encoding.",
    422: "Well-formed request whose content is wrong (shapes, NaN, options).",
    429: "Too many adaptation jobs in progress; retry later (Retry-After).",
    503: "Not ready, overloaded, past its deadline, or the site is loading (Retry-After).",
    500: "Unexpected error; the detail carries the request id.",
}


def errors(*statuses: int, kserve: bool = False) -> dict[int | str, dict[str, Any]]:
    """`responses=` entries for the error statuses a route can answer."""
    model = KServeErrorBody if kserve else ErrorBody
    return {s: {"model": model, "description": _STATUS_TEXT[s]} for s in statuses}


AUTH = (401, 403)
"""What every keyed route can answer besides its own errors."""
COMMON = (413, 503, 500)
"""What every route can answer: the body limit, admission control, the catch-all."""


def body_schema(model: type[BaseModel], media: str = "application/json") -> dict[str, Any]:
    """`openapi_extra` documenting a body that the route reads itself (after auth)."""
    return {
        "requestBody": {
            "required": True,
            "content": {media: {"schema": model.model_json_schema()}},
        }
    }


_ALL_ERRORS = (400, 401, 403, 404, 409, 413, 415, 422, 429, 500, 503)
_OPEN_ROUTES = ("/healthz", "/readyz", "/v2", "/v2/health/live", "/v2/health/ready")


def install_openapi(app: FastAPI) -> None:
    """Make the generated spec say what the service does: our error body (KServe's under
    /v2) for every error status a route can answer, instead of FastAPI's default 422."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        spec = get_openapi(
            title=app.title, version=app.version, description=app.description, routes=app.routes
        )
        schemas = spec.setdefault("components", {}).setdefault("schemas", {})
        for model in (ErrorBody, KServeErrorBody):
            defs = model.model_json_schema(ref_template="#/components/schemas/{model}")
            schemas.update(defs.pop("$defs", {}))
            schemas[model.__name__] = defs
        for name in ("HTTPValidationError", "ValidationError"):
            schemas.pop(name, None)
        for path, item in spec.get("paths", {}).items():
            body = "KServeErrorBody" if path.startswith("/v2/") else "ErrorBody"
            content = {"application/json": {"schema": {"$ref": f"#/components/schemas/{body}"}}}
            statuses = (500, 503) if path in _OPEN_ROUTES else _ALL_ERRORS
            for operation in item.values():
                responses = operation.setdefault("responses", {})
                for status in statuses:
                    entry = responses.setdefault(str(status), {"description": _STATUS_TEXT[status]})
                    entry["content"] = content
                if "503" in responses:
                    responses["503"]["headers"] = _RETRY_AFTER
                if "429" in responses:
                    responses["429"]["headers"] = _RETRY_AFTER
        app.openapi_schema = spec
        return spec

    app.openapi = openapi  # type: ignore[method-assign]


_RETRY_AFTER = {
    "Retry-After": {
        "description": "Seconds to wait before retrying.",
        "schema": {"type": "integer"},
    }
}
