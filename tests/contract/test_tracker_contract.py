"""One contract, every Tracker adapter: SQLite on a file, DynamoDB on a real moto server.

Each test runs against both adapters. Several tracker objects on the same store (`backend.new()`)
stand for several workers or processes: two SqliteTracker objects have two connections to one
file, two DynamoDbTracker objects two HTTP clients to one endpoint.
"""

from __future__ import annotations

import sqlite3
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest

from store_scp.tracking.base import (
    SUPERSEDED_REASON,
    Admission,
    BatchNotSealedError,
    BatchState,
    ImportedInstance,
    JobStatus,
    Receipt,
    State,
    Tracker,
)
from store_scp.tracking.dynamodb import DynamoDbTracker
from store_scp.tracking.sqlite import _MIGRATIONS, SqliteTracker
from tests.integration.moto_server import aws_env, moto_endpoint  # noqa: F401

T0 = 1_700_000_000.0
STUDY = "1.2.826.0.1.3680043.8.498.1"
SERIES_A = f"{STUDY}.1"
SERIES_B = f"{STUDY}.2"


def receipt(
    batch_id: str,
    sop: str,
    *,
    at: float = T0,
    study: str = STUDY,
    series: str = SERIES_A,
    size: int = 1000,
) -> Receipt:
    return Receipt(
        key=f"{batch_id}/{study}/{series}/{sop}.dcm" if batch_id else f"{sop}.dcm",
        batch_id=batch_id,
        sop_instance_uid=sop,
        sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
        study_instance_uid=study,
        series_instance_uid=series,
        transfer_syntax_uid="1.2.840.10008.1.2.1",
        size=size,
        sha256="ab" * 32,
        calling_ae="CT1",
        peer="192.0.2.7:40000",
        received_at=at,
    )


@dataclass
class Backend:
    name: str
    factory: Callable[[], Tracker]
    opened: list[Tracker] = field(default_factory=list)

    def new(self) -> Tracker:
        """Another tracker on the same store: another worker, another process."""
        tracker = self.factory()
        self.opened.append(tracker)
        return tracker


@pytest.fixture(params=["sqlite", "dynamodb"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    if request.param == "sqlite":
        path = tmp_path / "tracker.sqlite3"
        backend = Backend("sqlite", lambda: SqliteTracker(path))
        yield backend
        for tracker in backend.opened:
            tracker.close()
        return
    endpoint = request.getfixturevalue("moto_endpoint")
    request.getfixturevalue("aws_env")
    prefix = f"contract-{uuid.uuid4().hex[:12]}"

    def factory() -> DynamoDbTracker:
        return DynamoDbTracker(prefix, endpoint_url=endpoint, region_name="us-east-1")

    admin = factory()
    admin.create_tables()
    backend = Backend("dynamodb", factory)
    yield backend
    for tracker in backend.opened:
        tracker.close()
    admin.delete_tables()


@pytest.fixture
def tracker(backend: Backend) -> Tracker:
    return backend.new()


def admit(tracker: Tracker, batch_id: str, *receipts: Receipt) -> dict[str, Admission]:
    return tracker.mark_importing([r.key for r in receipts], batch_id, now=T0 + 500)


def sealed_batch_with_job(tracker: Tracker, batch_id: str, job_id: str | None = None) -> None:
    assert tracker.open_batch(batch_id, f"{batch_id}/", "w1", 60)
    assert tracker.seal_batch(batch_id, "w1")
    assert tracker.record_job_start(batch_id, f"token-{batch_id}", f"job-{batch_id}")
    if job_id is not None:
        assert tracker.set_job_id(batch_id, job_id)


def race(callables: list[Callable[[], bool]]) -> list[bool]:
    """Run the callables at once, one thread each; their results in order."""
    barrier = threading.Barrier(len(callables))
    results: list[bool | BaseException] = [False] * len(callables)

    def run(index: int) -> None:
        barrier.wait()
        try:
            results[index] = callables[index]()
        except BaseException as exc:
            results[index] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(callables))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    errors = [r for r in results if isinstance(r, BaseException)]
    assert errors == []
    return [bool(r) for r in results]


# -- the receipt API the receiver and the reconciler use ------------------------------------


def test_satisfies_the_port(backend: Backend) -> None:
    port: Tracker = backend.new()
    assert port.known_keys([]) == set()


def test_receipts_are_idempotent_by_key(tracker: Tracker) -> None:
    first = receipt("b1", "1.1", at=T0)
    assert tracker.record_receipt(first) is True
    assert tracker.record_receipt(first) is False
    # Same key, other content: still ignored, the first row is kept as it was.
    assert tracker.record_receipt(replace(first, sha256="cd" * 32, received_at=T0 + 99)) is False
    newer = receipt("b2", "1.1", at=T0 + 10)
    rest = [receipt("b1", f"1.{i}", at=T0 + i) for i in range(2, 6)]
    # Duplicates in one call and known keys count once, as not new.
    assert tracker.record_receipts([newer, *rest, rest[0], first]) == 5
    assert tracker.record_receipts([]) == 0
    assert tracker.known_keys([first.key, newer.key, "b9/x.dcm", first.key]) == {
        first.key,
        newer.key,
    }
    assert tracker.receipts_for_instance("1.1") == [first, newer]
    assert tracker.receipts_for_instance("9.9") == []
    assert tracker.counts_by_state() == {"RECEIVED": 6, "IMPORTING": 0, "IMPORTED": 0, "FAILED": 0}


def test_receipt_without_uids_is_recorded_and_can_fail(tracker: Tracker) -> None:
    # What the reconciler registers for an unreadable object: empty UIDs, maybe no batch.
    broken = Receipt(
        key="loose.dcm",
        batch_id="",
        sop_instance_uid="",
        sop_class_uid="",
        study_instance_uid="",
        series_instance_uid="",
        transfer_syntax_uid="",
        size=12,
        sha256="",
        calling_ae="",
        peer="",
        received_at=T0,
    )
    broken2 = replace(broken, key="b1/broken.dcm", batch_id="b1", received_at=T0 + 1)
    assert tracker.record_receipts([broken, broken2]) == 2
    assert tracker.receipts_for_instance("") == [broken, broken2]
    assert tracker.batch("") is None  # no batch for a key without a prefix
    assert tracker.mark_failed([broken.key, broken2.key], "not importable: no SOP UID") == {
        broken.key,
        broken2.key,
    }
    # Two receipts without a SOP UID are not one instance: both are listed.
    assert [s.key for s in tracker.failures()] == [broken.key, broken2.key]


def test_new_receipts_count_in_their_batch(tracker: Tracker) -> None:
    assert tracker.open_batch("b1", "b1/", "w1", 60, now=T0)
    tracker.record_receipts([receipt("b1", "1.1", at=T0 + 5, size=100)])
    tracker.record_receipts(
        [
            receipt("b1", "1.2", at=T0 + 2, size=200),
            receipt("b1", "1.3", at=T0 + 9, size=300),
            receipt("b1", "1.1", at=T0 + 5, size=100),  # known: not counted again
        ]
    )
    batch = tracker.batch("b1")
    assert batch is not None
    assert (batch.files, batch.bytes) == (3, 600)
    assert (batch.first_receipt_at, batch.last_receipt_at) == (T0 + 2, T0 + 9)
    assert (batch.owner, batch.state, batch.prefix) == ("w1", BatchState.OPEN, "b1/")
    assert tracker.record_associations(
        "b1", "w1", open_associations=0, last_association_end_at=T0 + 10
    )
    assert not tracker.record_associations("b1", "w2", open_associations=3)
    batch = tracker.batch("b1")
    assert batch is not None
    assert (batch.open_associations, batch.last_association_end_at) == (0, T0 + 10)


def test_a_batch_seen_only_through_receipts_is_open_and_anyone_seals_it(tracker: Tracker) -> None:
    # E.g. the reconciler registering the objects of a process that crashed.
    tracker.record_receipts([receipt("orphan", "1.1", at=T0), receipt("orphan", "1.2", at=T0 + 1)])
    batch = tracker.batch("orphan")
    assert batch is not None
    assert (batch.state, batch.owner, batch.prefix, batch.files) == (
        BatchState.OPEN,
        "",
        "orphan/",
        2,
    )
    assert [b.batch_id for b in tracker.open_batches()] == ["orphan"]
    assert tracker.renew_lease("") == []  # nobody renews an unowned batch
    assert tracker.seal_batch("orphan", "worker-7")
    assert [b.batch_id for b in tracker.sealed_batches_without_job()] == ["orphan"]


# -- receipt transitions --------------------------------------------------------------------


def test_import_and_every_replay(tracker: Tracker) -> None:
    r = receipt("b1", "1.1")
    tracker.record_receipt(r)
    sealed_batch_with_job(tracker, "b1")
    assert admit(tracker, "b1", r) == {r.key: Admission.ACCEPTED}
    assert admit(tracker, "b1", r) == {r.key: Admission.ACCEPTED}  # replay: nothing new
    assert len(tracker.attempts(r.key)) == 1
    status = tracker.receipt_status(r.key)
    assert status is not None
    assert (status.state, status.job_batch_id, status.job_id, status.attempt) == (
        State.IMPORTING,
        "b1",
        None,
        1,
    )
    assert tracker.set_job_id("b1", "job-1")
    assert tracker.mark_imported(r.key, "b1", "is-1", True, "1", at=T0 + 600)
    assert tracker.mark_imported(r.key, "b1", "is-1", True, "1", at=T0 + 700)  # replay
    assert admit(tracker, "b1", r) == {r.key: Admission.FINAL}
    status = tracker.receipt_status(r.key)
    assert status is not None
    assert (status.state, status.image_set_id, status.is_primary, status.image_set_version) == (
        State.IMPORTED,
        "is-1",
        True,
        "1",
    )
    assert (status.job_id, status.reason, status.state_changed_at) == ("job-1", None, T0 + 600)
    (attempt,) = tracker.attempts(r.key)
    assert (attempt.batch_id, attempt.job_id, attempt.outcome, attempt.image_set_id) == (
        "b1",
        "job-1",
        State.IMPORTED,
        "is-1",
    )
    assert (attempt.started_at, attempt.ended_at) == (T0 + 500, T0 + 600)
    assert tracker.counts_by_state() == {"RECEIVED": 0, "IMPORTING": 0, "IMPORTED": 1, "FAILED": 0}


def test_results_of_another_job_are_refused(tracker: Tracker) -> None:
    r = receipt("b1", "1.1")
    tracker.record_receipt(r)
    assert not tracker.mark_imported(r.key, "b1", "is-1", True)  # not admitted yet
    assert tracker.mark_failed([r.key], "job failed", "b1") == set()
    admit(tracker, "b1", r)
    assert not tracker.mark_imported(r.key, "b2", "is-1", True)
    assert tracker.mark_failed([r.key], "job failed", "b2") == set()
    assert tracker.mark_failed([r.key], "not importable") == set()  # it is in a job
    assert tracker.mark_imported_many("b1", [ImportedInstance("b1/none.dcm", "x", True)]) == set()
    status = tracker.receipt_status(r.key)
    assert status is not None and status.state == State.IMPORTING


def test_a_retry_is_a_new_attempt_and_the_history_is_kept(tracker: Tracker) -> None:
    r = receipt("b1", "1.1")
    tracker.record_receipt(r)
    sealed_batch_with_job(tracker, "b1", "job-1")
    admit(tracker, "b1", r)
    assert tracker.mark_failed([r.key], "job failed: boom", "b1", at=T0 + 600) == {r.key}
    assert tracker.mark_failed([r.key], "job failed: boom", "b1", at=T0 + 601) == {r.key}
    assert admit(tracker, "b2", r) == {r.key: Admission.FINAL}  # no retry unless asked
    assert tracker.mark_importing([r.key], "b2", retry=True, now=T0 + 700) == {
        r.key: Admission.ACCEPTED
    }
    assert tracker.mark_importing([r.key], "b2", retry=True, now=T0 + 701) == {
        r.key: Admission.ACCEPTED
    }
    # Late results of the first job do not touch the second attempt.
    assert not tracker.mark_imported(r.key, "b1", "is-old", True)
    assert tracker.mark_failed([r.key], "late", "b1") == set()
    assert tracker.mark_imported(r.key, "b2", "is-2", False, "3", at=T0 + 800)
    first, second = tracker.attempts(r.key)
    assert (first.attempt, first.batch_id, first.job_id, first.outcome, first.reason) == (
        1,
        "b1",
        "job-1",
        State.FAILED,
        "job failed: boom",
    )
    assert first.ended_at == T0 + 600
    assert (second.attempt, second.batch_id, second.outcome, second.started_at) == (
        2,
        "b2",
        State.IMPORTED,
        T0 + 700,
    )
    status = tracker.receipt_status(r.key)
    assert status is not None
    assert (status.state, status.attempt, status.reason, status.is_primary) == (
        State.IMPORTED,
        2,
        None,
        False,
    )
    assert tracker.counts_by_state()["IMPORTED"] == 1
    assert tracker.counts_by_state()["FAILED"] == 0


def test_a_failure_without_a_job(tracker: Tracker) -> None:
    r, s = receipt("b1", "1.1"), receipt("b1", "1.2")
    tracker.record_receipts([r, s])
    reason = "not importable: SOP class not accepted"
    assert tracker.mark_failed([r.key, "b1/unknown.dcm"], reason, at=T0 + 1) == {r.key}
    assert tracker.mark_failed([r.key], reason, at=T0 + 2) == {r.key}  # replay
    assert tracker.mark_failed([r.key], "another reason") == set()
    assert admit(tracker, "b1", r, s) == {r.key: Admission.FINAL, s.key: Admission.ACCEPTED}
    status = tracker.receipt_status(r.key)
    assert status is not None
    assert (status.state, status.reason, status.job_batch_id, status.state_changed_at) == (
        State.FAILED,
        reason,
        None,
        T0 + 1,
    )
    (attempt,) = tracker.attempts(r.key)
    assert (attempt.batch_id, attempt.outcome, attempt.reason) == (None, State.FAILED, reason)
    assert [f.key for f in tracker.failures()] == [r.key]


def test_cleanup_is_recorded_beside_the_outcome(tracker: Tracker) -> None:
    r = receipt("b1", "1.1")
    tracker.record_receipt(r)
    assert not tracker.record_cleanup(r.key, "deleted")  # not final yet
    assert not tracker.record_cleanup("b1/unknown.dcm", "deleted")
    admit(tracker, "b1", r)
    tracker.mark_imported(r.key, "b1", "is-1", True)
    assert not tracker.record_cleanup(r.key, "deleted", at=T0 + 900, attempt=2)  # not its attempt
    assert tracker.record_cleanup(r.key, "deleted", at=T0 + 900, attempt=1)
    assert tracker.record_cleanup(r.key, "deleted", at=T0 + 950)  # replay: the first time stays
    assert not tracker.record_cleanup(r.key, "quarantined:x")  # another action: refused
    status = tracker.receipt_status(r.key)
    assert status is not None
    assert (status.state, status.image_set_id, status.cleanup_action, status.cleanup_at) == (
        State.IMPORTED,
        "is-1",
        "deleted",
        T0 + 900,
    )
    (attempt,) = tracker.attempts(r.key)
    assert (attempt.outcome, attempt.cleanup_action, attempt.cleanup_at) == (
        State.IMPORTED,
        "deleted",
        T0 + 900,
    )


def test_cleanup_is_due_for_failures_at_once_and_for_imports_after_the_keep_time(
    tracker: Tracker,
) -> None:
    imported_early, imported_late, failed, waiting, broken = (
        receipt("b1", f"c.{i}", at=T0 + i) for i in range(5)
    )
    tracker.record_receipts([imported_early, imported_late, failed, waiting, broken])
    tracker.mark_failed([broken.key], "not importable: no", at=T0 + 50)
    admit(tracker, "b1", imported_early, imported_late, failed)
    tracker.mark_imported(imported_early.key, "b1", "is", True, at=T0 + 100)
    tracker.mark_imported(imported_late.key, "b1", "is", True, at=T0 + 200)
    tracker.mark_failed([failed.key], "job failed", "b1", at=T0 + 300)

    def due(keep: float | None, now: float, limit: int = 100) -> list[str]:
        return [
            s.key for s in tracker.cleanup_due(keep_imported_seconds=keep, now=now, limit=limit)
        ]

    # Failures at once, oldest outcome first; imports once kept long enough; never forever.
    assert due(None, T0 + 1000) == [broken.key, failed.key]
    assert due(850, T0 + 1000) == [broken.key, imported_early.key, failed.key]
    assert due(0, T0 + 1000) == [broken.key, imported_early.key, imported_late.key, failed.key]
    assert due(0, T0 + 1000, limit=2) == [broken.key, imported_early.key]
    assert tracker.record_cleanup(broken.key, "quarantined:quarantine/x")
    assert due(0, T0 + 1000) == [imported_early.key, imported_late.key, failed.key]
    # A claimed one is not due until its claim expires.
    assert tracker.claim_cleanup(failed.key, 1, "w1", lease_seconds=60, now=T0 + 1000)
    assert due(0, T0 + 1030) == [imported_early.key, imported_late.key]
    assert due(0, T0 + 1061) == [imported_early.key, imported_late.key, failed.key]


def test_a_cleanup_has_one_owner_at_a_time(tracker: Tracker) -> None:
    r = receipt("b1", "d.1")
    tracker.record_receipt(r)
    assert not tracker.claim_cleanup(r.key, 0, "w1", lease_seconds=60, now=T0)  # not final
    admit(tracker, "b1", r)
    tracker.mark_failed([r.key], "job failed", "b1")
    assert not tracker.claim_cleanup(r.key, 2, "w1", lease_seconds=60, now=T0)  # not its attempt
    assert tracker.claim_cleanup(r.key, 1, "w1", lease_seconds=60, now=T0)
    assert tracker.claim_cleanup(r.key, 1, "w1", lease_seconds=60, now=T0 + 30)  # renewed
    assert not tracker.claim_cleanup(r.key, 1, "w2", lease_seconds=60, now=T0 + 80)
    # w1 died: its lease ran out, w2 takes over; w1 is refused from then on.
    assert tracker.claim_cleanup(r.key, 1, "w2", lease_seconds=60, now=T0 + 91)
    assert not tracker.claim_cleanup(r.key, 1, "w1", lease_seconds=60, now=T0 + 92)
    assert tracker.record_cleanup(r.key, "quarantined:quarantine/k", at=T0 + 93, attempt=1)
    # Once recorded, nobody claims it again.
    assert not tracker.claim_cleanup(r.key, 1, "w2", lease_seconds=60, now=T0 + 500)


def test_a_claim_outlives_a_new_attempt(tracker: Tracker) -> None:
    r = receipt("b1", "d.2")
    tracker.record_receipt(r)
    admit(tracker, "b1", r)
    tracker.mark_failed([r.key], "job failed", "b1")
    assert tracker.claim_cleanup(r.key, 1, "w1", lease_seconds=60, now=T0)
    # Retried while w1 still cleans the first outcome up, and failed again.
    tracker.mark_importing([r.key], "retry-1", retry=True, now=T0 + 1)
    tracker.mark_failed([r.key], "job failed again", "retry-1", at=T0 + 2)
    assert not tracker.record_cleanup(r.key, "quarantined:q", attempt=1)  # w1's record: stale
    assert not tracker.claim_cleanup(r.key, 2, "w2", lease_seconds=60, now=T0 + 3)
    assert tracker.claim_cleanup(r.key, 2, "w2", lease_seconds=60, now=T0 + 61)
    assert tracker.record_cleanup(r.key, "quarantined:q", attempt=2)


def test_a_cleanup_claim_race_has_exactly_one_winner(backend: Backend) -> None:
    workers = [backend.new(), backend.new(), backend.new()]
    receipts = [receipt("b1", f"e.{i}") for i in range(6)]
    workers[0].record_receipts(receipts)
    admit(workers[0], "b1", *receipts)
    workers[0].mark_failed([r.key for r in receipts], "job failed", "b1")
    for r in receipts:
        results = race(
            [
                lambda w=w, n=n, k=r.key: w.claim_cleanup(k, 1, f"w{n}", lease_seconds=60)  # type: ignore[misc]
                for n, w in enumerate(workers)
            ]
        )
        assert results.count(True) == 1, (r.key, results)


def test_a_retry_imports_from_its_own_batch_and_starts_without_a_cleanup(
    tracker: Tracker,
) -> None:
    r, other = receipt("b1", "f.1"), receipt("b1", "f.2")
    tracker.record_receipts([r, other])
    sealed_batch_with_job(tracker, "b1", "job-1")
    admit(tracker, "b1", r, other)
    assert [s.key for s in tracker.receipts_in_job("b1")] == [r.key, other.key]
    tracker.mark_failed([r.key], "job failed: boom", "b1", at=T0 + 600)
    tracker.mark_imported(other.key, "b1", "is-1", True, at=T0 + 600)
    assert tracker.record_cleanup(r.key, "quarantined:quarantine/k", at=T0 + 610, attempt=1)
    assert tracker.open_batch("retry-1", "retry/retry-1/", "cli", 60, now=T0 + 700)
    assert tracker.mark_importing([r.key], "retry-1", retry=True, now=T0 + 700) == {
        r.key: Admission.ACCEPTED
    }
    assert [s.key for s in tracker.receipts_in_job("b1")] == [other.key]
    assert [s.key for s in tracker.receipts_in_job("retry-1")] == [r.key]
    assert tracker.receipts_in_batch("retry-1") == []
    status = tracker.receipt_status(r.key)
    assert status is not None
    assert (status.state, status.attempt, status.cleanup_action, status.cleanup_at) == (
        State.IMPORTING,
        2,
        None,
        None,
    )
    assert r.key not in [s.key for s in tracker.cleanup_due(keep_imported_seconds=0)]
    # A late record of the first outcome's cleanup does not land on the second attempt.
    assert not tracker.record_cleanup(r.key, "quarantined:quarantine/k", attempt=1)
    tracker.mark_imported(r.key, "retry-1", "is-1", True, at=T0 + 800)
    due = tracker.cleanup_due(keep_imported_seconds=0, now=T0 + 900)
    assert [s.key for s in due] == [other.key, r.key]
    assert not tracker.record_cleanup(r.key, "deleted", attempt=1)
    assert tracker.record_cleanup(r.key, "deleted", at=T0 + 900, attempt=2)
    first, second = tracker.attempts(r.key)
    assert (first.outcome, first.cleanup_action) == (State.FAILED, "quarantined:quarantine/k")
    assert (second.batch_id, second.outcome, second.cleanup_action) == (
        "retry-1",
        State.IMPORTED,
        "deleted",
    )


def test_two_workers_never_retry_the_same_receipt(backend: Backend) -> None:
    workers = [backend.new(), backend.new()]
    receipts = [receipt("b1", f"g.{i}") for i in range(6)]
    workers[0].record_receipts(receipts)
    admit(workers[0], "b1", *receipts)
    workers[0].mark_failed([r.key for r in receipts], "job failed", "b1")
    first = receipts[0]
    # One after the other: the second finds the receipt IMPORTING in the first's retry.
    assert workers[0].mark_importing([first.key], "retry-a", retry=True) == {
        first.key: Admission.ACCEPTED
    }
    assert workers[1].mark_importing([first.key], "retry-b", retry=True) == {
        first.key: Admission.BLOCKED
    }
    assert [s.key for s in workers[1].receipts_in_job("retry-b")] == []
    for n, r in enumerate(receipts[1:]):
        results = race(
            [
                lambda w=w, k=r.key, b=f"retry-{n}-{i}": (  # type: ignore[misc]
                    w.mark_importing([k], b, retry=True)[k] is Admission.ACCEPTED
                )
                for i, w in enumerate(workers)
            ]
        )
        assert results.count(True) == 1, results
        assert len(workers[0].attempts(r.key)) == 2


def test_bulk_results(tracker: Tracker) -> None:
    # More receipts than one DynamoDB transaction holds.
    receipts = [receipt("b1", f"1.{i}", at=T0 + i) for i in range(90)]
    assert tracker.record_receipts(receipts) == 90
    admissions = admit(tracker, "b1", *receipts)
    assert set(admissions.values()) == {Admission.ACCEPTED}
    imported = [ImportedInstance(r.key, "is-1", True, "1") for r in receipts[:70]]
    assert tracker.mark_imported_many("b1", imported) == {r.key for r in receipts[:70]}
    assert tracker.mark_imported_many("b1", imported) == {r.key for r in receipts[:70]}
    failed = [r.key for r in receipts[70:]]
    assert tracker.mark_failed(failed, "failure line", "b1") == set(failed)
    assert tracker.counts_by_state() == {
        "RECEIVED": 0,
        "IMPORTING": 0,
        "IMPORTED": 70,
        "FAILED": 20,
    }
    assert [s.key for s in tracker.receipts_in_batch("b1")] == sorted(r.key for r in receipts)


def test_unknown_keys(tracker: Tracker) -> None:
    assert tracker.mark_importing(["b1/none.dcm"], "b1") == {"b1/none.dcm": Admission.UNKNOWN}
    assert not tracker.mark_imported("b1/none.dcm", "b1", "is", True)
    assert tracker.receipt_status("b1/none.dcm") is None
    assert tracker.attempts("b1/none.dcm") == []
    assert not tracker.superseded("b1/none.dcm")


# -- ordering rules -------------------------------------------------------------------------


def test_two_receipts_of_an_instance_are_never_importing_at_once(tracker: Tracker) -> None:
    first = receipt("b1", "1.5", at=T0)
    second = receipt("b2", "1.5", at=T0 + 10)  # the same instance sent again
    other = receipt("b2", "1.7", at=T0 + 11)
    tracker.record_receipts([first, second, other])
    assert admit(tracker, "b1", first) == {first.key: Admission.ACCEPTED}
    assert admit(tracker, "b2", second, other) == {
        second.key: Admission.BLOCKED,
        other.key: Admission.WAITING,  # sorts after the blocked instance
    }
    assert [s.key for s in tracker.receipts_blocking("b2")] == [first.key]
    assert tracker.receipts_blocking("b1") == []
    assert tracker.receipt_status(other.key).state == State.RECEIVED  # type: ignore[union-attr]
    tracker.mark_imported(first.key, "b1", "is-1", True)
    assert tracker.receipts_blocking("b2") == []
    assert admit(tracker, "b2", second, other) == {
        second.key: Admission.ACCEPTED,
        other.key: Admission.ACCEPTED,
    }


def test_admission_stops_at_the_first_blocked_instance_in_uid_order(tracker: Tracker) -> None:
    held = receipt("b0", "1.2", at=T0)
    mine = [receipt("b1", sop, at=T0 + 5) for sop in ("1.3", "1.1", "1.2")]
    tracker.record_receipts([held, *mine])
    admit(tracker, "b0", held)
    assert tracker.mark_importing([r.key for r in mine], "b1") == {
        mine[0].key: Admission.WAITING,
        mine[1].key: Admission.ACCEPTED,
        mine[2].key: Admission.BLOCKED,
    }


def test_batches_crossing_instances_wait_without_deadlock(tracker: Tracker) -> None:
    # b1 and b2 both hold receipts of X and Y. Admission in UID order means a waiting batch
    # holds only instances that sort before the one it waits for: no circular wait.
    y0 = receipt("b0", "2.2", at=T0)
    x1, y1 = receipt("b1", "2.1", at=T0 + 1), receipt("b1", "2.2", at=T0 + 2)
    x2, y2 = receipt("b2", "2.1", at=T0 + 3), receipt("b2", "2.2", at=T0 + 4)
    tracker.record_receipts([y0, x1, y1, x2, y2])
    admit(tracker, "b0", y0)
    assert admit(tracker, "b1", x1, y1) == {x1.key: Admission.ACCEPTED, y1.key: Admission.BLOCKED}
    assert admit(tracker, "b2", x2, y2) == {x2.key: Admission.BLOCKED, y2.key: Admission.WAITING}
    assert [s.key for s in tracker.receipts_blocking("b2")] == [x1.key, y0.key]
    assert [s.key for s in tracker.receipts_blocking("b1")] == [y0.key]
    # b2 holds nothing while it waits; b1 holds only X, which sorts before Y.
    assert {tracker.receipt_status(r.key).state for r in (x2, y2)} == {State.RECEIVED}  # type: ignore[union-attr]
    tracker.mark_imported(y0.key, "b0", "is-y", True)
    assert admit(tracker, "b1", x1, y1) == {x1.key: Admission.ACCEPTED, y1.key: Admission.ACCEPTED}
    tracker.mark_imported_many(
        "b1", [ImportedInstance(x1.key, "is-x", True), ImportedInstance(y1.key, "is-y", True)]
    )
    assert admit(tracker, "b2", x2, y2) == {x2.key: Admission.ACCEPTED, y2.key: Admission.ACCEPTED}


def test_an_older_receipt_is_never_imported_after_a_newer_one(tracker: Tracker) -> None:
    old = receipt("b1", "3.1", at=T0)
    new = receipt("b2", "3.1", at=T0 + 60)
    tracker.record_receipts([old, new])
    admit(tracker, "b2", new)
    tracker.mark_imported(new.key, "b2", "is-new", True)
    assert tracker.superseded(old.key)
    assert not tracker.superseded(new.key)
    assert admit(tracker, "b1", old) == {old.key: Admission.SUPERSEDED}
    status = tracker.receipt_status(old.key)
    assert status is not None
    assert (status.state, status.reason) == (State.FAILED, SUPERSEDED_REASON)
    # Replays, with or without retry, answer the same and add nothing to the history.
    assert admit(tracker, "b1", old) == {old.key: Admission.SUPERSEDED}
    assert tracker.mark_importing([old.key], "b3", retry=True) == {old.key: Admission.SUPERSEDED}
    (attempt,) = tracker.attempts(old.key)
    assert (attempt.outcome, attempt.reason, attempt.batch_id) == (
        State.FAILED,
        SUPERSEDED_REASON,
        None,
    )
    (where,) = tracker.where("3.1")
    assert (where.key, where.state, where.image_set_id) == (new.key, State.IMPORTED, "is-new")
    assert tracker.failures() == []  # the instance's newest receipt is imported


def test_an_older_receipt_waits_for_a_newer_one_importing_then_is_superseded(
    tracker: Tracker,
) -> None:
    old = receipt("b1", "3.2", at=T0)
    new = receipt("b2", "3.2", at=T0 + 60)
    tracker.record_receipts([old, new])
    admit(tracker, "b2", new)
    assert admit(tracker, "b1", old) == {old.key: Admission.BLOCKED}
    tracker.mark_imported(new.key, "b2", "is-new", True)
    assert admit(tracker, "b1", old) == {old.key: Admission.SUPERSEDED}


def test_receipts_imported_in_order_are_all_admitted(tracker: Tracker) -> None:
    old = receipt("b1", "3.3", at=T0)
    new = receipt("b2", "3.3", at=T0 + 60)
    tracker.record_receipts([old, new])
    admit(tracker, "b1", old)
    tracker.mark_imported(old.key, "b1", "is-1", True, "1")
    assert not tracker.superseded(new.key)
    assert admit(tracker, "b2", new) == {new.key: Admission.ACCEPTED}
    tracker.mark_imported(new.key, "b2", "is-1", True, "2")
    assert tracker.superseded(old.key)  # a fact now, but its outcome stays IMPORTED
    assert tracker.receipt_status(old.key).state == State.IMPORTED  # type: ignore[union-attr]


def test_two_receipts_of_an_instance_in_one_call(tracker: Tracker) -> None:
    old = receipt("b1", "3.4", at=T0, series=SERIES_A)
    new = receipt("b1", "3.4", at=T0 + 1, series=SERIES_B)
    tracker.record_receipts([old, new])
    assert admit(tracker, "b1", new, old) == {
        new.key: Admission.ACCEPTED,
        old.key: Admission.SUPERSEDED,
    }


# -- where, failures, metrics ---------------------------------------------------------------


def test_where_answers_for_a_study_a_series_or_an_instance(tracker: Tracker) -> None:
    a1 = receipt("b1", "4.1", at=T0, series=SERIES_A)
    a2_old = receipt("b1", "4.2", at=T0 + 1, series=SERIES_A)
    a2_new = receipt("b2", "4.2", at=T0 + 50, series=SERIES_A)
    b1 = receipt("b1", "4.3", at=T0 + 2, series=SERIES_B)
    elsewhere = receipt("b1", "5.1", at=T0 + 3, study="1.2.3", series="1.2.3.4")
    tracker.record_receipts([a1, a2_old, a2_new, b1, elsewhere])
    sealed_batch_with_job(tracker, "b1", "job-b1")
    admit(tracker, "b1", a1, a2_old, b1)
    tracker.mark_imported(a1.key, "b1", "is-a", True)
    tracker.mark_failed([b1.key], "failure line: bad pixel data", "b1")
    study = tracker.where(STUDY)
    assert [(s.sop_instance_uid, s.key) for s in study] == [
        ("4.1", a1.key),
        ("4.2", a2_new.key),  # the instance's newest receipt
        ("4.3", b1.key),
    ]
    first, second, third = study
    assert (first.state, first.image_set_id, first.is_primary, first.job_id) == (
        State.IMPORTED,
        "is-a",
        True,
        "job-b1",
    )
    assert (first.series_instance_uid, first.study_instance_uid) == (SERIES_A, STUDY)
    assert (second.state, second.image_set_id, second.job_id, second.reason) == (
        State.RECEIVED,
        None,
        None,
        None,
    )
    assert (third.state, third.reason, third.job_id) == (
        State.FAILED,
        "failure line: bad pixel data",
        "job-b1",
    )
    assert [s.key for s in tracker.where(SERIES_A)] == [a1.key, a2_new.key]
    assert [s.key for s in tracker.where("4.2")] == [a2_new.key]
    assert tracker.where("9.9.9") == []


def test_failures_list_instances_whose_newest_receipt_failed(tracker: Tracker) -> None:
    x_old = receipt("b1", "6.1", at=T0)
    x_new = receipt("b2", "6.1", at=T0 + 100)
    y = receipt("b1", "6.2", at=T0 + 1)
    tracker.record_receipts([x_old, x_new, y])
    admit(tracker, "b1", x_old, y)
    tracker.mark_failed([x_old.key, y.key], "job failed", "b1")
    # A newer copy of 6.1 waits to be imported: that instance has not failed (yet).
    assert [s.key for s in tracker.failures()] == [y.key]
    admit(tracker, "b2", x_new)
    tracker.mark_failed([x_new.key], "job failed again", "b2")
    assert [s.key for s in tracker.failures()] == [y.key, x_new.key]
    tracker.mark_importing([x_new.key], "b3", retry=True)
    tracker.mark_imported(x_new.key, "b3", "is-x", True)
    (failure,) = tracker.failures()
    assert (failure.key, failure.reason, failure.state) == (y.key, "job failed", State.FAILED)


def test_counts_and_oldest_unimported_age(tracker: Tracker) -> None:
    assert tracker.counts_by_state() == {state.value: 0 for state in State}
    assert tracker.oldest_unimported_age(now=T0) is None
    receipts = [receipt("b1", f"7.{i}", at=T0 + i) for i in range(4)]
    tracker.record_receipts(receipts)
    assert tracker.oldest_unimported_age(now=T0 + 100) == 100
    admit(tracker, "b1", receipts[0], receipts[1])
    assert tracker.oldest_unimported_age(now=T0 + 100) == 100  # IMPORTING is not imported
    tracker.mark_imported(receipts[0].key, "b1", "is", True)
    tracker.mark_failed([receipts[1].key], "failed", "b1")
    assert tracker.oldest_unimported_age(now=T0 + 100) == 98
    assert tracker.counts_by_state() == {"RECEIVED": 2, "IMPORTING": 0, "IMPORTED": 1, "FAILED": 1}


# -- batches --------------------------------------------------------------------------------


def test_the_owner_opens_renews_and_seals(backend: Backend) -> None:
    owner, other = backend.new(), backend.new()
    assert owner.open_batch("b1", "b1/", "w1", 30, now=T0)
    assert owner.open_batch("b1", "b1/", "w1", 30, now=T0 + 1)  # replay
    assert not other.open_batch("b1", "b1/", "w2", 30, now=T0 + 2)
    assert owner.open_batch("b2", "b2/", "w1", 30, now=T0 + 3)
    assert owner.renew_lease("w1", now=T0 + 20) == ["b1", "b2"]
    batch = owner.batch("b1")
    assert batch is not None and batch.lease_expires_at == T0 + 50
    assert not other.seal_batch("b1", "w2", now=T0 + 40)  # the lease is alive
    assert owner.seal_batch("b1", "w1", now=T0 + 41)
    assert owner.seal_batch("b1", "w1", now=T0 + 42)  # replay
    assert not other.seal_batch("b1", "w2", now=T0 + 500)
    assert not owner.seal_batch("unknown", "w1")
    assert not owner.open_batch("b1", "b1/", "w1", 30)  # sealed: never reopened
    assert not owner.record_associations("b1", "w1", open_associations=1)
    batch = owner.batch("b1")
    assert batch is not None
    assert (batch.state, batch.sealed_at, batch.sealed_by) == (BatchState.SEALED, T0 + 41, "w1")
    # A batch missing from the renewal was sealed: the owner opens a new one.
    assert owner.renew_lease("w1", now=T0 + 43) == ["b2"]
    assert [b.batch_id for b in owner.open_batches()] == ["b2"]
    assert [b.batch_id for b in owner.sealed_batches_without_job()] == ["b1"]


def test_anyone_seals_once_the_owner_lease_expired(backend: Backend) -> None:
    owner, worker = backend.new(), backend.new()
    # Explicit clocks: a real 0.3 s lease could run out during the requests themselves.
    assert owner.open_batch("b1", "b1/", "task-1", 30, now=T0)
    assert not worker.seal_batch("b1", "worker-2", now=T0 + 10)
    # The owner crashed: nobody renews.
    assert worker.seal_batch("b1", "worker-2", now=T0 + 31)
    assert owner.renew_lease("task-1", now=T0 + 32) == []  # the owner learns it lost the batch
    batch = worker.batch("b1")
    assert batch is not None and batch.sealed_by == "worker-2"


def test_a_seal_race_has_exactly_one_winner(backend: Backend) -> None:
    workers = [backend.new(), backend.new(), backend.new()]
    ids = [f"race-{i}" for i in range(8)]
    for batch_id in ids:
        assert workers[0].open_batch(batch_id, f"{batch_id}/", "dead-task", 1, now=T0)
    for batch_id in ids:
        results = race(
            [
                lambda w=w, n=n, b=batch_id: w.seal_batch(b, f"worker-{n}")  # type: ignore[misc]
                for n, w in enumerate(workers)
            ]
        )
        assert results.count(True) == 1, (batch_id, results)
        batch = workers[0].batch(batch_id)
        assert batch is not None and batch.sealed_by == f"worker-{results.index(True)}"


# -- jobs -----------------------------------------------------------------------------------


def test_a_job_starts_only_on_a_sealed_batch(tracker: Tracker) -> None:
    with pytest.raises(BatchNotSealedError):
        tracker.record_job_start("unknown", "t", "n")
    tracker.open_batch("b1", "b1/", "w1", 60)
    with pytest.raises(BatchNotSealedError):
        tracker.record_job_start("b1", "t", "n")
    assert tracker.batch_job("b1") is None


def test_a_job_start_race_has_exactly_one_winner(backend: Backend) -> None:
    workers = [backend.new(), backend.new()]
    ids = [f"start-{i}" for i in range(8)]
    for batch_id in ids:
        workers[0].open_batch(batch_id, f"{batch_id}/", "w", 60)
        workers[0].seal_batch(batch_id, "w")
    assert len(workers[1].sealed_batches_without_job()) == len(ids)
    for batch_id in ids:
        results = race(
            [
                lambda w=w, b=batch_id: w.record_job_start(b, f"tok-{b}", f"job-{b}")  # type: ignore[misc]
                for w in workers
            ]
        )
        assert results.count(True) == 1, (batch_id, results)
    assert workers[1].sealed_batches_without_job() == []
    job = workers[0].batch_job(ids[0])
    assert job is not None
    assert (job.batch_id, job.prefix, job.client_token, job.job_name, job.status, job.job_id) == (
        ids[0],
        f"{ids[0]}/",
        f"tok-{ids[0]}",
        f"job-{ids[0]}",
        JobStatus.STARTING,
        None,
    )


def test_the_job_record_only_moves_forward(tracker: Tracker) -> None:
    tracker.open_batch("b1", "b1/", "w1", 60)
    tracker.seal_batch("b1", "w1")
    assert tracker.record_job_start("b1", "tok-b1", "job-b1", now=T0)
    assert not tracker.record_job_start("b1", "tok-b1", "job-b1")  # replay: not won again
    # A start that keeps failing is visible with its reason.
    assert tracker.update_job("b1", message="ThrottlingException: rate exceeded", now=T0 + 1)
    assert [j.batch_id for j in tracker.jobs(JobStatus.STARTING)] == ["b1"]
    assert tracker.set_job_id("b1", "job-1", submitted_at=T0 + 2)
    assert tracker.set_job_id("b1", "job-1")  # replay
    assert not tracker.set_job_id("b1", "job-2")
    assert not tracker.set_job_id("unknown", "job-3")
    assert tracker.update_job("b1", status=JobStatus.IN_PROGRESS, now=T0 + 3)
    assert not tracker.update_job("b1", status=JobStatus.SUBMITTED)  # stale poll
    assert tracker.update_job(
        "b1",
        status=JobStatus.COMPLETED,
        message="",
        counts={"imported": 3, "failed": 1},
        output_uri="s3://out/ds-DicomImport-job-1/",
        ended_at=T0 + 10,
        now=T0 + 11,
    )
    assert tracker.update_job("b1", status=JobStatus.COMPLETED, now=T0 + 12)  # replay
    assert not tracker.update_job("b1", status=JobStatus.IN_PROGRESS)
    assert not tracker.update_job("b1", status=JobStatus.FAILED)
    assert tracker.update_job("b1", results_at=T0 + 20, now=T0 + 20)
    assert tracker.update_job("b1", cleaned_at=T0 + 30, now=T0 + 30)
    assert not tracker.update_job("unknown", message="x")
    job = tracker.job("job-1")
    assert job is not None
    assert job == tracker.batch_job("b1")
    assert (job.status, job.job_id, job.message, dict(job.counts)) == (
        JobStatus.COMPLETED,
        "job-1",
        "",
        {"imported": 3, "failed": 1},
    )
    assert (job.created_at, job.submitted_at, job.ended_at, job.updated_at) == (
        T0,
        T0 + 2,
        T0 + 10,
        T0 + 30,
    )
    assert (job.output_uri, job.results_at, job.cleaned_at) == (
        "s3://out/ds-DicomImport-job-1/",
        T0 + 20,
        T0 + 30,
    )
    assert tracker.job("job-2") is None
    assert [j.batch_id for j in tracker.jobs(JobStatus.COMPLETED)] == ["b1"]
    assert tracker.jobs(JobStatus.IN_PROGRESS) == []
    tracker.open_batch("b2", "b2/", "w1", 60)
    tracker.seal_batch("b2", "w1")
    tracker.record_job_start("b2", "tok-b2", "job-b2", now=T0 + 40)
    assert [j.batch_id for j in tracker.jobs()] == ["b1", "b2"]


def finished_job(tracker: Tracker, batch_id: str, *, at: float = T0) -> None:
    """A job whose results are recorded: history the pipeline never needs to look at again."""
    assert tracker.open_batch(batch_id, f"{batch_id}/", "w1", 60, now=at)
    assert tracker.seal_batch(batch_id, "w1", now=at)
    assert tracker.record_job_start(batch_id, "t", "n", now=at)
    assert tracker.set_job_id(batch_id, f"job-{batch_id}")
    assert tracker.update_job(batch_id, status=JobStatus.COMPLETED, results_at=at, now=at)


def test_unfinished_jobs_are_those_whose_results_are_not_recorded(tracker: Tracker) -> None:
    def job(batch_id: str, at: float, job_id: str | None = None, **changes: object) -> None:
        assert tracker.open_batch(batch_id, f"{batch_id}/", "w1", 60, now=at)
        assert tracker.seal_batch(batch_id, "w1", now=at)
        assert tracker.record_job_start(batch_id, "t", "n", now=at)
        if job_id:
            assert tracker.set_job_id(batch_id, job_id)
        if changes:
            assert tracker.update_job(batch_id, now=at, **changes)  # type: ignore[arg-type]

    job("starting", T0 + 6)
    job("running", T0 + 5, "j-run", status=JobStatus.IN_PROGRESS)
    job("imported", T0 + 1, "j-done", status=JobStatus.COMPLETED, results_at=T0 + 2)
    # A start refused for good, its receipts not marked yet: still the pipeline's to finish.
    job("refused", T0 + 4, status=JobStatus.FAILED, message="AccessDenied")
    job("reading", T0 + 3, "j-read", status=JobStatus.COMPLETED)  # outputs not read yet
    job("failed", T0 + 2, "j-fail", status=JobStatus.FAILED, results_at=T0 + 9)
    unfinished = tracker.unfinished_jobs()
    assert [j.batch_id for j in unfinished] == ["reading", "refused", "running", "starting"]
    assert unfinished[2] == tracker.batch_job("running")
    assert tracker.update_job("reading", results_at=T0 + 10, now=T0 + 10)
    assert tracker.update_job("running", status=JobStatus.FAILED, now=T0 + 10)
    assert [j.batch_id for j in tracker.unfinished_jobs()] == ["refused", "running", "starting"]
    assert tracker.update_job("running", results_at=T0 + 11, now=T0 + 11)
    assert tracker.update_job("running", results_at=T0 + 12, now=T0 + 12)  # a replay
    assert [j.batch_id for j in tracker.unfinished_jobs()] == ["refused", "starting"]
    assert len(tracker.jobs()) == 6


def test_sealed_batches_without_job_leave_once_their_job_is_recorded(tracker: Tracker) -> None:
    finished_job(tracker, "done")
    for n, batch_id in enumerate(("late", "early", "open")):
        assert tracker.open_batch(batch_id, f"{batch_id}/", "w1", 60, now=T0)
        if batch_id != "open":
            assert tracker.seal_batch(batch_id, "w1", now=T0 + 10 - n)
    assert [b.batch_id for b in tracker.sealed_batches_without_job()] == ["early", "late"]
    assert tracker.record_job_start("early", "t", "n")
    assert not tracker.record_job_start("early", "t", "n")  # a replay
    assert [b.batch_id for b in tracker.sealed_batches_without_job()] == ["late"]
    assert [b.batch_id for b in tracker.open_batches()] == ["open"]


def test_what_the_pipeline_reads_every_round_leaves_the_history_out(backend: Backend) -> None:
    """The worker's per-round reads find the few batches and jobs in flight without reading
    the finished ones: on DynamoDB through sparse indexes, never a Scan. (SQLite: the steps
    are counted in tests/unit/test_tracking_sqlite.py.)"""
    if backend.name != "dynamodb":
        pytest.skip("counts the items DynamoDB requests read")
    tracker = backend.new()
    for n in range(8):
        finished_job(tracker, f"old-{n}", at=T0 + n)
    sealed_batch_with_job(tracker, "running", "job-running")
    for batch_id in ("sealed", "open"):
        assert tracker.open_batch(batch_id, f"{batch_id}/", "w1", 60)
    assert tracker.seal_batch("sealed", "w1")
    reads: list[tuple[str, int]] = []

    def count(http_response: object, parsed: dict[str, Any], model: Any, **_: object) -> None:
        if model.name == "BatchGetItem":
            items = sum(len(found) for found in parsed.get("Responses", {}).values())
        else:
            items = int(parsed.get("ScannedCount", 0))
        reads.append((model.name, items))

    events = tracker._client.meta.events  # type: ignore[attr-defined]
    events.register("after-call.dynamodb", count)
    try:
        assert [j.batch_id for j in tracker.unfinished_jobs()] == ["running"]
        assert [b.batch_id for b in tracker.sealed_batches_without_job()] == ["sealed"]
        assert [b.batch_id for b in tracker.open_batches()] == ["open"]
        assert tracker.cleanup_due(keep_imported_seconds=0) == []
    finally:
        events.unregister("after-call.dynamodb", count)
    assert {name for name, _ in reads} == {"Query", "BatchGetItem"}
    # The running job (found, then read again), the sealed batch, the open batch.
    assert sum(items for _, items in reads) == 4, reads


# -- SQLite only: an existing database is upgraded ------------------------------------------


def _asdict(r: Receipt) -> dict[str, object]:
    return {name: getattr(r, name) for name in Receipt.__dataclass_fields__}


def test_sqlite_upgrade_from_schema_1_keeps_receipts_and_finds_their_batches(
    tmp_path: Path,
) -> None:
    path = tmp_path / "old.sqlite3"
    old = receipt("b1", "8.1", at=T0, size=10)
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE schema_version (version INTEGER PRIMARY KEY, applied_at REAL)")
        for statement in _MIGRATIONS[0]:
            conn.execute(statement)
        conn.execute("INSERT INTO schema_version VALUES (1, 0)")
        values = _asdict(old)
        conn.execute(
            f"INSERT INTO receipts ({', '.join(values)}, state, state_changed_at)"
            f" VALUES ({', '.join('?' * len(values))}, 'RECEIVED', 0)",
            list(values.values()),
        )
    with SqliteTracker(path) as tracker:
        batch = tracker.batch("b1")
        assert batch is not None
        assert (batch.state, batch.owner, batch.files, batch.bytes) == (BatchState.OPEN, "", 1, 10)
        assert tracker.seal_batch("b1", "w1")
        assert admit(tracker, "b1", old) == {old.key: Admission.ACCEPTED}
        assert tracker.receipts_for_instance("8.1") == [old]


def test_an_admission_race_admits_one_receipt_of_an_instance(backend: Backend) -> None:
    workers = [backend.new(), backend.new()]
    for n in range(6):
        first = receipt(f"ra{n}", f"9.{n}", at=T0)
        second = receipt(f"rb{n}", f"9.{n}", at=T0 + 1)
        workers[0].record_receipts([first, second])
        results = race(
            [
                lambda: (
                    workers[0].mark_importing([first.key], f"ra{n}")[first.key]  # noqa: B023
                    is Admission.ACCEPTED
                ),
                lambda: (
                    workers[1].mark_importing([second.key], f"rb{n}")[second.key]  # noqa: B023
                    is Admission.ACCEPTED
                ),
            ]
        )
        assert results.count(True) == 1, results
        states = [workers[0].receipt_status(r.key).state for r in (first, second)]  # type: ignore[union-attr]
        assert states.count(State.IMPORTING) == 1, states
