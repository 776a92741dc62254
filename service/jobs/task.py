"""The adaptation job itself, run in a worker process (process pool or `csipos worker`).

It only needs the job directory and the model directory (shared storage), so the same
function serves both executors. It heartbeats into its record so that a killed worker
is noticed, and it never touches the active version unless the trainer succeeded: the
repository publishes atomically, so a crash leaves the previous version serving.
"""

from __future__ import annotations

import importlib
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from service.jobs.records import TERMINAL, JobStore

log = logging.getLogger("csipos.service.jobs")


def resolve_entrypoint(spec: str) -> Callable[..., Any]:
    """Import `module:function`."""
    module, _, name = spec.partition(":")
    if not module or not name:
        raise ValueError(f"adapt entrypoint {spec!r} is not of the form 'module:function'")
    fn = getattr(importlib.import_module(module), name)
    if not callable(fn):
        raise TypeError(f"adapt entrypoint {spec!r} is not callable")
    return fn  # type: ignore[no-any-return]


def load_fingerprints(path: Path) -> Any:
    """The job's training data as `training.data.Fingerprints`."""
    from training.data.fingerprints import Fingerprints

    with np.load(path) as z:
        return Fingerprints(
            csi=z["csi"],
            pos=z["pos"],
            los=z.get("los"),
            snr_db=z.get("snr_db"),
        )


def _heartbeat(store: JobStore, job_id: str, stop: threading.Event, every: float) -> None:
    while not stop.wait(every):
        try:
            store.update(job_id, heartbeat=time.time())
        except Exception:  # a missed beat is harmless; the next one retries
            log.debug("heartbeat failed for job %s", job_id, exc_info=True)


def run_adapt_job(job_dir: str, job_id: str, model_dir: str, entrypoint: str) -> str:
    """Run one adaptation job to a terminal state; returns that state."""
    store = JobStore(Path(job_dir))
    record = store.get(job_id)
    if record is None or record.state in TERMINAL:
        return record.state if record else "missing"
    now = time.time()
    store.update(job_id, state="running", started=now, heartbeat=now, worker_pid=os.getpid())
    stop = threading.Event()
    beat = threading.Thread(
        target=_heartbeat, args=(store, job_id, stop, 2.0), name="csipos-heartbeat", daemon=True
    )
    beat.start()

    def progress(info: dict[str, Any]) -> None:
        keys = ("phase", "candidate", "step", "epoch", "val_me", "best_val_me")
        fields = {k: info.get(k) for k in keys}
        store.update(job_id, progress=fields, heartbeat=time.time())

    try:
        adapt = resolve_entrypoint(entrypoint)
        import torch

        from training.repository import ModelRepository

        # Explicit threads: torch's default (all cores) per job oversubscribes the CPU
        # when jobs run side by side, and was ~3x slower even alone on 2 busy cores.
        torch.set_num_threads(record.train.threads)
        data = load_fingerprints(store.data_path(job_id))
        opts = record.options
        config = record.train.config(opts)
        result = adapt(
            ModelRepository(Path(model_dir)),
            record.site,
            data,
            backbone=opts.backbone,
            mode=opts.mode,
            loss=opts.loss,
            val_fraction=opts.val_fraction,
            seed=opts.seed,
            activate=opts.activate,
            progress=progress,
            config=config,
        )
        summary = dict(getattr(result, "metrics", {}) or {})
        summary.update(
            epochs=getattr(result, "epochs", None),
            steps=getattr(result, "steps", None),
            chosen_mode=getattr(result, "chosen_mode", None),
            threads=record.train.threads,
            samples=getattr(result, "samples", len(data)),
            wall_s=getattr(result, "wall_s", time.time() - now),
        )
        stop.set()
        store.update(
            job_id,
            state="succeeded",
            finished=time.time(),
            version=str(result.version),
            metrics=_jsonable(summary),
        )
        return "succeeded"
    except Exception as exc:
        stop.set()
        log.exception("job %s failed", job_id)
        error = f"{type(exc).__name__}: {exc}"
        store.update(job_id, state="failed", finished=time.time(), error=error)
        return "failed"
    finally:
        stop.set()
        beat.join(timeout=5)
        store.data_path(job_id).unlink(missing_ok=True)


def _jsonable(value: Any) -> Any:
    """Numpy scalars and tuples in trainer metrics -> plain JSON types."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value
