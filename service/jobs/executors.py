"""Where jobs run: a spawn process pool (embedded default) or RQ on Redis (scale-out)."""

from __future__ import annotations

import logging
import multiprocessing
import threading
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Protocol

from service.config import Settings
from service.jobs.records import JobRecord, JobStore
from service.jobs.task import run_adapt_job

log = logging.getLogger("csipos.service.jobs")


class Executor(Protocol):
    name: str

    def submit(self, record: JobRecord) -> None: ...

    def reconcile(self, record: JobRecord) -> None:
        """Mark the record failed if the executor knows the job died."""

    def close(self) -> None: ...


class LocalExecutor:
    """A `spawn` process pool: training never shares the API's interpreter or event loop."""

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
        with self._lock:
            if self._pool is not None:
                self._pool.shutdown(wait=False, cancel_futures=True)
                self._pool = None


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
            run_adapt_job,
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
