"""Cleanup after an outcome: imported objects are deleted once kept long enough, failed ones
are moved to quarantine with a note that says why. Plain functions over the ports: the worker's
loop calls `clean_up`, an AWS Lambda handler can call it unchanged.

Policy (`CleanupPolicy`): an IMPORTED receipt's object (primary or not: a non-primary image set
is an import too) is deleted `keep_imported_seconds` after the import (0: at once; None: never).
A FAILED receipt's object leaves its batch for `quarantine/<receipt key>` at once, whatever the
failure, with `quarantine/<receipt key>.json` beside it: the reason, the job, the receipt key,
the digest and the times (no patient data). What was done is recorded beside the outcome
(`Tracker.record_cleanup`), never in place of it.

One worker at a time cleans a receipt up (`Tracker.claim_cleanup`, a conditional write with a
lease). Every step is idempotent and the record comes last, so a crash between any two steps
leaves the receipt due; the next run (the restarted worker, or any worker once the claim's lease
has expired) does the rest.

Quarantine of a FAILED receipt:
  1. write the note;
  2. move the object (from its key, else from a retry copy) to its quarantine key, unless it is
     there already: durable at the new key before it leaves the old one;
  3. delete the other copies (the retry copies of its attempts up to this one);
  4. record "quarantined:<quarantine key>".
At every moment the object is in place, or in quarantine with its note (or both).

Deletion of an IMPORTED receipt: delete the object and every copy (retry copies, a quarantine
copy and note from a failed attempt before), then record "deleted".
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from .. import failpoints, metrics
from ..storage.base import ObjectStore, StorageError
from ..storage.layout import job_object_key, quarantine_key, quarantine_note_key
from ..tracking.base import ReceiptStatus, State, Tracker
from .retry import not_retryable

log = logging.getLogger("store_scp.pipeline")

DAY = 86_400.0
MISSING = "missing: no copy of the object was found"


@dataclass(frozen=True, slots=True)
class CleanupPolicy:
    #: Seconds an imported object is kept before it is deleted; None: kept forever.
    keep_imported_seconds: float | None = 7 * DAY
    #: How long one worker's claim on a receipt's cleanup holds (a crashed worker's runs out).
    lease_seconds: float = 120.0
    #: Receipts cleaned up per pass.
    batch_size: int = 200
    #: Seconds between two passes when nothing new has ended (results trigger one at once).
    interval_seconds: float = 10.0


def clean_up(
    tracker: Tracker,
    store: ObjectStore,
    policy: CleanupPolicy,
    *,
    owner: str,
    now: float,
    clock: Callable[[], float] = time.time,
) -> int:
    """One pass over the outcomes whose cleanup is due; returns how many were recorded."""
    due = tracker.cleanup_due(
        keep_imported_seconds=policy.keep_imported_seconds, now=now, limit=policy.batch_size
    )
    return sum(
        clean_up_receipt(tracker, store, status, owner=owner, policy=policy, now=now, clock=clock)
        for status in due
    )


def clean_up_receipt(
    tracker: Tracker,
    store: ObjectStore,
    status: ReceiptStatus,
    *,
    owner: str,
    policy: CleanupPolicy,
    now: float,
    clock: Callable[[], float] = time.time,
) -> bool:
    """Claim, clean up and record one final receipt's object. True once its cleanup is
    recorded (now or before); False if another worker holds it, the receipt moved on to a new
    attempt, or a storage step failed (it stays due and is retried)."""
    if status.state not in (State.IMPORTED, State.FAILED):
        return False
    if status.cleanup_action is not None:
        return True
    if not tracker.claim_cleanup(
        status.key, status.attempt, owner, lease_seconds=policy.lease_seconds, now=now
    ):
        return False
    try:
        if status.state is State.IMPORTED:
            action = _delete(tracker, store, status)
        else:
            action = _quarantine(tracker, store, status, now)
    except StorageError as exc:
        log.warning("cleanup failed; retried later", extra={"key": status.key, "why": str(exc)})
        return False
    recorded = tracker.record_cleanup(status.key, action, at=clock(), attempt=status.attempt)
    if recorded:
        metrics.CLEANUPS.labels(action=action.split(":", 1)[0]).inc()
        log.info("object cleaned up", extra={"key": status.key, "action": action})
    return recorded


def _copies(tracker: Tracker, status: ReceiptStatus) -> list[str]:
    """Retry copies of the receipt's object, from its attempts up to this one (a later
    attempt's copy is the input of a job that may be running)."""
    if status.attempt <= 1 and status.job_batch_id in (None, status.batch_id):
        return []
    return sorted(
        {
            job_object_key(status.key, status.batch_id, a.batch_id)
            for a in tracker.attempts(status.key)
            if a.batch_id and a.batch_id != status.batch_id and a.attempt <= status.attempt
        }
    )


def _delete(tracker: Tracker, store: ObjectStore, status: ReceiptStatus) -> str:
    keys = [status.key, *_copies(tracker, status)]
    if status.attempt > 1:  # an attempt before may have failed and left it in quarantine
        keys += [quarantine_key(status.key), quarantine_note_key(status.key)]
    for key in keys:
        store.delete(key)
        failpoints.hit("cleanup.deleted")
    return "deleted"


def _quarantine(tracker: Tracker, store: ObjectStore, status: ReceiptStatus, now: float) -> str:
    target = quarantine_key(status.key)
    copies = _copies(tracker, status)
    store.put_bytes(
        quarantine_note_key(status.key), note(status, now), content_type="application/json"
    )
    failpoints.hit("cleanup.note_written")
    if not store.exists(target):
        for source in [status.key, *copies]:
            try:
                store.move(source, target)
                break
            except FileNotFoundError:
                continue
        else:
            log.error("failed object found nowhere", extra={"key": status.key})
            return MISSING
    failpoints.hit("cleanup.moved")
    for key in [status.key, *copies]:
        store.delete(key)
    return f"quarantined:{target}"


def note(status: ReceiptStatus, now: float) -> bytes:
    """The JSON beside a quarantined object: what failed, why, where it came from; UIDs and
    digests only, no patient data."""
    why_final = not_retryable(status)
    return (
        json.dumps(
            {
                "receipt_key": status.key,
                "quarantined_key": quarantine_key(status.key),
                "state": status.state.value,
                "reason": status.reason,
                "retryable": why_final is None,
                "retry": f"store-scp retry {status.sop_instance_uid}"
                if why_final is None and status.sop_instance_uid
                else None,
                "attempt": status.attempt,
                "job_id": status.job_id,
                "job_batch_id": status.job_batch_id,
                "batch_id": status.batch_id,
                "sop_instance_uid": status.sop_instance_uid,
                "series_instance_uid": status.series_instance_uid,
                "study_instance_uid": status.study_instance_uid,
                "sop_class_uid": status.sop_class_uid,
                "transfer_syntax_uid": status.transfer_syntax_uid,
                "size": status.size,
                "sha256": status.sha256,
                "calling_ae": status.calling_ae,
                "received_at": _iso(status.received_at),
                "failed_at": _iso(status.state_changed_at),
                "quarantined_at": _iso(now),
            },
            indent=2,
        ).encode()
        + b"\n"
    )


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1000):03d}Z"
