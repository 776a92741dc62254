"""Job records: one JSON file per job under the job directory, so they survive restarts.

The API process creates a record; the process that runs the job (a process-pool worker
or an RQ worker, possibly on another host sharing the directory) updates it. Writes are
atomic (temp file, fsync, `os.replace`) under a per-job `flock`, so a reader never sees
half a record and two writers never lose each other's fields.

Fencing: a run claims the queued job and gets a lease, the job id plus a fresh attempt
token. Its heartbeats, progress, final state and its publish (`JobStore.lease`, entered
under the repository's lock) only happen while the record still says `running` with that
token. A job declared dead (stale heartbeat, owner gone) is `failed` for good: a worker
that was only stalled cannot publish or turn it `succeeded` later.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from service.adaptation import AdaptOptions
from training.config import TrainConfig
from training.repository import LeaseLost, atomic_write_bytes

_TRAIN = TrainConfig()

JobState = Literal["queued", "running", "succeeded", "failed"]
TERMINAL: frozenset[str] = frozenset({"succeeded", "failed"})


class TrainBudget(BaseModel):
    """The service's training limits, fixed when the job is queued (from the settings).

    Stored in the record so that a worker with other settings (RQ on another host) trains
    the job as the API that accepted it said, and so that the job shows what it ran with.
    Defaults are the training core's (`training.config.TrainConfig`).
    """

    epochs: int = Field(default=_TRAIN.epochs, gt=0)
    min_steps: int = Field(default=_TRAIN.min_steps, ge=0)
    max_steps: int | None = Field(default=_TRAIN.max_steps, gt=0)
    patience: int = Field(default=_TRAIN.patience, gt=0)
    batch_size: int = Field(default=_TRAIN.batch_size, gt=0)
    threads: int = Field(default=1, gt=0)
    """Torch threads the job trains with."""

    def config(self, options: AdaptOptions) -> TrainConfig:
        """The training configuration of a job with these limits and ``options``."""
        return TrainConfig(
            loss=options.loss,
            epochs=self.epochs,
            min_steps=self.min_steps,
            max_steps=self.max_steps,
            patience=self.patience,
            batch_size=self.batch_size,
            val_fraction=options.val_fraction,
            seed=options.seed,
            calibrate_sigma=options.calibrate_sigma,
            augment_copies=options.augment_copies,
        )


class Progress(BaseModel):
    phase: str | None = None
    candidate: str | None = None
    """``auto``: which candidate mode is training."""
    step: int | None = None
    epoch: int | None = None
    val_me: float | None = None
    best_val_me: float | None = None


class JobRecord(BaseModel):
    """Everything known about one adaptation job."""

    id: str
    site: str
    state: JobState = "queued"
    options: AdaptOptions
    train: TrainBudget = Field(default_factory=TrainBudget)
    samples: int
    created: float
    started: float | None = None
    finished: float | None = None
    heartbeat: float | None = None
    progress: Progress = Field(default_factory=Progress)
    metrics: dict[str, Any] | None = None
    version: str | None = None
    error: str | None = None
    executor: Literal["local", "rq"] = "local"
    owner: str = ""
    """`host:pid` of the API process that queued it (local jobs die with it)."""
    worker_pid: int | None = None
    attempt: str | None = None
    """The lease token of the run that claimed the job (see the module docstring)."""


def new_job_id() -> str:
    return uuid.uuid4().hex


class JobStore:
    """Job records as `<dir>/<id>/job.json`, with the job's data beside it."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def job_dir(self, job_id: str) -> Path:
        if not job_id.isalnum():
            raise KeyError(job_id)
        return self.root / job_id

    def data_path(self, job_id: str) -> Path:
        return self.job_dir(job_id) / "data.h5"

    @contextlib.contextmanager
    def locked(self, name: str = ".store") -> Iterator[None]:
        """An exclusive `flock` shared by every process using this directory."""
        with (self.root / f"{name}.lock").open("a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def write(self, record: JobRecord) -> None:
        d = self.job_dir(record.id)
        d.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(d / "job.json", record.model_dump_json(indent=1).encode())

    def get(self, job_id: str) -> JobRecord | None:
        try:
            text = (self.job_dir(job_id) / "job.json").read_text()
        except (FileNotFoundError, KeyError):
            return None
        return JobRecord.model_validate_json(text)

    def claim(self, job_id: str, worker_pid: int) -> tuple[JobRecord, str] | None:
        """Start a queued job: `running` with a fresh lease token; None unless it was queued."""
        with self.locked(f"job-{job_id}"):
            record = self.get(job_id)
            if record is None or record.state != "queued":
                return None
            now = time.time()
            token = uuid.uuid4().hex
            new = record.model_copy(
                update={
                    "state": "running",
                    "started": now,
                    "heartbeat": now,
                    "worker_pid": worker_pid,
                    "attempt": token,
                }
            )
            self.write(new)
            return new, token

    def _holds(self, record: JobRecord | None, token: str) -> bool:
        return record is not None and record.state == "running" and record.attempt == token

    def update_leased(self, job_id: str, token: str, **fields: Any) -> JobRecord | None:
        """Read-modify-write under the job's lock, only while the run with lease `token`
        still owns the job (so never after it was declared failed); else None."""
        with self.locked(f"job-{job_id}"):
            record = self.get(job_id)
            if not self._holds(record, token):
                return None
            assert record is not None
            data = record.model_dump()
            data.update(fields)
            new = JobRecord.model_validate(data)
            self.write(new)
            return new

    @contextlib.contextmanager
    def lease(self, job_id: str, token: str) -> Iterator[None]:
        """Hold the job's lock while the run with `token` owns the job; else `LeaseLost`.

        The model repository enters this under its own lock around the commit of a
        publish, so the job cannot be declared dead between the check and the commit.
        """
        with self.locked(f"job-{job_id}"):
            record = self.get(job_id)
            if not self._holds(record, token):
                state = record.state if record else "missing"
                raise LeaseLost(f"job {job_id} no longer owns its lease (state {state})")
            yield

    def fail_if_open(self, job_id: str, reason: str) -> None:
        """Mark failed unless it already finished (the worker's own word wins)."""
        with self.locked(f"job-{job_id}"):
            record = self.get(job_id)
            if record is None or record.state in TERMINAL:
                return
            now = time.time()
            self.write(
                record.model_copy(
                    update={
                        "state": "failed",
                        "error": reason,
                        "finished": now,
                        "started": record.started or now,
                    }
                )
            )

    def all(self) -> list[JobRecord]:
        out = []
        for f in self.root.glob("*/job.json"):
            with contextlib.suppress(OSError, ValueError):
                out.append(JobRecord.model_validate_json(f.read_text()))
        return sorted(out, key=lambda r: r.created)


def to_json(record: JobRecord) -> dict[str, Any]:
    """The record as plain JSON types (for responses)."""
    out: dict[str, Any] = json.loads(record.model_dump_json())
    return out
