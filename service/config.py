"""Service settings: one pydantic-settings class, read from `CSIPOS_*` environment variables.

Keys are plain strings in the environment (or a `.env` file) and are never logged:
`Settings.__repr__` masks them. Outside dev mode the service refuses to start without
an admin key, because an admin route that cannot be authorised is either useless or
(worse) open; we do not generate one, since a generated key could only reach the
operator through a log line.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from training.config import TrainConfig
from training.tracking import TrackerConfig

_TRACKER = TrackerConfig()
"""The tracker's defaults: the settings below start from them (one source for both)."""

_TRAIN = TrainConfig()
"""The training core's defaults: the adaptation settings start from them."""


class Settings(BaseSettings):
    """Everything the service can be told; each field maps to `CSIPOS_<NAME>`."""

    model_config = SettingsConfigDict(
        env_prefix="CSIPOS_", env_file=".env", extra="ignore", frozen=True
    )

    model_dir: Path = Path("models")
    """Root of the model repository (`models/`); shared by all replicas and workers."""

    seed_models_from: Path | None = None
    """If set, `serve` and `worker` first copy in the models of this repository that
    `model_dir` lacks, once per repository (the images point it at their default models)."""

    dev_mode: bool = False
    """Development mode: allows running without any API key (every route open)."""

    locate_keys: Annotated[list[SecretStr], NoDecode] = Field(default_factory=list)
    """Bearer keys with the `locate` scope (inference, read-only site listing); JSON list."""

    admin_keys: Annotated[list[SecretStr], NoDecode] = Field(default_factory=list)
    """Bearer keys with the `admin` scope (adapt, activate, delete); they also may locate."""

    max_body_bytes: int = Field(default=8 * 1024 * 1024, gt=0)
    """Largest accepted request body, after decoding any Content-Encoding, on every route
    but the HDF5 adaptation upload (413 above it)."""

    max_upload_bytes: int = Field(default=256 * 1024 * 1024, gt=0)
    """Largest accepted HDF5 upload for adaptation, streamed to disk (413 above it)."""

    max_batch: int = Field(default=1024, gt=0)
    """Most fingerprints in one /locate or V2 infer request (413 above it)."""

    max_in_flight: int = Field(default=128, gt=0)
    """Most inference requests (/locate, V2 infer) admitted at once per worker process;
    beyond it the answer is 503 with Retry-After at once (admission control)."""

    inference_deadline_s: float = Field(default=5.0, gt=0)
    """An inference request not answered within this many seconds (body upload, queueing
    and model call together) is cancelled and answered 503 with Retry-After."""

    expose_site_lists: bool = True
    """Whether unauthenticated `/readyz` lists the served sites and `/metrics` labels
    series by site id; set false where site ids are confidential."""

    max_sites: int = Field(default=256, gt=0)
    """Most sites the store loads; also bounds the `site` label of the metrics."""

    min_adapt_samples: int = Field(default=20, gt=0)
    """Fewest labelled fingerprints an adaptation request may carry (422 below it)."""

    max_adapt_samples: int = Field(default=100_000, gt=0)
    """Most labelled fingerprints an adaptation upload may carry (413 above it)."""

    max_upload_decoded_bytes: int = Field(default=1024 * 1024 * 1024, gt=0)
    """Most bytes an adaptation upload's datasets may decode (inflate) to (413 above it)."""

    max_concurrent_jobs: int = Field(default=2, gt=0)
    """Most adaptation jobs queued or running at once across all sites (429 above it)."""

    job_dir: Path = Path("runs/jobs")
    """Where job records (JSON) and uploaded training data live; survives restarts."""

    job_stale_after_s: float = Field(default=60.0, gt=0)
    """A running job whose heartbeat is older than this is reported failed (worker died)."""

    redis_url: str | None = None
    """If set, adaptation jobs go through RQ on this Redis to `csipos worker` processes."""

    rq_queue: str = "csipos-adapt"
    """Name of the RQ queue the API enqueues to and `csipos worker` listens on."""

    worker_metrics_port: int | None = Field(default=None, ge=1, le=65535)
    """If set, `csipos worker` serves its process's Prometheus metrics on this port."""

    inference_threads: int = Field(default=max(1, os.cpu_count() or 1), gt=0)
    """Threads of the bounded inference pool (requests run in parallel up to this)."""

    intra_op_threads: int = Field(default=1, gt=0)
    """onnxruntime intra-op threads per session; 1 scales best with concurrent requests."""

    grpc_port: int | None = Field(default=None, ge=0, le=65535)
    """If set, each API process also serves KServe V2 over gRPC on this port (0: any free)."""

    grpc_host: str = "127.0.0.1"
    """Interface of the gRPC port (`csipos serve --host` sets it with the HTTP one)."""

    batching_max_batch: int = Field(default=0, ge=0)
    """Dynamic batching: most fingerprints that concurrent requests for one site share in one
    model call (Triton's `max_batch_size`); 0 turns batching off. Requests of this size or
    more run alone."""

    batching_max_queue_delay_us: int = Field(default=0, ge=0, le=1_000_000)
    """Dynamic batching: how long (microseconds) the oldest queued request may wait for more
    to join its batch; 0 waits for none, but still batches what queued while the model ran."""

    watch_interval_s: float = Field(default=2.0, gt=0)
    """How often each replica polls the sites' `active.json` for a new active version."""

    adapt_entrypoint: str = "training.transfer:adapt_site"
    """Import path `module:function` of the adaptation trainer (swap for plugins or tests);
    it is called like `training.transfer.adapt_site`, including `config=TrainConfig`."""

    adapt_max_epochs: int = Field(default=_TRAIN.epochs, gt=0)
    """Most passes over the data per training phase of an adaptation job (with
    `adapt_max_steps`, bounds a job's run time)."""

    adapt_min_steps: int = Field(default=_TRAIN.min_steps, ge=0)
    """Fewest optimizer steps per phase before it may stop early (small uploads still train)."""

    adapt_max_steps: int | None = Field(default=_TRAIN.max_steps, gt=0)
    """Hard cap on optimizer steps per phase (unset: only `adapt_max_epochs` caps)."""

    adapt_patience: int = Field(default=_TRAIN.patience, gt=0)
    """Validations without a better validation score before an adaptation phase stops."""

    adapt_batch_size: int = Field(default=_TRAIN.batch_size, gt=0)
    """Mini-batch size of adaptation training."""

    adapt_threads: int = Field(default=0, ge=0)
    """Torch threads per adaptation job; 0: the machine's cores / `max_concurrent_jobs`, so
    concurrent jobs do not oversubscribe the CPU (recorded in the site's manifest)."""

    track_max_ues: int = Field(default=10_000, gt=0)
    """Most UE tracks kept (`/locate` with `ue`): the in-process store evicts the least
    recently updated beyond it; with Redis the shared store is trimmed to it."""

    track_expiry_s: float = Field(default=10.0, gt=0)
    """A UE track with no measurement for this long restarts (and is dropped from the store)."""

    track_accel_psd: float = Field(default=0.3, gt=0)
    """Tracking: acceleration noise spectral density (m^2/s^3 per axis) of the
    constant-velocity Kalman filter; 0.3 suits walking and forklift motion (0.5-3 m/s,
    bench/tracking.md)."""

    track_noise_scale: float = Field(default=1.0, gt=0)
    """Tracking: multiplies each measurement's covariance (1: the estimate's own)."""

    track_error_share: float = Field(default=_TRACKER.error_share, ge=0, lt=1)
    """Tracking: share of a measurement's error variance that is correlated along a track
    (a field over space, decaying over the error length); 0: independent errors, the
    plain filter. Set on held-out trajectories in docs/results/site-trust/error-length."""

    track_error_length_spacings: float = Field(default=_TRACKER.error_length_spacings, ge=0)
    """Tracking: the error length in units of the site version's label spacing (the
    manifest's ``metrics.label_spacing_m``): a model's error persists over a few distances
    between the labels it was trained on. 0: always `track_error_length_m`."""

    track_error_length_m: float = Field(default=_TRACKER.error_length_m, gt=0)
    """Tracking: distance (m) over which the correlated part of the error decays by 1/e,
    for site versions adapted before the label spacing was stored (or with
    `track_error_length_spacings` 0)."""

    track_novelty_time_s: float = Field(default=_TRACKER.novelty_time_s, ge=0)
    """Tracking: time constant (s) of a tracked UE's averaged out-of-site score, which
    sets the answer's ``track.in_site`` (0, the default: the latest fingerprint's score
    alone). 10 s lowered the false alarms on every held-out site-seed that had any
    (docs/results/site-trust/ue-average)."""

    track_noise_time_s: float = Field(default=_TRACKER.noise_time_s, ge=0)
    """Tracking: time constant (s) of a track's adaptive noise scale, which inflates the
    measurement covariances where the track's innovations say they understate its
    fingerprints' errors (`training.tracking`; 0: off, the covariances as served;
    docs/results/site-trust/noise-scale)."""

    track_gate_probability: float = Field(default=0.99, gt=0, lt=1)
    """Tracking: a measurement outside this chi-square (2 dof) probability mass of the
    predicted position is gated (not applied, reported)."""

    track_max_gated: int = Field(default=3, ge=0)
    """Tracking: consecutive gated measurements tolerated; the next one restarts the track."""

    track_mse_sigma_m: float = Field(default=1.0, gt=0)
    """Tracking: 1-sigma (m) of MSE models' positions when the manifest has no validation ME."""

    log_level: str = "INFO"
    """Log level of the service's loggers."""

    @property
    def adapt_thread_count(self) -> int:
        """The torch threads an adaptation job gets (`adapt_threads`, resolved)."""
        if self.adapt_threads:
            return self.adapt_threads
        return max(1, (os.cpu_count() or 1) // self.max_concurrent_jobs)

    @field_validator("locate_keys", "admin_keys", mode="before")
    @classmethod
    def _split_keys(cls, value: Any) -> Any:
        # A JSON list or a comma-separated string: the latter is friendlier in compose files.
        if isinstance(value, str):
            if value.lstrip().startswith("["):
                return json.loads(value)
            return [k.strip() for k in value.split(",") if k.strip()]
        return value

    @field_validator("locate_keys", "admin_keys")
    @classmethod
    def _keys_long_enough(cls, value: list[SecretStr]) -> list[SecretStr]:
        for key in value:
            if len(key.get_secret_value()) < 16:
                raise ValueError("API keys must be at least 16 characters long")
        return value

    @model_validator(mode="after")
    def _refuse_open_admin(self) -> Settings:
        if not self.dev_mode and not self.admin_keys:
            raise ValueError(
                "no admin key configured: set CSIPOS_ADMIN_KEYS (comma-separated, >= 16 chars) "
                "or CSIPOS_DEV_MODE=true for an unauthenticated development server"
            )
        return self

    @property
    def auth_enabled(self) -> bool:
        """Dev mode with no keys at all means every route is open."""
        return bool(self.admin_keys or self.locate_keys)
