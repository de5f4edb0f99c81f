"""Retry of FAILED receipts: a new attempt on the same receipt, imported from a batch of its own.

A prefix is never imported twice and objects are never moved for an import, so a retry copies
the objects into a new *retry batch* (`storage.layout.retry_prefix`: outside the start-up
reconciler's scan and outside every receiver batch), admits the receipts into that batch's job
(`Tracker.mark_importing(retry=True)`, a conditional write: of two workers retrying one receipt,
one admits it and the other finds it IMPORTING) and seals the batch. The pipeline then starts
its one job like any other batch's. Every attempt stays in the receipt's history.

Refused, with the reason:

- a receipt that is not FAILED (IMPORTED, or still on its way);
- a receipt with a newer receipt of the same SOP instance (HealthImaging keeps the latest
  *imported* copy: an older receipt is never imported after a newer one), or marked superseded;
- a receipt the datastore cannot import ("not importable: ...": a retry would fail the same way);
- a receipt another worker is importing right now;
- every receipt, with nothing changed, when no retry batch could be opened (each fresh id
  tried was taken).

Crash safety: the retry batch is opened (owned, with a lease) before any receipt is admitted
into it, and the copies are made after the admission. A crash leaves an OPEN retry batch whose
owner is gone; any worker seals it once the lease has expired (`Pipeline.seal_orphans`) and
makes the missing copies before it starts the job (`stage_retry_copies`).

There is no automatic retry (see the README): a job that ends FAILED failed for a reason that
repeating it does not fix, and transient errors are retried where they happen.
"""

from __future__ import annotations

import logging
import os
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from .. import failpoints
from ..storage.base import ObjectStore
from ..storage.layout import job_object_key, quarantine_key, retry_prefix
from ..tracking.base import SUPERSEDED_REASON, Admission, Job, ReceiptStatus, State, Tracker
from .batching import new_batch_id

log = logging.getLogger("store_scp.pipeline")

#: How the reason of a receipt no job could ever import starts.
NOT_IMPORTABLE = "not importable:"
#: A receipt whose object is found nowhere any more fails its retry attempt with this reason.
NO_COPY_REASON = "retry: no copy of the object was found"
#: Fresh retry batch ids tried before a retry is refused (an id is random: one is taken only
#: by a clash with a batch that exists already).
OPEN_ATTEMPTS = 3
#: Why every receipt of a retry is refused when none of those ids could be opened.
NO_BATCH_REASON = (
    f"no retry batch could be opened ({OPEN_ATTEMPTS} fresh batch ids were taken);"
    " nothing was changed: run the retry again"
)


@dataclass(frozen=True, slots=True)
class Refused:
    key: str
    sop_instance_uid: str
    state: str
    why: str


@dataclass(slots=True)
class RetryResult:
    batch_id: str | None = None  # the retry batch (None: nothing was retried)
    retried: list[ReceiptStatus] = field(default_factory=list)
    refused: list[Refused] = field(default_factory=list)


def not_retryable(status: ReceiptStatus) -> str | None:
    """Why a FAILED receipt's failure is one a retry cannot change (None if it can)."""
    reason = status.reason or ""
    if reason == SUPERSEDED_REASON:
        return "superseded by a newer receipt of the same instance"
    if reason.startswith(NOT_IMPORTABLE):
        return f"{reason} (the datastore cannot import it: a retry would fail the same way)"
    return None


def _refused(status: ReceiptStatus, why: str) -> Refused:
    return Refused(status.key, status.sop_instance_uid, status.state.value, why)


def _check(tracker: Tracker, status: ReceiptStatus) -> str | None:
    """Why this receipt must not be retried (None: it may)."""
    if status.state is not State.FAILED:
        return f"it is {status.state.value}, not FAILED"
    why = not_retryable(status)
    if why:
        return why
    if status.sop_instance_uid:
        newest = max(
            tracker.receipts_for_instance(status.sop_instance_uid),
            key=lambda r: (r.received_at, r.key),
        )
        if newest.key != status.key:
            return f"superseded by a newer receipt of the same instance ({newest.key})"
    return None


def _sort_failed(
    tracker: Tracker, status: ReceiptStatus, chosen: list[ReceiptStatus], refused: list[Refused]
) -> None:
    """A FAILED receipt goes to `chosen`, or to `refused` with the reason it may not retry."""
    why = _check(tracker, status)
    if why:
        refused.append(_refused(status, why))
    else:
        chosen.append(status)


def select_for_job(tracker: Tracker, job: Job) -> tuple[list[ReceiptStatus], list[Refused]]:
    """The FAILED receipts of a job (retryable ones, refused ones). A receipt retried since
    (its newest attempt is another job's) is refused."""
    seen: dict[str, ReceiptStatus] = {}
    for status in [
        *tracker.receipts_in_batch(job.batch_id),
        *tracker.receipts_in_job(job.batch_id),
    ]:
        seen.setdefault(status.key, status)
    chosen: list[ReceiptStatus] = []
    refused: list[Refused] = []
    for status in sorted(seen.values(), key=lambda s: s.key):
        if status.job_batch_id not in (None, job.batch_id):
            # Its newest attempt is another job's: it was retried since.
            since = f"retried since, in {status.job_batch_id}: {status.state.value}"
            refused.append(_refused(status, since))
            continue
        if status.state is not State.FAILED:
            continue  # imported: not a failure of this job
        _sort_failed(tracker, status, chosen, refused)
    return chosen, refused


def select_for_uid(tracker: Tracker, uid: str) -> tuple[list[ReceiptStatus], list[Refused]]:
    """The newest receipt of each instance of a study, series or SOP instance that is FAILED
    (retryable ones, refused ones)."""
    chosen: list[ReceiptStatus] = []
    refused: list[Refused] = []
    for status in tracker.where(uid):
        if status.state is State.FAILED:
            _sort_failed(tracker, status, chosen, refused)
    return chosen, refused


def retry_owner() -> str:
    """The owner of the retry batches a process opens."""
    return f"retry-{os.getpid():x}-{secrets.token_hex(3)}"


def retry(
    tracker: Tracker,
    store: ObjectStore,
    candidates: Sequence[ReceiptStatus],
    *,
    owner: str,
    lease_seconds: float = 60.0,
    now: float,
) -> RetryResult:
    """Retry `candidates` (from `select_for_job` / `select_for_uid`) in one new retry batch."""
    result = RetryResult()
    if not candidates:
        return result
    batch_id = _open_retry_batch(tracker, owner, lease_seconds, now)
    if batch_id is None:
        log.error("no retry batch could be opened", extra={"attempts": OPEN_ATTEMPTS})
        result.refused = [_refused(c, NO_BATCH_REASON) for c in candidates]
        return result
    failpoints.hit("retry.opened")
    result.batch_id = batch_id
    by_key = {c.key: c for c in candidates}
    pending = list(by_key)
    accepted: list[str] = []
    while pending:
        # Keep the batch ours while admitting: once sealed, a job may start on it.
        tracker.renew_lease(owner)
        admission = tracker.mark_importing(pending, batch_id, retry=True, now=now)
        pending = [k for k, a in admission.items() if a is Admission.WAITING]
        for key, answer in admission.items():
            status = by_key[key]
            if answer is Admission.ACCEPTED:
                accepted.append(key)
            elif answer is Admission.BLOCKED:
                why = "another receipt of this instance is being imported now; retry later"
                result.refused.append(_refused(status, why))
            elif answer is Admission.SUPERSEDED:
                result.refused.append(_refused(status, "superseded by a newer receipt"))
            elif answer is not Admission.WAITING:
                result.refused.append(_refused(status, f"no longer FAILED ({answer.value})"))
    admitted = [s for s in (tracker.receipt_status(k) for k in accepted) if s is not None]
    failpoints.hit("retry.admitted")
    missing = stage_retry_copies(tracker, store, batch_id, admitted)
    result.retried = [s for s in admitted if s.key not in missing]
    for status in admitted:
        if status.key in missing:
            result.refused.append(_refused(status, NO_COPY_REASON))
    tracker.seal_batch(batch_id, owner, now=now)
    failpoints.hit("retry.sealed")
    log.info(
        "receipts retried",
        extra={
            "batch_id": batch_id,
            "retried": len(result.retried),
            "refused": len(result.refused),
        },
    )
    return result


def _open_retry_batch(tracker: Tracker, owner: str, lease_seconds: float, now: float) -> str | None:
    """Open a new retry batch owned by `owner`; its id, or None if every id tried was taken."""
    for _ in range(OPEN_ATTEMPTS):
        batch_id = f"retry-{new_batch_id(now)}"
        if tracker.open_batch(batch_id, retry_prefix(batch_id), owner, lease_seconds, now=now):
            return batch_id
    return None


def stage_retry_copies(
    tracker: Tracker, store: ObjectStore, batch_id: str, receipts: Iterable[ReceiptStatus]
) -> set[str]:
    """Make sure every receipt retried into `batch_id` has its copy under the batch's prefix,
    copied from its quarantine or from where it was received. Idempotent. A receipt whose
    object is found nowhere fails its attempt (with NO_COPY_REASON); returns those keys."""
    missing: set[str] = set()
    for status in receipts:
        if status.batch_id == batch_id:
            continue  # imported from where it was received: nothing to copy
        target = job_object_key(status.key, status.batch_id, batch_id)
        if store.exists(target):
            continue
        if _copy_from_any(tracker, store, status, target):
            failpoints.hit("retry.copied")
        else:
            missing.add(status.key)
    if missing:
        log.error(
            "retried objects found nowhere; their attempt fails",
            extra={"batch_id": batch_id, "keys": sorted(missing)},
        )
        tracker.mark_failed(sorted(missing), NO_COPY_REASON, batch_id)
    return missing


def _copy_from_any(
    tracker: Tracker, store: ObjectStore, status: ReceiptStatus, target: str
) -> bool:
    sources = [quarantine_key(status.key), status.key]
    earlier = [
        job_object_key(status.key, status.batch_id, a.batch_id)
        for a in tracker.attempts(status.key)
        if a.batch_id and a.batch_id != status.batch_id and a.attempt < status.attempt
    ]
    # A cleanup may be moving the object into quarantine meanwhile (it is durable there before
    # it leaves its place): one more round finds it.
    for _ in range(3):
        for source in [*sources, *earlier]:
            try:
                store.copy(source, target)
                return True
            except FileNotFoundError:
                continue
    return False
