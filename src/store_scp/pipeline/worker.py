"""The import pipeline's steps: plain functions over the ports, safe to replay after a crash.

- `seal_orphans`: seal batches whose owner's lease expired (a receiver that died); a live
  receiver seals its own batches (see `pipeline.receiver`).
- `start_jobs`: admit a sealed batch's receipts, then StartDICOMImportJob with a client token
  derived from the batch, so a retried start can never create a second job.
- `poll_jobs`: follow running jobs; on the end, read the outputs (retrying while the manifest
  is missing) and give every receipt its outcome.
- `clean_up`: delete imported objects once kept long enough, move failed ones to quarantine
  (`pipeline.cleanup`).

Before a job starts, its batch's prefix holds exactly what it must import: objects of receipts
that failed without a job (not importable, superseded) are quarantined first, and a retry
batch's copies are made (`pipeline.retry`).

`Worker` runs them in a loop (the embedded default and `store-scp worker`); the AWS Lambda
handlers of the deployment will call the same functions.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from .. import failpoints, metrics
from ..datastore.base import Datastore, DatastoreError
from ..datastore.base import JobStatus as DatastoreJobStatus
from ..storage.base import ObjectStore
from ..storage.layout import JOB_OUTPUT_PREFIX, RETRY_PREFIX, job_object_key
from ..tracking.base import (
    Admission,
    ImportedInstance,
    JobStatus,
    ReceiptStatus,
    State,
    Tracker,
)
from ..tracking.reconcile import reconcile
from .cleanup import CleanupPolicy, clean_up, clean_up_receipt
from .policy import SealPolicy, StartLimiter, backoff
from .results import OutputNotReady, read_job_output
from .retry import stage_retry_copies

log = logging.getLogger("store_scp.pipeline")

#: Objects HealthImaging will not import: decided from the tracker row, before any job.
Importable = Callable[[str, str], str | None]  # (SOP class, transfer syntax) -> why not


@dataclass(slots=True)
class PipelineConfig:
    owner: str
    role_arn: str = ""  # HealthImaging assumes it to read the input (AWS only)
    #: Where job outputs go in the object store (outside every batch), unless the Pipeline
    #: is given an `outputs` store.
    output_prefix: str = JOB_OUTPUT_PREFIX
    seal: SealPolicy = field(default_factory=SealPolicy)
    limiter: StartLimiter = field(default_factory=StartLimiter)
    cleanup: CleanupPolicy = field(default_factory=CleanupPolicy)
    #: How long to wait for a manifest after the job ended before failing its receipts.
    output_wait_seconds: float = 600.0


def client_token(batch_id: str) -> str:
    """HealthImaging's clientToken: [A-Za-z0-9._-]{1,64}. Batch ids are made to fit."""
    return batch_id[-64:]


def job_name(batch_id: str) -> str:
    return batch_id[-64:]


class Pipeline:
    def __init__(
        self,
        tracker: Tracker,
        store: ObjectStore,
        datastore: Datastore,
        config: PipelineConfig,
        *,
        importable: Importable | None = None,
        outputs: ObjectStore | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.tracker = tracker
        self.store = store
        # Job outputs: the root of `outputs` (e.g. another bucket), else a folder of `store`.
        self.outputs, self._outputs_prefix = (
            (outputs, "") if outputs is not None else (store, config.output_prefix)
        )
        self.datastore = datastore
        self.config = config
        self.importable = importable
        self.clock = clock
        self._retry_at: dict[str, float] = {}  # batch id -> earliest next start attempt
        self._attempts: dict[str, int] = {}
        self._reconciled: set[str] = set()  # orphaned batches whose objects all have receipts
        self._next_cleanup = 0.0
        self._started_jobs = 0  # jobs per 1,000 instances, for the metric
        self._started_instances = 0

    # --- sealing ---------------------------------------------------------------------------

    def seal_orphans(self) -> list[str]:
        """Seal OPEN batches whose owner's lease expired (never a live owner's).

        A dead owner may have committed objects whose receipts it never wrote. They are
        registered first (the reconciler, over the batch's prefix, once per orphan): else the
        job would import objects that no receipt stands for, and they would never get an
        outcome.
        """
        now = self.clock()
        sealed = []
        for batch in self.tracker.open_batches():
            if batch.lease_expires_at > now:
                continue
            retry = batch.prefix.startswith(RETRY_PREFIX)
            if not retry and batch.batch_id not in self._reconciled:
                reconcile(self.store, self.tracker, prefix=batch.prefix)
                self._reconciled.add(batch.batch_id)
                batch = self.tracker.batch(batch.batch_id) or batch
            # A retry batch counts no files (its receipts were received elsewhere).
            if batch.files == 0 and not retry:
                continue
            if self.tracker.seal_batch(batch.batch_id, self.config.owner, now=now):
                failpoints.hit("worker.orphan_sealed")
                log.info("batch sealed", extra={"batch_id": batch.batch_id, "why": "orphaned"})
                sealed.append(batch.batch_id)
        return sealed

    # --- starting --------------------------------------------------------------------------

    def start_jobs(self) -> list[str]:
        started = []
        now = self.clock()
        # Starts interrupted after the job record was written (crash, retryable error).
        pending = [j.batch_id for j in self.tracker.jobs(JobStatus.STARTING)]
        pending += [b.batch_id for b in self.tracker.sealed_batches_without_job()]
        # Batches whose start keeps failing go last: they must not use up the start rate of
        # the others (stable: otherwise oldest first).
        pending.sort(key=lambda b: self._attempts.get(b, 0))
        for batch_id in pending:
            if self._retry_at.get(batch_id, 0) > now:
                continue
            running = len(self.tracker.jobs(JobStatus.SUBMITTED)) + len(
                self.tracker.jobs(JobStatus.IN_PROGRESS)
            )
            wait = self.config.limiter.wait_time(now, running)
            if wait is None or wait > 0:
                break  # a limit is reached: the batches queue, nothing is dropped
            if self._start(batch_id, now):
                started.append(batch_id)
        return started

    def _admit(self, batch_id: str, now: float) -> list[str] | None:
        """Admit the batch's receipts; the keys its job imports, or None to wait."""
        receipts = self.tracker.receipts_in_batch(batch_id)
        if self.importable is not None:
            for r in receipts:
                if r.state is State.RECEIVED:
                    why = self.importable(r.sop_class_uid, r.transfer_syntax_uid)
                    if why:
                        self.tracker.mark_failed([r.key], f"not importable: {why}", at=now)
        keys = [
            r.key for r in self.tracker.receipts_in_batch(batch_id) if r.state is not State.FAILED
        ]
        admission = self.tracker.mark_importing(keys, batch_id, now=now)
        if any(a in (Admission.BLOCKED, Admission.WAITING) for a in admission.values()):
            return None  # another job still imports one of its instances
        admitted = [k for k, a in admission.items() if a is Admission.ACCEPTED]
        # A retry batch's receipts were admitted by the retry.
        admitted += [r.key for r in self._retried_into(batch_id)]
        return admitted

    def _retried_into(self, batch_id: str) -> list[ReceiptStatus]:
        return [
            r
            for r in self.tracker.receipts_in_job(batch_id)
            if r.state is State.IMPORTING and r.batch_id != batch_id
        ]

    def _prepare_input(self, batch_id: str, now: float) -> bool:
        """Make the batch's prefix hold exactly what its job must import; False to wait."""
        ready = True
        for r in self.tracker.receipts_in_batch(batch_id):
            if r.state is State.FAILED and r.cleanup_action is None:
                # Failed without a job (not importable, superseded): out of the prefix first.
                ready &= clean_up_receipt(
                    self.tracker,
                    self.store,
                    r,
                    owner=self.config.owner,
                    policy=self.config.cleanup,
                    now=now,
                    clock=self.clock,
                )
        stage_retry_copies(self.tracker, self.store, batch_id, self._retried_into(batch_id))
        return ready

    def _start(self, batch_id: str, now: float) -> bool:
        job = self.tracker.batch_job(batch_id)
        batch = self.tracker.batch(batch_id)
        prefix = job.prefix if job else batch.prefix if batch else f"{batch_id}/"
        if job is None:
            admitted = self._admit(batch_id, now)
            if admitted is None:
                self._retry_at[batch_id] = now + 5
                return False
            ready = self._prepare_input(batch_id, now)
            if not admitted:
                # Nothing to import (all failed or superseded): no job. Looked at again now
                # and then: a retry's receipts may show late in an eventually consistent index.
                self._retry_at[batch_id] = now + 30
                return False
            if not ready:
                self._retry_at[batch_id] = now + 5  # another worker is cleaning one up
                return False
            failpoints.hit("worker.admitted")
            if not self.tracker.record_job_start(
                batch_id, client_token(batch_id), job_name(batch_id), now=now
            ):
                return False  # another worker won the start
            failpoints.hit("worker.job_recorded")
        self.config.limiter.take(now)
        try:
            job_id = self.datastore.start_import_job(
                job_name=job_name(batch_id),
                client_token=client_token(batch_id),
                input_uri=self.store.uri(prefix),
                output_uri=self.outputs.uri(self._outputs_prefix),
                role_arn=self.config.role_arn,
            )
        except DatastoreError as exc:
            attempt = self._attempts.get(batch_id, 0) + 1
            self._attempts[batch_id] = attempt
            if exc.retryable:
                delay = backoff(attempt, jitter=random.random())
                self._retry_at[batch_id] = now + delay
                self.tracker.update_job(batch_id, message=f"start retried: {exc}", now=now)
                log.warning(
                    "import job start failed; will retry",
                    extra={"batch_id": batch_id, "why": str(exc), "retry_in_s": round(delay, 1)},
                )
                return False
            self._fail_job(batch_id, f"import job could not start: {exc}", now)
            return False
        failpoints.hit("worker.job_started")
        self._attempts.pop(batch_id, None)
        self._retry_at.pop(batch_id, None)
        self.tracker.set_job_id(batch_id, job_id, submitted_at=now)
        self._count_started(len(self.tracker.receipts_in_job(batch_id)))
        log.info("import job started", extra={"batch_id": batch_id, "job_id": job_id})
        return True

    def _count_started(self, instances: int) -> None:
        metrics.IMPORT_JOBS.labels(event="started").inc()
        metrics.IMPORT_JOB_INSTANCES.inc(instances)
        self._started_jobs += 1
        self._started_instances += instances
        if self._started_instances:
            metrics.JOBS_PER_THOUSAND.set(1000 * self._started_jobs / self._started_instances)

    def _fail_job(self, batch_id: str, message: str, now: float) -> None:
        self.tracker.update_job(batch_id, status=JobStatus.FAILED, message=message, now=now)
        failpoints.hit("worker.job_failed")
        keys = [r.key for r in self.tracker.receipts_in_job(batch_id) if r.state is State.IMPORTING]
        self.tracker.mark_failed(keys, message, batch_id, at=now)
        self.tracker.update_job(batch_id, results_at=now, now=now)
        metrics.IMPORT_JOBS.labels(event="failed").inc()
        log.error("import job failed", extra={"batch_id": batch_id, "why": message})

    # --- following jobs ----------------------------------------------------------------------

    def poll_jobs(self) -> list[str]:
        """Follow running jobs; returns the batches whose results were recorded now."""
        done = []
        now = self.clock()
        for job in self.tracker.unfinished_jobs():
            if job.job_id is None:
                if job.status is JobStatus.FAILED:
                    # A start refused for good, interrupted before its receipts were marked.
                    self._fail_job(job.batch_id, job.message, now)
                    done.append(job.batch_id)
                continue
            try:
                status = self.datastore.get_import_job(job.job_id)
            except DatastoreError as exc:
                log.warning(
                    "import job status unavailable", extra={"job_id": job.job_id, "why": str(exc)}
                )
                continue
            if status.status in (DatastoreJobStatus.SUBMITTED, DatastoreJobStatus.IN_PROGRESS):
                self.tracker.update_job(
                    job.batch_id, status=JobStatus(status.status.value), now=now
                )
                continue
            self.tracker.update_job(
                job.batch_id,
                status=JobStatus(status.status.value),
                message=status.message or None,
                ended_at=status.ended_at,
                output_uri=self.datastore.job_output_prefix(status),
                now=now,
            )
            failpoints.hit("worker.job_ended")
            if status.status is DatastoreJobStatus.FAILED:
                self._fail_job(job.batch_id, f"import job failed: {status.message}", now)
                done.append(job.batch_id)
                continue
            if self._record_results(
                job.batch_id,
                job.prefix,
                self.datastore.job_output_prefix(status),
                status.ended_at,
                now,
            ):
                done.append(job.batch_id)
        return done

    def _record_results(
        self, batch_id: str, input_prefix: str, output_uri: str, ended_at: float | None, now: float
    ) -> bool:
        # A job started before the output location was reconfigured wrote into the old one.
        source = next(
            (s for s in (self.outputs, self.store) if output_uri.startswith(s.uri(""))), None
        )
        if source is None:
            raise ValueError(f"job output {output_uri} is outside the output store")
        prefix = output_uri[len(source.uri("")) :]
        receipts = self.tracker.receipts_in_job(batch_id)
        importing = {r.key for r in receipts if r.state is State.IMPORTING}
        inputs = {job_object_key(r.key, r.batch_id, batch_id): r.key for r in receipts}
        try:
            output = read_job_output(source, prefix, input_prefix, inputs)
        except OutputNotReady:
            if ended_at is not None and now - ended_at > self.config.output_wait_seconds:
                self._fail_job(batch_id, "job outputs never appeared", now)
                return True
            return False  # the manifest can appear after the status: read again later
        failpoints.hit("worker.outputs_read")
        self.tracker.mark_imported_many(
            batch_id,
            [
                ImportedInstance(i.key, i.image_set_id, i.is_primary, i.image_set_version)
                for i in output.imported
            ],
            at=now,
        )
        failpoints.hit("worker.results_partial")
        for failed in output.failed:
            self.tracker.mark_failed([failed.key], failed.reason, batch_id, at=now)
        answered = {i.key for i in output.imported} | {f.key for f in output.failed}
        missing = sorted(importing - answered)
        if missing:
            self.tracker.mark_failed(
                missing, "no result for this file in the job output", batch_id, at=now
            )
        conflicts = [i.key for i in output.imported if not i.is_primary]
        non_primary = len(conflicts)
        metrics.IMPORT_JOBS.labels(event="completed").inc()
        if conflicts:
            metrics.NON_PRIMARY.inc(non_primary)
            log.warning(
                "imported into non-primary image sets: metadata conflicts to reconcile",
                extra={"batch_id": batch_id, "count": non_primary, "keys": conflicts[:20]},
            )
        # One observation per study: from its last receipt in this batch. The batch's last
        # receipt alone would hide how long its earlier studies waited for the seal.
        last_of_study: dict[str, float] = {}
        for r in receipts:
            last = last_of_study.get(r.study_instance_uid, r.received_at)
            last_of_study[r.study_instance_uid] = max(last, r.received_at)
        for last in last_of_study.values():
            metrics.TIME_TO_AVAILABLE.observe(max(0.0, now - last))
        self.tracker.update_job(
            batch_id,
            counts={
                "imported": len(output.imported),
                "failed": len(output.failed) + len(missing),
                "non_primary": non_primary,
            },
            results_at=now,
            now=now,
        )
        log.info(
            "import job results recorded",
            extra={
                "batch_id": batch_id,
                "imported": len(output.imported),
                "failed": len(output.failed) + len(missing),
                "non_primary": non_primary,
                "unmatched": len(output.unmatched),
            },
        )
        return True

    # --- cleanup ---------------------------------------------------------------------------

    def clean_up(self) -> int:
        """Delete imported objects kept long enough, quarantine failed ones; returns how many
        receipts' cleanups were recorded."""
        now = self.clock()
        self._next_cleanup = now + self.config.cleanup.interval_seconds
        return clean_up(
            self.tracker,
            self.store,
            self.config.cleanup,
            owner=self.config.owner,
            now=now,
            clock=self.clock,
        )

    def run_once(self) -> None:
        self.seal_orphans()
        self.start_jobs()
        ended = self.poll_jobs()
        due = ended or self.clock() >= self._next_cleanup
        if due and self.clean_up() >= self.config.cleanup.batch_size:
            self._next_cleanup = 0.0  # more is due: go on at the next round


class Worker:
    """Runs a Pipeline in a background thread until stopped."""

    def __init__(self, pipeline: Pipeline, *, interval: float = 1.0) -> None:
        self.pipeline = pipeline
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pipeline", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 30) -> None:
        self._stop.set()
        self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.pipeline.run_once()
            except Exception:
                log.exception("pipeline step failed; retrying")
            self._stop.wait(self.interval)
