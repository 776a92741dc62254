"""Where jobs run: a spawn process pool (embedded default) or RQ on Redis (scale-out)."""

from __future__ import annotations

import logging
import multiprocessing
import os
import threading
from concurrent.futures import Future, ProcessPoolExecutor

from service.config import Settings
from service.jobs.records import JobRecord, JobStore
from service.jobs.task import die_with_parent, run_adapt_job, run_rq_job

log = logging.getLogger("csipos.service.jobs")


class LocalExecutor:
    """A `spawn` process pool: training never shares the API's interpreter or event loop.

    Its workers die with the API process (`die_with_parent`) and are terminated when the
    API shuts down, so no orphan trains on after its owner is gone.
    """

    name = "local"

    def __init__(self, settings: Settings, store: JobStore) -> None:
        self._settings = settings
        self._store = store
        self._pool: ProcessPoolExecutor | None = None
        self._lock = threading.Lock()

    def _get_pool(self) -> ProcessPoolExecutor:
        with self._lock:
            if self._pool is None:
                self._pool = ProcessPoolExecutor(
                    max_workers=self._settings.max_concurrent_jobs,
                    mp_context=multiprocessing.get_context("spawn"),
                    initializer=die_with_parent,
                    initargs=(os.getpid(),),
                )
            return self._pool

    def submit(self, record: JobRecord) -> None:
        future = self._get_pool().submit(
            run_adapt_job,
            str(self._settings.job_dir),
            record.id,
            str(self._settings.model_dir),
            self._settings.adapt_entrypoint,
        )
        job_id = record.id
        future.add_done_callback(lambda f: self._done(job_id, f))

    def _done(self, job_id: str, future: Future[str]) -> None:
        if future.cancelled():
            self._store.fail_if_open(job_id, "the service stopped before the job ran")
            return
        exc = future.exception()
        if exc is None:
            return
        # The worker died (killed, OOM) or could not start: the record says so, and a
        # broken pool is replaced so later jobs still run.
        log.error("job %s: worker ended abnormally: %r", job_id, exc)
        self._store.fail_if_open(job_id, f"worker process ended abnormally: {exc!r}")
        with self._lock:
            pool = self._pool
            if pool is not None and getattr(pool, "_broken", False):
                self._pool = None
                pool.shutdown(wait=False, cancel_futures=True)

    def reconcile(self, record: JobRecord) -> None:
        return None

    def close(self) -> None:
        """Stop the pool and its workers (a running job is failed by `_done`)."""
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is None:
            return
        processes = list(getattr(pool, "_processes", {}).values())
        pool.shutdown(wait=False, cancel_futures=True)
        for proc in processes:
            if proc.is_alive():
                proc.terminate()
        for proc in processes:
            proc.join(timeout=5)
            if proc.is_alive():
                proc.kill()


class RQExecutor:
    """Enqueue to RQ; `csipos worker` processes (anywhere sharing the dirs) run the jobs."""

    name = "rq"

    def __init__(self, settings: Settings, store: JobStore) -> None:
        from redis import Redis
        from rq import Queue

        assert settings.redis_url is not None
        self._settings = settings
        self._store = store
        self._redis = Redis.from_url(settings.redis_url)
        self._queue = Queue(settings.rq_queue, connection=self._redis)

    def submit(self, record: JobRecord) -> None:
        self._queue.enqueue(
            run_rq_job,
            str(self._settings.job_dir.resolve()),
            record.id,
            str(self._settings.model_dir.resolve()),
            self._settings.adapt_entrypoint,
            job_id=record.id,
            job_timeout=24 * 3600,
            result_ttl=24 * 3600,
            failure_ttl=7 * 24 * 3600,
        )

    def reconcile(self, record: JobRecord) -> None:
        from rq.exceptions import NoSuchJobError
        from rq.job import Job, JobStatus

        try:
            job = Job.fetch(record.id, connection=self._redis)
        except NoSuchJobError:
            return
        except Exception:  # Redis down: the heartbeat check still applies
            log.warning("cannot reach Redis to check job %s", record.id)
            return
        status = job.get_status(refresh=False)
        if status in (JobStatus.FAILED, JobStatus.STOPPED, JobStatus.CANCELED):
            self._store.fail_if_open(record.id, f"RQ reports the job {status.value}")

    def ping(self) -> bool:
        try:
            return bool(self._redis.ping())
        except Exception:
            return False

    def close(self) -> None:
        self._redis.close()


def make_executor(settings: Settings, store: JobStore) -> LocalExecutor | RQExecutor:
    return RQExecutor(settings, store) if settings.redis_url else LocalExecutor(settings, store)
