"""The adaptation job itself, run in a worker process (process pool or `csipos worker`).

It only needs the job directory and the model directory (shared storage), so the same
function serves both executors. It heartbeats into its record so that a killed worker
is noticed, and it never touches the active version unless the trainer succeeded: the
repository publishes atomically, so a crash leaves the previous version serving.

Every write it makes is fenced by the job's lease (`JobStore.claim`): the repository it
hands the trainer refuses to publish once the job is no longer this run's, and the
record's final state is written only while the lease holds, so `failed` stays `failed`.
"""

from __future__ import annotations

import importlib
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from service.adaptation import load_job_data, load_job_unlabelled
from service.jobs.records import JobStore

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


def _watch_parent(parent: int, every_s: float) -> None:
    while os.getppid() == parent:
        time.sleep(every_s)
    os.kill(os.getpid(), signal.SIGKILL)  # orphaned: whoever owned our job is gone


def die_with_parent(parent: int, every_s: float = 0.2) -> None:
    """Exit at once when `parent` dies (even by SIGKILL): for pool workers (the API) and
    RQ work horses (the `csipos worker`), so no orphan trains on and publishes.

    A watch thread, not PR_SET_PDEATHSIG: that signal fires when the *thread* that
    spawned the process exits, and the pool spawns from short-lived request threads.
    """
    threading.Thread(
        target=_watch_parent, args=(parent, every_s), name="csipos-parent-watch", daemon=True
    ).start()


def run_rq_job(job_dir: str, job_id: str, model_dir: str, entrypoint: str) -> str:
    """`run_adapt_job` in an RQ work horse, which dies with its worker."""
    die_with_parent(os.getppid())
    return run_adapt_job(job_dir, job_id, model_dir, entrypoint)


def _heartbeat(
    store: JobStore, job_id: str, lease: str, stop: threading.Event, every: float
) -> None:
    while not stop.wait(every):
        try:
            if store.update_leased(job_id, lease, heartbeat=time.time()) is None:
                return  # the job is no longer ours: stop beating for it
        except Exception:  # a missed beat is harmless; the next one retries
            log.debug("heartbeat failed for job %s", job_id, exc_info=True)


def run_adapt_job(job_dir: str, job_id: str, model_dir: str, entrypoint: str) -> str:
    """Run one adaptation job to a terminal state; returns that state."""
    store = JobStore(Path(job_dir))
    claimed = store.claim(job_id, os.getpid())
    if claimed is None:
        record = store.get(job_id)
        return record.state if record else "missing"
    record, lease = claimed
    now = time.time()
    stop = threading.Event()
    beat = threading.Thread(
        target=_heartbeat,
        args=(store, job_id, lease, stop, 2.0),
        name="csipos-heartbeat",
        daemon=True,
    )
    beat.start()

    def progress(info: dict[str, Any]) -> None:
        keys = ("phase", "candidate", "step", "epoch", "val_me", "best_val_me")
        fields = {k: info.get(k) for k in keys}
        store.update_leased(job_id, lease, progress=fields, heartbeat=time.time())

    try:
        adapt = resolve_entrypoint(entrypoint)
        import torch

        from training.allocator import keep_freed_memory
        from training.repository import ModelRepository

        # Explicit threads: torch's default (all cores) per job oversubscribes the CPU
        # when jobs run side by side, and was ~3x slower even alone on 2 busy cores.
        torch.set_num_threads(record.train.threads)
        keep_freed_memory()
        data = load_job_data(store.data_path(job_id))
        tracks = load_job_unlabelled(store.data_path(job_id))
        # Only with tracks: custom entrypoints without the argument keep working.
        extra: dict[str, Any] = {} if tracks is None else {"unlabelled": tracks}
        opts = record.options
        config = record.train.config(opts)
        result = adapt(
            ModelRepository(Path(model_dir), fence=lambda: store.lease(job_id, lease)),
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
            **extra,
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
        done = store.update_leased(
            job_id,
            lease,
            state="succeeded",
            finished=time.time(),
            version=str(result.version),
            metrics=_jsonable(summary),
        )
        if done is None:
            log.error("job %s lost its lease before it could report success", job_id)
            return "failed"
        return "succeeded"
    except Exception as exc:
        stop.set()
        log.exception("job %s failed", job_id)
        # Clients read this: name the folders, not where they live on the server.
        error = f"{type(exc).__name__}: {exc}"
        for where, name in ((model_dir, "<models>"), (job_dir, "<jobs>")):
            error = error.replace(str(Path(where).resolve()), name).replace(where, name)
        store.update_leased(job_id, lease, state="failed", finished=time.time(), error=error)
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
