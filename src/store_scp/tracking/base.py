"""The Tracker port: one row per receipt of a SOP instance, and its fate; batches and jobs.

A receipt is one received copy of a SOP instance (UID + digest + time). Receiving the same
SOP Instance UID twice makes two receipts; none is overwritten.

Receipts
--------
Each receipt has a state::

    RECEIVED --mark_importing--> IMPORTING --mark_imported--> IMPORTED (image set, isPrimary)
        |                            |
        |                            +--mark_failed(batch)--> FAILED (reason)
        +--mark_failed(no batch)---------------------------> FAILED (e.g. "not importable: ...")
        +--mark_importing, superseded----------------------> FAILED (SUPERSEDED_REASON)
    FAILED --mark_importing(retry=True)--> IMPORTING           (a new attempt; history kept)

Every outcome is an *attempt* (`attempts(key)`): an import attempt is opened by
`mark_importing` and closed by `mark_imported` / `mark_failed`; a failure without a job (not
importable, superseded) is an attempt that opens and closes at once. A retry is a new attempt
on the same receipt; the receipt row shows the newest attempt. A retry imports from a batch of
its own (a retry batch, whose prefix holds copies of the retried objects): `receipts_in_job`
answers which receipts a job imports, `receipts_in_batch` which were received in a batch.

Cleanup
-------
What was done with the object of an outcome (deleted, quarantined) is recorded beside it by
`record_cleanup`, on the receipt and on its newest attempt, never in place of the outcome. A new
attempt starts without a cleanup: its own outcome gets its own. `cleanup_due` lists the outcomes
whose cleanup is not recorded; `claim_cleanup` gives one of them to one worker at a time (a
conditional write with a lease, so a worker that died is replaced once its lease expired), so
two workers never clean up the same receipt at once. A claim outlives a new attempt: the
cleanup of a retry's outcome waits until the cleanup of the outcome before it has stopped.

The import pipeline names a job by the id of the batch it imports (the job record's key): the
datastore's job id does not exist yet when the receipts are admitted, and a start can fail
before one exists. Every transition is conditional and replay-safe: calling it again after a
crash returns the same answer and changes nothing, and a stale call (a job's results applied
after the receipt moved on to a newer attempt) is refused.

Ordering rules
--------------
HealthImaging keeps the latest *imported* copy of an instance, so the tracker enforces, per SOP
Instance UID, with receipts ordered by (received_at, key):

1. *One at a time*: at most one receipt of a SOP instance is IMPORTING. `mark_importing` admits
   a receipt only while no other receipt of its instance is IMPORTING (it answers BLOCKED).
2. *Never older after newer*: a receipt older than an IMPORTED receipt of its instance is never
   admitted; `mark_importing` marks it FAILED with `SUPERSEDED_REASON` (a final outcome, not an
   error to retry) and answers SUPERSEDED. If a newer receipt is IMPORTING, the older one is
   BLOCKED first and SUPERSEDED once the newer one is IMPORTED.

An import job imports every object under its batch's prefix, so the batcher starts a job only
when `mark_importing` admitted every receipt of the batch (all ACCEPTED, SUPERSEDED or FINAL),
and first moves the objects of SUPERSEDED receipts out of the prefix (quarantine, then
`record_cleanup`). `mark_importing` takes the instances in ascending SOP Instance UID order and
stops at the first BLOCKED one (the rest answer WAITING), keeping what it admitted: a batch
waiting for an instance holds only instances that sort before it, so two batches can never wait
for each other (no deadlock), and the call is simply repeated until nothing blocks. A batch that
is given up must `mark_failed` its admitted receipts to release them. `receipts_blocking` tells
which receipts of other jobs a batch waits for.

Batches and jobs
----------------
A batch is a prefix that one import job imports whole. Its owner (the receiving process) holds a
lease, renewed by `renew_lease`; `seal_batch` succeeds for the owner, or for anyone once the
lease expired (a crashed task). A batch seen only through its receipts (`record_receipts` for an
unknown batch id, e.g. the reconciler after a crash) is created OPEN with no owner and an
expired lease, so any worker may seal it. `record_job_start` creates the batch's one job record,
exactly once across workers; `set_job_id` and `update_job` follow the datastore's job.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

__all__ = [
    "JOB_STATUS_ORDER",
    "SUPERSEDED_REASON",
    "Admission",
    "Attempt",
    "Batch",
    "BatchNotSealedError",
    "BatchState",
    "ImportedInstance",
    "Job",
    "JobStatus",
    "Receipt",
    "ReceiptStatus",
    "State",
    "Tracker",
    "TrackerError",
    "admission_by_state",
    "is_superseded",
    "job_status_allowed_from",
]

#: The reason of a receipt that must never be imported because a newer receipt of the same SOP
#: instance was imported.
SUPERSEDED_REASON = "superseded by a newer receipt"


class State(StrEnum):
    RECEIVED = "RECEIVED"
    IMPORTING = "IMPORTING"
    IMPORTED = "IMPORTED"
    FAILED = "FAILED"


class Admission(StrEnum):
    """What `mark_importing` did with one receipt."""

    ACCEPTED = "ACCEPTED"  # IMPORTING in this batch's job (now, or already: a replay)
    BLOCKED = "BLOCKED"  # another receipt of the instance (or this one) is IMPORTING elsewhere
    WAITING = "WAITING"  # not looked at: an instance sorting before it was BLOCKED
    SUPERSEDED = "SUPERSEDED"  # FAILED with SUPERSEDED_REASON: must not be imported
    FINAL = "FINAL"  # already IMPORTED, or FAILED and not retried: nothing to do
    UNKNOWN = "UNKNOWN"  # no such receipt


class BatchState(StrEnum):
    OPEN = "OPEN"
    SEALED = "SEALED"


class JobStatus(StrEnum):
    """Status of a job record: STARTING until the datastore accepted the start (job id known),
    then the datastore's own statuses."""

    STARTING = "STARTING"
    SUBMITTED = "SUBMITTED"
    IN_PROGRESS = "IN_PROGRESS"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"


#: A job status only moves forward in this order; COMPLETED and FAILED are final.
JOB_STATUS_ORDER: Mapping[JobStatus, int] = {
    JobStatus.STARTING: 0,
    JobStatus.SUBMITTED: 1,
    JobStatus.IN_PROGRESS: 2,
    JobStatus.COMPLETED: 3,
    JobStatus.FAILED: 3,
}


def job_status_allowed_from(new: JobStatus) -> frozenset[JobStatus]:
    """The statuses a job record may hold for `update_job(status=new)` to apply: any earlier
    non-final status, or `new` itself (a replay). A final status never changes."""
    rank = JOB_STATUS_ORDER[new]
    return frozenset(
        status
        for status, order in JOB_STATUS_ORDER.items()
        if status == new or (order <= rank and order < 3)
    )


class TrackerError(RuntimeError):
    """The tracker could not complete an operation (e.g. contention that did not clear)."""


class BatchNotSealedError(TrackerError):
    """A job can only be started on a sealed batch."""


@dataclass(frozen=True, slots=True)
class Receipt:
    key: str  # object key in the ObjectStore; unique per receipt
    batch_id: str
    sop_instance_uid: str
    sop_class_uid: str
    study_instance_uid: str
    series_instance_uid: str
    transfer_syntax_uid: str
    size: int  # bytes of the stored Part 10 file
    sha256: str  # hex digest of the dataset bytes as received
    calling_ae: str
    peer: str  # "ip:port", or "" when unknown (reconciled objects)
    received_at: float  # unix time


@dataclass(frozen=True, slots=True)
class ReceiptStatus:
    """A receipt and its fate: what `where`, `failures` and `receipts_in_batch` answer."""

    key: str
    batch_id: str  # the batch the object was received under
    sop_instance_uid: str
    series_instance_uid: str
    study_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    size: int
    sha256: str
    calling_ae: str
    peer: str
    received_at: float
    state: State
    state_changed_at: float
    attempt: int  # attempts so far (0: never tried)
    job_batch_id: str | None  # batch whose job runs/ran the newest attempt (None: no job)
    job_id: str | None  # that job's datastore job id, once known
    image_set_id: str | None
    is_primary: bool | None
    image_set_version: str | None
    reason: str | None
    cleanup_action: str | None
    cleanup_at: float | None

    @property
    def receipt(self) -> Receipt:
        return Receipt(
            key=self.key,
            batch_id=self.batch_id,
            sop_instance_uid=self.sop_instance_uid,
            sop_class_uid=self.sop_class_uid,
            study_instance_uid=self.study_instance_uid,
            series_instance_uid=self.series_instance_uid,
            transfer_syntax_uid=self.transfer_syntax_uid,
            size=self.size,
            sha256=self.sha256,
            calling_ae=self.calling_ae,
            peer=self.peer,
            received_at=self.received_at,
        )


@dataclass(frozen=True, slots=True)
class Attempt:
    """One attempt on a receipt: an import by a job, or a failure without a job."""

    key: str
    attempt: int  # 1, 2, ...
    batch_id: str | None  # the job's batch; None for a failure without a job
    job_id: str | None
    started_at: float
    ended_at: float | None  # None while the job runs
    outcome: State | None  # IMPORTED or FAILED; None while the job runs
    reason: str | None
    image_set_id: str | None
    is_primary: bool | None
    image_set_version: str | None
    cleanup_action: str | None = None  # what was done with the object of this outcome
    cleanup_at: float | None = None


@dataclass(frozen=True, slots=True)
class ImportedInstance:
    """One success line of a job's output, mapped back to its receipt."""

    key: str
    image_set_id: str
    is_primary: bool
    image_set_version: str | None = None


@dataclass(frozen=True, slots=True)
class Batch:
    batch_id: str
    prefix: str  # object-store prefix the job imports, e.g. "<batch-id>/"
    owner: str  # "" for a batch seen only through its receipts
    state: BatchState
    lease_seconds: float
    lease_expires_at: float
    opened_at: float
    sealed_at: float | None
    sealed_by: str | None
    files: int  # receipts recorded under the batch
    bytes: int
    first_receipt_at: float | None
    last_receipt_at: float | None
    open_associations: int  # as last reported by the owner
    last_association_end_at: float | None


@dataclass(frozen=True, slots=True)
class Job:
    batch_id: str  # the record's key: one job per batch
    prefix: str
    client_token: str
    job_name: str
    job_id: str | None  # the datastore's, once the start was accepted
    status: JobStatus
    message: str
    counts: Mapping[str, int] = field(default_factory=dict)
    created_at: float = 0.0  # start recorded
    submitted_at: float | None = None  # job id recorded
    updated_at: float = 0.0
    ended_at: float | None = None  # the datastore's end time
    output_uri: str | None = None
    results_at: float | None = None  # every receipt's outcome recorded from the outputs
    cleaned_at: float | None = None  # cleanup of the job's objects done


def is_superseded(state: str, job_batch_id: str | None, reason: str | None) -> bool:
    """A receipt marked never to be imported: FAILED, without a job, for SUPERSEDED_REASON."""
    return state == State.FAILED and job_batch_id is None and reason == SUPERSEDED_REASON


def admission_by_state(
    state: str, job_batch_id: str | None, reason: str | None, batch_id: str, retry: bool
) -> Admission | None:
    """What `mark_importing` into `batch_id` answers for the newest receipt of an instance,
    from the receipt's own state alone; None if it may be admitted once the other receipts of
    its instance allow it (the ordering rules). For the adapters."""
    if state == State.IMPORTING:
        return Admission.ACCEPTED if job_batch_id == batch_id else Admission.BLOCKED
    if state == State.IMPORTED:
        return Admission.FINAL
    if state == State.FAILED:
        if is_superseded(state, job_batch_id, reason):
            return Admission.SUPERSEDED
        if not retry:
            return Admission.FINAL
    return None


class Tracker(ABC):
    """The port. Adapters: tracking.sqlite.SqliteTracker (embedded), tracking.dynamodb.
    DynamoDbTracker.

    The calls that take a time or a list of keys, or change a batch or a job, are written
    here once: they resolve their arguments (times default to the current time, keys lose
    their repeats in order, a job's changes are normalised, calls without an owner are
    refused) and call the adapter's hook of the same name with a leading underscore. Tests
    pass times explicitly.
    """

    # -- receipts, as the receiver writes them ---------------------------------------------

    def record_receipt(self, receipt: Receipt) -> bool:
        """Insert a RECEIVED row. Idempotent by key: returns False if the key was known."""
        return self.record_receipts([receipt]) == 1

    @abstractmethod
    def record_receipts(self, receipts: Sequence[Receipt]) -> int:
        """record_receipt for many at once (one transaction where the store has them);
        returns how many keys were new. New receipts count in their batch (files, bytes,
        first/last receipt time); an unknown batch id is created OPEN, unowned."""

    @abstractmethod
    def known_keys(self, keys: Iterable[str]) -> set[str]:
        """The subset of `keys` that already has a row."""

    @abstractmethod
    def receipts_for_instance(self, sop_instance_uid: str) -> list[Receipt]:
        """Every receipt of one SOP instance, oldest first."""

    # -- receipt transitions --------------------------------------------------------------

    def mark_importing(
        self,
        keys: Iterable[str],
        batch_id: str,
        *,
        retry: bool = False,
        now: float | None = None,
    ) -> dict[str, Admission]:
        """Admit receipts into the job of `batch_id` (RECEIVED, or FAILED with `retry`, ->
        IMPORTING, a new attempt). See the module docstring for the ordering rules."""
        wanted = list(dict.fromkeys(keys))
        result = self._mark_importing(wanted, batch_id, retry, _now(now))
        return {key: result[key] for key in wanted}

    def mark_imported(
        self,
        key: str,
        batch_id: str,
        image_set_id: str,
        is_primary: bool,
        image_set_version: str | None = None,
        *,
        at: float | None = None,
    ) -> bool:
        """IMPORTING in `batch_id`'s job -> IMPORTED. True if the receipt is now IMPORTED by
        that job (also on a replay); False if refused (not in that job's attempt)."""
        done = self.mark_imported_many(
            batch_id, [ImportedInstance(key, image_set_id, is_primary, image_set_version)], at=at
        )
        return key in done

    def mark_imported_many(
        self, batch_id: str, results: Iterable[ImportedInstance], *, at: float | None = None
    ) -> set[str]:
        """mark_imported for many; returns the keys that are IMPORTED by that job."""
        return self._mark_imported_many(batch_id, {r.key: r for r in results}, _now(at))

    def mark_failed(
        self,
        keys: Iterable[str],
        reason: str,
        batch_id: str | None = None,
        *,
        at: float | None = None,
    ) -> set[str]:
        """With `batch_id`: IMPORTING in that batch's job -> FAILED. Without: RECEIVED ->
        FAILED at once, without a job (e.g. "not importable: ..."). Returns the keys that
        carry this outcome after the call (applied now or replayed); others were refused."""
        return self._mark_failed(list(dict.fromkeys(keys)), reason, batch_id, _now(at))

    def record_cleanup(
        self, key: str, action: str, at: float | None = None, *, attempt: int | None = None
    ) -> bool:
        """Record what was done with the object of an IMPORTED or FAILED receipt (e.g.
        "deleted", "quarantined:<key>"), beside its outcome: on the receipt and on its newest
        attempt; the claim of `claim_cleanup` ends. With `attempt`, only while that is the
        newest attempt (the cleanup of an outcome a retry has replaced is refused). A replay
        keeps the first time and answers True for the same action. False if the receipt is
        unknown, not final or not in `attempt`."""
        return self._record_cleanup(key, action, _now(at), attempt)

    def claim_cleanup(
        self,
        key: str,
        attempt: int,
        owner: str,
        *,
        lease_seconds: float,
        now: float | None = None,
    ) -> bool:
        """Claim the cleanup of a final receipt in its newest attempt `attempt`, for `owner`,
        until `now + lease_seconds`. True for one owner at a time (the holder may renew);
        False if the receipt is not final in `attempt`, its cleanup is recorded, or another
        owner's claim has not expired."""
        at = _now(now)
        return self._claim_cleanup(key, attempt, owner, at + lease_seconds, at)

    def cleanup_due(
        self,
        *,
        keep_imported_seconds: float | None,
        now: float | None = None,
        limit: int = 100,
    ) -> list[ReceiptStatus]:
        """Final receipts whose cleanup is not recorded and not claimed (or whose claim
        expired): every FAILED one, and the IMPORTED ones imported `keep_imported_seconds`
        ago or more (none when None: kept forever). Oldest outcome first, at most `limit`."""
        at = _now(now)
        due = self._cleanup_due(State.FAILED, None, at, limit)
        if keep_imported_seconds is not None:
            due += self._cleanup_due(State.IMPORTED, at - keep_imported_seconds, at, limit)
        due.sort(key=lambda s: (s.state_changed_at, s.key))
        return due[:limit]

    # -- receipt queries ------------------------------------------------------------------

    @abstractmethod
    def receipt_status(self, key: str) -> ReceiptStatus | None: ...

    @abstractmethod
    def attempts(self, key: str) -> list[Attempt]:
        """The history of a receipt, oldest attempt first."""

    @abstractmethod
    def receipts_in_batch(self, batch_id: str) -> list[ReceiptStatus]:
        """Every receipt received under `batch_id`, by key."""

    @abstractmethod
    def receipts_in_job(self, batch_id: str) -> list[ReceiptStatus]:
        """Every receipt whose newest attempt is the job of `batch_id` (received in that batch
        or retried into it), by key."""

    @abstractmethod
    def superseded(self, key: str) -> bool:
        """True if a receipt of the same SOP instance newer than this one was IMPORTED."""

    @abstractmethod
    def receipts_blocking(self, batch_id: str) -> list[ReceiptStatus]:
        """Receipts IMPORTING in another job whose SOP instance has a receipt in `batch_id`:
        what the batch's admission waits for."""

    @abstractmethod
    def where(self, uid: str) -> list[ReceiptStatus]:
        """For a study, series or SOP Instance UID: one item per SOP instance, the newest of
        its receipts that match `uid`; ordered by study, series, SOP Instance UID."""

    @abstractmethod
    def failures(self) -> list[ReceiptStatus]:
        """SOP instances whose newest receipt is FAILED, oldest first."""

    @abstractmethod
    def counts_by_state(self) -> dict[str, int]:
        """Number of receipts in each state; every state is present, zero included."""

    def oldest_unimported_age(self, now: float | None = None) -> float | None:
        """Seconds since the oldest RECEIVED or IMPORTING receipt was received; None if none."""
        oldest = self._oldest_unimported_received_at()
        return None if oldest is None else max(0.0, _now(now) - oldest)

    # -- batches --------------------------------------------------------------------------

    def open_batch(
        self,
        batch_id: str,
        prefix: str,
        owner: str,
        lease_seconds: float,
        *,
        now: float | None = None,
    ) -> bool:
        """Record an OPEN batch owned by `owner`. True if created, or already OPEN and owned
        by `owner` (a replay: the lease is renewed), or OPEN and unowned (claimed)."""
        if not batch_id or not owner:
            raise ValueError("a batch needs an id and an owner")
        return self._open_batch(batch_id, prefix, owner, lease_seconds, _now(now))

    def renew_lease(self, owner: str, *, now: float | None = None) -> list[str]:
        """Extend the lease of every OPEN batch of `owner`; returns their ids. A batch missing
        from the answer was sealed by someone else: open a new one."""
        return sorted(self._renew_lease(owner, _now(now))) if owner else []

    def record_associations(
        self,
        batch_id: str,
        owner: str,
        *,
        open_associations: int,
        last_association_end_at: float | None = None,
    ) -> bool:
        """The owner's view of the associations writing into its OPEN batch (absolute values,
        replay-safe). False if the batch is not OPEN or not owned by `owner`."""
        if not owner:
            return False  # an unowned batch has no owner to report
        return self._record_associations(
            batch_id, owner, int(open_associations), last_association_end_at
        )

    def seal_batch(self, batch_id: str, by: str, *, now: float | None = None) -> bool:
        """OPEN -> SEALED, by the owner, or by anyone once the owner's lease expired. True if
        this call sealed it, or `by` had sealed it already (a replay); False otherwise."""
        return self._seal_batch(batch_id, by, _now(now))

    @abstractmethod
    def batch(self, batch_id: str) -> Batch | None: ...

    @abstractmethod
    def open_batches(self) -> list[Batch]:
        """OPEN batches, oldest first."""

    @abstractmethod
    def sealed_batches_without_job(self) -> list[Batch]:
        """SEALED batches that have no job record yet, sealed first first."""

    # -- jobs -----------------------------------------------------------------------------

    def record_job_start(
        self,
        batch_id: str,
        client_token: str,
        job_name: str,
        *,
        now: float | None = None,
    ) -> bool:
        """Create the batch's job record (STARTING). True for exactly one caller across
        workers; False if the record exists. Raises BatchNotSealedError if the batch is not
        sealed."""
        return self._record_job_start(batch_id, client_token, job_name, _now(now))

    def set_job_id(self, batch_id: str, job_id: str, *, submitted_at: float | None = None) -> bool:
        """Record the datastore's job id (STARTING -> SUBMITTED). True if the record now holds
        `job_id` (also on a replay); False if it holds another one or none can be set."""
        return self._set_job_id(batch_id, job_id, _now(submitted_at))

    def update_job(
        self,
        batch_id: str,
        *,
        status: JobStatus | None = None,
        message: str | None = None,
        counts: Mapping[str, int] | None = None,
        output_uri: str | None = None,
        ended_at: float | None = None,
        results_at: float | None = None,
        cleaned_at: float | None = None,
        now: float | None = None,
    ) -> bool:
        """Update a job record; None leaves a field as it is. The status only moves forward
        (`job_status_allowed_from`): False, and nothing changed, for a stale update."""
        changes: dict[str, Any] = {
            "status": None if status is None else JobStatus(status).value,
            "message": message,
            "counts": None if counts is None else {str(k): int(v) for k, v in counts.items()},
            "output_uri": output_uri,
            "ended_at": ended_at,
            "results_at": results_at,
            "cleaned_at": cleaned_at,
        }
        changes = {name: value for name, value in changes.items() if value is not None}
        changes["updated_at"] = _now(now)
        allowed = None
        if status is not None:
            allowed = sorted(s.value for s in job_status_allowed_from(JobStatus(status)))
        return self._update_job(batch_id, changes, allowed)

    @abstractmethod
    def job(self, job_id: str) -> Job | None:
        """The job record holding the datastore's `job_id`."""

    @abstractmethod
    def batch_job(self, batch_id: str) -> Job | None:
        """The job record of a batch."""

    @abstractmethod
    def jobs(self, status: JobStatus | None = None) -> list[Job]:
        """Job records (with `status`, if given), oldest first."""

    @abstractmethod
    def unfinished_jobs(self) -> list[Job]:
        """Job records whose results are not recorded yet (`results_at` unset): starting,
        running, or ended with outcomes still to record; oldest first. What the pipeline
        follows every round: served by an index, its cost follows these jobs, not every job
        ever recorded."""

    @abstractmethod
    def close(self) -> None: ...

    # -- the adapters' hooks: arguments resolved as said in the class docstring ------------

    @abstractmethod
    def _mark_importing(
        self, keys: list[str], batch_id: str, retry: bool, at: float
    ) -> dict[str, Admission]:
        """An Admission for each of `keys`."""

    @abstractmethod
    def _mark_imported_many(
        self, batch_id: str, results: Mapping[str, ImportedInstance], at: float
    ) -> set[str]: ...

    @abstractmethod
    def _mark_failed(
        self, keys: list[str], reason: str, batch_id: str | None, at: float
    ) -> set[str]: ...

    @abstractmethod
    def _record_cleanup(self, key: str, action: str, at: float, attempt: int | None) -> bool: ...

    @abstractmethod
    def _claim_cleanup(
        self, key: str, attempt: int, owner: str, until: float, at: float
    ) -> bool: ...

    @abstractmethod
    def _cleanup_due(
        self, state: State, cutoff: float | None, at: float, limit: int
    ) -> list[ReceiptStatus]:
        """Due outcomes in one state (changed at `cutoff` or before, if given): the oldest
        `limit`, oldest first."""

    @abstractmethod
    def _oldest_unimported_received_at(self) -> float | None: ...

    @abstractmethod
    def _open_batch(
        self, batch_id: str, prefix: str, owner: str, lease_seconds: float, at: float
    ) -> bool: ...

    @abstractmethod
    def _renew_lease(self, owner: str, at: float) -> list[str]: ...

    @abstractmethod
    def _record_associations(
        self, batch_id: str, owner: str, open_associations: int, last_end_at: float | None
    ) -> bool: ...

    @abstractmethod
    def _seal_batch(self, batch_id: str, by: str, at: float) -> bool: ...

    @abstractmethod
    def _record_job_start(
        self, batch_id: str, client_token: str, job_name: str, at: float
    ) -> bool: ...

    @abstractmethod
    def _set_job_id(self, batch_id: str, job_id: str, submitted_at: float) -> bool: ...

    @abstractmethod
    def _update_job(
        self, batch_id: str, changes: Mapping[str, Any], allowed: Sequence[str] | None
    ) -> bool:
        """Set `changes` (every one a value; `counts` a dict of str to int), if the record's
        status is one of `allowed` (when given)."""


def _now(value: float | None) -> float:
    return time.time() if value is None else value
