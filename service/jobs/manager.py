"""Queueing policy for adaptation jobs: one per site (409), a global limit (429)."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

from service.adaptation import AdaptOptions
from service.config import Settings
from service.errors import Conflict, JobNotFound, TooManyJobs
from service.jobs.executors import LocalExecutor, RQExecutor, make_executor
from service.jobs.records import TERMINAL, JobRecord, JobStore, TrainBudget, new_job_id

_OWNER = f"{socket.gethostname()}:{os.getpid()}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class JobManager:
    """Creates, checks and reports jobs; the executor runs them."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.store = JobStore(settings.job_dir)
        self.executor: LocalExecutor | RQExecutor = make_executor(settings, self.store)

    def open_jobs(self) -> list[JobRecord]:
        """Jobs queued or running (after noticing the ones whose worker died)."""
        return [r for r in self.store.all() if self._check(r).state not in TERMINAL]

    def check_accepting(self, site: str) -> None:
        """The busy-site rule (409) and the global limit (429), without side effects."""
        open_jobs = self.open_jobs()
        same = [r.id for r in open_jobs if r.site == site]
        if same:
            raise Conflict(
                f"site {site!r} already has an adaptation job in progress",
                {"job_id": same[0], "url": f"/jobs/{same[0]}"},
                retry_after=30,
            )
        if len(open_jobs) >= self.settings.max_concurrent_jobs:
            raise TooManyJobs(
                "too many adaptation jobs in progress; retry later",
                {"limit": self.settings.max_concurrent_jobs, "in_progress": len(open_jobs)},
                retry_after=30,
            )

    def submit(self, site: str, options: AdaptOptions, data_file: Path, samples: int) -> JobRecord:
        """Queue one job after the policy checks; `data_file` is validated job data
        (`service.adaptation`), moved into the job's folder."""
        # The flock makes the check-then-create atomic across API processes on this host.
        with self.store.locked():
            self.check_accepting(site)
            record = JobRecord(
                id=new_job_id(),
                site=site,
                options=options,
                train=TrainBudget(
                    epochs=self.settings.adapt_max_epochs,
                    min_steps=self.settings.adapt_min_steps,
                    max_steps=self.settings.adapt_max_steps,
                    patience=self.settings.adapt_patience,
                    batch_size=self.settings.adapt_batch_size,
                    threads=self.settings.adapt_thread_count,
                ),
                samples=samples,
                created=time.time(),
                executor="rq" if isinstance(self.executor, RQExecutor) else "local",
                owner=_OWNER,
            )
            self.store.job_dir(record.id).mkdir(parents=True)
            data_file.replace(self.store.data_path(record.id))
            self.store.write(record)
        try:
            self.executor.submit(record)
        except Exception as exc:
            self.store.fail_if_open(record.id, f"could not queue the job: {exc}")
            raise
        return record

    def get(self, job_id: str) -> JobRecord:
        record = self.store.get(job_id) if job_id.isalnum() else None
        if record is None:
            raise JobNotFound(f"no job {job_id!r}", {"job_id": job_id})
        return self._check(record)

    def _check(self, record: JobRecord) -> JobRecord:
        """Notice jobs whose worker died: no heartbeat, dead owner, or executor says so."""
        if record.state in TERMINAL:
            return record
        now = time.time()
        host, _, pid = record.owner.rpartition(":")
        if record.state == "running" and (now - (record.heartbeat or 0)) > (
            self.settings.job_stale_after_s
        ):
            self.store.fail_if_open(record.id, "worker stopped responding (no heartbeat)")
        elif (
            record.executor == "local"
            and host == socket.gethostname()
            and pid.isdigit()
            and not _pid_alive(int(pid))
        ):
            self.store.fail_if_open(record.id, "the service process that ran the job exited")
        elif record.executor == "rq" and isinstance(self.executor, RQExecutor):
            self.executor.reconcile(record)
        return self.store.get(record.id) or record

    def all(self) -> list[JobRecord]:
        return self.store.all()

    def close(self) -> None:
        self.executor.close()
