"""Import jobs (understanding-import-jobs.html): the jobs table behind StartDICOMImportJob,
GetDICOMImportJob and ListDICOMImportJobs, the start-rate throttle, and the runner that claims
SUBMITTED jobs and runs them in a thread pool.

A job is SUBMITTED -> IN_PROGRESS -> COMPLETED | FAILED. A `clientToken` makes the start
idempotent: the same token with the same parameters answers the existing job, with others a
ConflictException. 100 concurrent jobs per datastore (configurable) answer
ServiceQuotaExceededException. StartDICOMImportJob's throttle (0.25 TPS with a burst of 10 in
HealthImaging's throttling-limits.html) is off unless a rate is given.

Several threads and several processes may run jobs from one datastore folder: a claim is an
atomic update, each running process holds a locked file under `runners/`, and a job whose
runner process died (its lock is free) is made SUBMITTED again and run by a live runner.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import secrets
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from .api_values import decode_token, encode_token, ts
from .database import Database
from .errors import CONFLICT, NOT_FOUND, QUOTA, THROTTLING, VALIDATION, api_message, datastore_error

log = logging.getLogger(__name__)

_JOB_COLUMNS = (
    "job_id, job_name, client_token, status, role_arn, input_uri, output_uri, submitted_at, "
    "ended_at, message"
)


def default_job_threads(cores: int | None = None) -> int:
    """Half the cores, at least 2 (one job computes while another waits on its input, its
    fsyncs or the database) and at most 4 (jobs mostly hold the interpreter lock)."""
    cores = cores if cores is not None else os.cpu_count() or 1
    return min(4, max(2, cores // 2))


def job_output_uri(output_uri: str, datastore_id: str, job_id: str) -> str:
    """Where a job's outputs land: `{outputS3Uri}/{datastoreId}-DicomImport-{jobId}/`."""
    return f"{output_uri.rstrip('/')}/{datastore_id}-DicomImport-{job_id}/"


class StartThrottle:
    """A token bucket for StartDICOMImportJob; `rate=None` never throttles."""

    def __init__(self, rate: float | None, burst: int) -> None:
        self._rate = rate
        self._burst = float(burst)
        self._tokens = float(burst)
        self._tokens_at = time.monotonic()
        self._lock = threading.Lock()

    def take(self) -> bool:
        if self._rate is None:
            return True
        with self._lock:
            now = time.monotonic()
            self._tokens = min(self._burst, self._tokens + (now - self._tokens_at) * self._rate)
            self._tokens_at = now
            if self._tokens < 1.0:
                return False
            self._tokens -= 1.0
            return True


class JobTable:
    """The `jobs` table, answered in the shapes of botocore's medical-imaging model."""

    def __init__(
        self,
        db: Database,
        datastore_id: str,
        *,
        max_concurrent_jobs: int,
        throttle: StartThrottle,
    ) -> None:
        self.db = db
        self.datastore_id = datastore_id
        self.max_concurrent_jobs = max_concurrent_jobs
        self.throttle = throttle

    def first_submitted_at(self) -> float | None:
        row = self.db.conn().execute("SELECT MIN(submitted_at) FROM jobs").fetchone()
        return float(row[0]) if row and row[0] else None

    def start(
        self,
        *,
        job_name: str | None,
        client_token: str,
        input_uri: str,
        output_uri: str,
        role_arn: str,
    ) -> dict[str, Any]:
        """StartDICOMImportJob's response; the job is SUBMITTED."""
        for name, uri in (("inputS3Uri", input_uri), ("outputS3Uri", output_uri)):
            if urlparse(uri).scheme not in ("file", "s3"):
                raise datastore_error(VALIDATION, f"{name} must be an s3:// or file:// URI")
        if not client_token:
            raise datastore_error(VALIDATION, "clientToken is required")
        if not self.throttle.take():
            raise datastore_error(THROTTLING, "Rate exceeded for StartDICOMImportJob")
        now = time.time()
        job_id = uuid.uuid4().hex
        with self.db.write() as db:
            row = db.execute(
                f"SELECT {_JOB_COLUMNS} FROM jobs WHERE client_token = ?", (client_token,)
            ).fetchone()
            if row is not None:
                same = (row[5], row[6], row[4]) == (input_uri, output_uri, role_arn) and (
                    not job_name or row[1] == job_name
                )
                if not same:
                    raise datastore_error(
                        CONFLICT, "clientToken was already used with different parameters"
                    )
                return {
                    "datastoreId": self.datastore_id,
                    "jobId": row[0],
                    "jobStatus": row[3],
                    "submittedAt": ts(row[7]),
                }
            active = db.execute(
                "SELECT COUNT(*) FROM jobs WHERE status IN ('SUBMITTED', 'IN_PROGRESS')"
            ).fetchone()[0]
            if active >= self.max_concurrent_jobs:
                raise datastore_error(
                    QUOTA,
                    f"Maximum concurrent import jobs per data store reached "
                    f"({self.max_concurrent_jobs})",
                )
            db.execute(
                "INSERT INTO jobs (job_id, job_name, client_token, status, role_arn, input_uri, "
                "output_uri, submitted_at) VALUES (?, ?, ?, 'SUBMITTED', ?, ?, ?, ?)",
                (job_id, job_name or job_id, client_token, role_arn, input_uri, output_uri, now),
            )
        return {
            "datastoreId": self.datastore_id,
            "jobId": job_id,
            "jobStatus": "SUBMITTED",
            "submittedAt": ts(now),
        }

    def row(self, job_id: str) -> dict[str, Any]:
        row = (
            self.db.conn()
            .execute(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE job_id = ?", (job_id,))
            .fetchone()
        )
        if row is None:
            raise datastore_error(NOT_FOUND, f"Import job {job_id} does not exist")
        names = [c.strip() for c in _JOB_COLUMNS.split(",")]
        return dict(zip(names, row, strict=True))

    def properties(self, job_id: str) -> dict[str, Any]:
        """GetDICOMImportJob's `jobProperties`."""
        row = self.row(job_id)
        props: dict[str, Any] = {
            "jobId": row["job_id"],
            "jobName": row["job_name"],
            "jobStatus": row["status"],
            "datastoreId": self.datastore_id,
            "dataAccessRoleArn": row["role_arn"],
            "submittedAt": ts(row["submitted_at"]),
            "inputS3Uri": row["input_uri"],
            "outputS3Uri": row["output_uri"],
        }
        if row["ended_at"] is not None:
            props["endedAt"] = ts(row["ended_at"])
        if row["message"]:
            props["message"] = row["message"]
        return props

    def summaries(
        self,
        *,
        job_status: str | None = None,
        max_results: int | None = None,
        next_token: str | None = None,
    ) -> dict[str, Any]:
        """ListDICOMImportJobs: newest first."""
        offset = decode_token(next_token)
        limit = max_results or 50
        sql = f"SELECT {_JOB_COLUMNS} FROM jobs"
        args: list[Any] = []
        if job_status:
            sql += " WHERE status = ?"
            args.append(job_status)
        sql += " ORDER BY seq DESC LIMIT ? OFFSET ?"
        rows = self.db.conn().execute(sql, [*args, limit + 1, offset]).fetchall()
        summaries = []
        for row in rows[:limit]:
            summary: dict[str, Any] = {
                "jobId": row[0],
                "jobName": row[1],
                "jobStatus": row[3],
                "datastoreId": self.datastore_id,
                "dataAccessRoleArn": row[4],
                "submittedAt": ts(row[7]),
            }
            if row[8] is not None:
                summary["endedAt"] = ts(row[8])
            if row[9]:
                summary["message"] = row[9]
            summaries.append(summary)
        out: dict[str, Any] = {"jobSummaries": summaries}
        if len(rows) > limit:
            out["nextToken"] = encode_token(offset + limit)
        return out

    def finish(self, job_id: str, status: str, message: str | None = None) -> None:
        with self.db.write() as db:
            db.execute(
                "UPDATE jobs SET status = ?, ended_at = ?, message = ? WHERE job_id = ?",
                (status, time.time(), api_message(message) if message else None, job_id),
            )

    def claim_next(self, runner: str) -> str | None:
        """Move the oldest SUBMITTED job to IN_PROGRESS under `runner`; its id."""
        with self.db.write() as db:
            row = db.execute(
                "SELECT job_id FROM jobs WHERE status = 'SUBMITTED' ORDER BY seq LIMIT 1"
            ).fetchone()
            if row is None:
                return None
            db.execute(
                "UPDATE jobs SET status = 'IN_PROGRESS', runner = ? WHERE job_id = ?",
                (runner, row[0]),
            )
            return str(row[0])

    def in_progress(self) -> list[tuple[str, str | None]]:
        """(job id, runner) of every IN_PROGRESS job."""
        rows = (
            self.db.conn()
            .execute("SELECT job_id, runner FROM jobs WHERE status = 'IN_PROGRESS'")
            .fetchall()
        )
        return [(str(job_id), runner) for job_id, runner in rows]

    def resubmit(self, job_id: str, runner: str | None) -> None:
        """Make a job whose runner died SUBMITTED again (if nobody did meanwhile)."""
        with self.db.write() as db:
            db.execute(
                "UPDATE jobs SET status = 'SUBMITTED', runner = NULL "
                "WHERE job_id = ? AND status = 'IN_PROGRESS' AND runner IS ?",
                (job_id, runner),
            )


class JobRunner:
    """Claims SUBMITTED jobs and runs `run(job_id)` for each in a pool of `threads` threads.

    `held()` true keeps jobs SUBMITTED (a test hook). `stopping` is set by `stop()`: running
    jobs finish first, and waits inside a job end early.
    """

    def __init__(
        self,
        jobs: JobTable,
        runners_dir: Path,
        run: Callable[[str], None],
        *,
        held: Callable[[], bool],
        stopping: threading.Event,
        threads: int = 2,
        poll_interval: float = 0.2,
    ) -> None:
        self.jobs = jobs
        self.runners_dir = runners_dir
        self._run = run
        self._held = held
        self.stopping = stopping
        self._wake = threading.Event()
        self._poll_interval = poll_interval
        self._threads = max(1, threads)
        self._running: set[str] = set()
        self._running_lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None
        self._thread: threading.Thread | None = None
        self._name = ""
        self._fd: int | None = None

    def start(self) -> None:
        self._claim_runner()
        self._pool = ThreadPoolExecutor(self._threads, thread_name_prefix="datastore-job")
        self._thread = threading.Thread(target=self._loop, name="datastore-runner", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        """Look for work now (a job was submitted, held jobs were released)."""
        self._wake.set()

    def stop(self) -> None:
        self.stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.unlink(self.runners_dir / f"{self._name}.lock")
            os.close(self._fd)
            self._fd = None

    def _claim_runner(self) -> None:
        self.runners_dir.mkdir(parents=True, exist_ok=True)
        self._name = f"{os.getpid():x}-{secrets.token_hex(4)}"
        path = self.runners_dir / f"{self._name}.lock"
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        fcntl.flock(fd, fcntl.LOCK_EX)
        self._fd = fd

    def _runner_alive(self, name: str | None) -> bool:
        if not name:
            return False
        if name == self._name:
            return True
        path = self.runners_dir / f"{name}.lock"
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(path)
        return False

    def _recover_orphans(self) -> None:
        for job_id, runner in self.jobs.in_progress():
            if not self._runner_alive(runner):
                log.warning("import job %s lost its runner; starting it again", job_id)
                self.jobs.resubmit(job_id, runner)

    def _loop(self) -> None:
        last_recovery = 0.0
        while not self.stopping.is_set():
            try:
                if time.monotonic() - last_recovery > 5.0:
                    last_recovery = time.monotonic()
                    self._recover_orphans()
                held = self._held()
                while not held and not self.stopping.is_set():
                    with self._running_lock:
                        if len(self._running) >= self._threads:
                            break
                    job_id = self.jobs.claim_next(self._name)
                    if job_id is None:
                        break
                    with self._running_lock:
                        self._running.add(job_id)
                    assert self._pool is not None
                    self._pool.submit(self._run_job, job_id)
            except Exception:
                log.exception("the datastore's job runner hit an error")
            self._wake.wait(self._poll_interval)
            self._wake.clear()

    def _run_job(self, job_id: str) -> None:
        try:
            self._run(job_id)
        except Exception as exc:
            log.exception("import job %s failed", job_id)
            with contextlib.suppress(Exception):
                self.jobs.finish(job_id, "FAILED", f"Internal error: {type(exc).__name__}")
        finally:
            with self._running_lock:
                self._running.discard(job_id)
            self._wake.set()
