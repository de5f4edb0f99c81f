"""SqliteTracker on real database files: schema, idempotency, threads and processes."""

from __future__ import annotations

import multiprocessing
import sqlite3
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from store_scp.tracking.base import (
    Admission,
    ImportedInstance,
    JobStatus,
    Receipt,
    State,
    Tracker,
)
from store_scp.tracking.sqlite import SCHEMA_VERSION, SqliteTracker, TrackerSchemaError


def make_receipt(
    key: str,
    *,
    sop_instance_uid: str = "1.2.3.4.5",
    received_at: float = 1_700_000_000.0,
    sha256: str = "ab" * 32,
    peer: str = "192.0.2.7:40000",
) -> Receipt:
    return Receipt(
        key=key,
        batch_id=key.split("/", 1)[0],
        sop_instance_uid=sop_instance_uid,
        sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
        study_instance_uid="1.2.3",
        series_instance_uid="1.2.3.4",
        transfer_syntax_uid="1.2.840.10008.1.2.1",
        size=1234,
        sha256=sha256,
        calling_ae="MODALITY",
        peer=peer,
        received_at=received_at,
    )


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "tracking" / "tracker.sqlite3"


@pytest.fixture
def tracker(db_path: Path) -> Iterator[SqliteTracker]:
    with SqliteTracker(db_path) as t:
        yield t


def test_satisfies_the_port(tracker: SqliteTracker) -> None:
    port: Tracker = tracker
    assert port.known_keys([]) == set()


def test_record_receipt_is_idempotent_by_key(tracker: SqliteTracker) -> None:
    first = make_receipt("b1/1.2.3/1.2.3.4/1.2.3.4.5.dcm")
    assert tracker.record_receipt(first) is True
    assert tracker.record_receipt(first) is False
    # Same key with other content: still ignored, the first row is kept as it was.
    other = make_receipt(first.key, sha256="cd" * 32, received_at=1_800_000_000.0)
    assert tracker.record_receipt(other) is False
    assert tracker.receipts_for_instance("1.2.3.4.5") == [first]
    assert tracker.counts_by_state()[State.RECEIVED] == 1


def test_an_invalid_receipt_is_an_error_not_silently_skipped(tracker: SqliteTracker) -> None:
    broken = replace(make_receipt("b/1.dcm"), sha256=None)  # type: ignore[arg-type]
    with pytest.raises(sqlite3.IntegrityError):
        tracker.record_receipt(broken)
    assert tracker.known_keys(["b/1.dcm"]) == set()


def test_two_receipts_of_one_instance_are_both_kept_oldest_first(tracker: SqliteTracker) -> None:
    newer = make_receipt("b2/s/se/1.2.3.4.5.dcm", received_at=1_700_000_100.0, sha256="02" * 32)
    older = make_receipt("b1/s/se/1.2.3.4.5.dcm", received_at=1_700_000_000.0, sha256="01" * 32)
    other = make_receipt("b1/s/se/9.9.dcm", sop_instance_uid="9.9")
    for receipt in (newer, older, other):
        assert tracker.record_receipt(receipt)
    assert tracker.receipts_for_instance("1.2.3.4.5") == [older, newer]
    assert tracker.receipts_for_instance("9.9") == [other]
    assert tracker.receipts_for_instance("0.0") == []


def test_receipt_round_trips_every_field(tracker: SqliteTracker) -> None:
    receipt = Receipt(
        key="batch-7/1.2/1.2.3/1.2.3.4.dcm",
        batch_id="batch-7",
        sop_instance_uid="1.2.3.4",
        sop_class_uid="1.2.840.10008.5.1.4.1.1.4",
        study_instance_uid="1.2",
        series_instance_uid="1.2.3",
        transfer_syntax_uid="1.2.840.10008.1.2.4.202",
        size=2**33 + 5,  # above 4 GiB: stored as a 64-bit integer
        sha256="0f" * 32,
        calling_ae="CT SCANNER 1",
        peer="[2001:db8::1]:104",
        received_at=1_712_345_678.123456,
    )
    tracker.record_receipt(receipt)
    assert tracker.receipts_for_instance("1.2.3.4") == [receipt]


def test_known_keys_in_chunks(tracker: SqliteTracker) -> None:
    keys = [f"b/{i // 100}/{i}.dcm" for i in range(1_234)]  # several chunks of the IN query
    for key in keys[::2]:
        tracker.record_receipt(make_receipt(key, sop_instance_uid=key))
    asked = (key for key in [*keys, "missing.dcm", keys[0]])  # any iterable, duplicates too
    assert tracker.known_keys(asked) == set(keys[::2])
    assert tracker.known_keys([]) == set()


def test_counts_by_state_lists_every_state(tracker: SqliteTracker, db_path: Path) -> None:
    assert tracker.counts_by_state() == {state.value: 0 for state in State}
    for i in range(5):
        tracker.record_receipt(make_receipt(f"b/{i}.dcm", sop_instance_uid=str(i)))
    with sqlite3.connect(db_path) as other:
        other.execute("UPDATE receipts SET state = 'IMPORTED' WHERE key IN ('b/0.dcm', 'b/1.dcm')")
        other.execute("UPDATE receipts SET state = 'FAILED' WHERE key = 'b/2.dcm'")
    assert tracker.counts_by_state() == {
        "RECEIVED": 2,
        "IMPORTING": 0,
        "IMPORTED": 2,
        "FAILED": 1,
    }


def test_new_rows_are_received_with_empty_outcome(tracker: SqliteTracker, db_path: Path) -> None:
    tracker.record_receipt(make_receipt("b/1.dcm"))
    with sqlite3.connect(db_path) as conn:
        row = conn.execute(
            "SELECT state, state_changed_at, image_set_id, is_primary, job_id, reason FROM receipts"
        ).fetchone()
    assert row[0] == "RECEIVED"
    assert row[1] > 0
    assert row[2:] == (None, None, None, None)


def test_schema(db_path: Path) -> None:
    SqliteTracker(db_path).close()
    with sqlite3.connect(db_path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("SELECT version FROM schema_version").fetchall() == [
            (version,) for version in range(1, SCHEMA_VERSION + 1)
        ]
        columns = {row[1] for row in conn.execute("PRAGMA table_info(receipts)")}
        assert (
            set(Receipt.__dataclass_fields__)
            | {
                "state",
                "state_changed_at",
                "image_set_id",
                "is_primary",
                "job_id",
                "reason",
                # Version 2: the newest attempt, and the cleanup beside the outcome.
                "attempt",
                "job_batch_id",
                "image_set_version",
                "cleanup_action",
                "cleanup_at",
                # Version 3: the claim of the worker cleaning up.
                "cleanup_claimed_by",
                "cleanup_claim_expires_at",
            }
            == columns
        )
        (pk,) = [row[1] for row in conn.execute("PRAGMA table_info(receipts)") if row[5]]
        assert pk == "key"
        indexed = {
            tuple(col[2] for col in conn.execute(f"PRAGMA index_info({name})"))
            for (name,) in conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'receipts'"
                " AND sql IS NOT NULL"
            )
        }
    assert {first for first, *_ in indexed} == {
        "sop_instance_uid",
        "study_instance_uid",
        "series_instance_uid",
        "state",
        "batch_id",
        "job_batch_id",  # the receipts of a job
    }
    # A state outside the state machine is refused by the database itself.
    with sqlite3.connect(db_path) as conn, pytest.raises(sqlite3.IntegrityError):
        conn.execute(
            "INSERT INTO receipts (key, batch_id, sop_instance_uid, sop_class_uid,"
            " study_instance_uid, series_instance_uid, transfer_syntax_uid, size, sha256,"
            " calling_ae, peer, received_at, state, state_changed_at) VALUES"
            " ('k', 'b', 'i', 'c', 's', 'se', 't', 1, 'h', 'ae', '', 0, 'LOST', 0)"
        )


def test_reopen_keeps_rows_and_does_not_migrate_again(db_path: Path) -> None:
    with SqliteTracker(db_path) as tracker:
        tracker.record_receipt(make_receipt("b/1.dcm"))
    with SqliteTracker(db_path) as tracker:
        assert tracker.known_keys(["b/1.dcm"]) == {"b/1.dcm"}
    with sqlite3.connect(db_path) as conn:
        assert conn.execute("SELECT COUNT(*) FROM schema_version").fetchone() == (SCHEMA_VERSION,)


def test_refuses_a_database_from_a_newer_release(db_path: Path) -> None:
    SqliteTracker(db_path).close()
    with sqlite3.connect(db_path) as conn:
        conn.execute(
            "INSERT INTO schema_version (version, applied_at) VALUES (?, 0)", (SCHEMA_VERSION + 1,)
        )
    with pytest.raises(TrackerSchemaError, match="upgrade"):
        SqliteTracker(db_path)


def test_closed_tracker_refuses_calls(db_path: Path) -> None:
    tracker = SqliteTracker(db_path)
    tracker.close()
    tracker.close()  # idempotent
    with pytest.raises(sqlite3.ProgrammingError):
        tracker.known_keys(["x"])


def test_many_threads_share_one_tracker(tracker: SqliteTracker) -> None:
    threads_count, per_thread = 8, 150
    barrier = threading.Barrier(threads_count)
    inserted: list[int] = [0] * threads_count
    failures: list[BaseException] = []

    def work(index: int) -> None:
        try:
            barrier.wait()
            for i in range(per_thread):
                # Each key is written by two threads: exactly one of them inserts it.
                key = f"b/{(index // 2)}/{i}.dcm"
                if tracker.record_receipt(make_receipt(key, sop_instance_uid=f"{index // 2}.{i}")):
                    inserted[index] += 1
                tracker.known_keys([key])
                tracker.receipts_for_instance(f"{index // 2}.{i}")
        except BaseException as exc:
            failures.append(exc)

    workers = [threading.Thread(target=work, args=(n,)) for n in range(threads_count)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert failures == []
    unique = threads_count // 2 * per_thread
    assert sum(inserted) == unique
    assert tracker.counts_by_state()["RECEIVED"] == unique


def _process_worker(
    path: str, index: int, per_process: int, start: object, results: object
) -> None:
    """Runs in a child process: open its own tracker (maybe creating the file) and write."""
    start.wait()  # type: ignore[attr-defined]
    inserted = 0
    try:
        with SqliteTracker(Path(path)) as tracker:
            for i in range(per_process):
                key = f"b/{index % 3}/{i}.dcm"  # processes 0 and 3 share their keys
                if tracker.record_receipt(make_receipt(key, sop_instance_uid=f"{index % 3}.{i}")):
                    inserted += 1
                tracker.counts_by_state()
        results.put((index, inserted, None))  # type: ignore[attr-defined]
    except BaseException as exc:
        results.put((index, inserted, repr(exc)))  # type: ignore[attr-defined]


def test_many_processes_write_one_file(db_path: Path) -> None:
    # The file does not exist yet: the processes also race to create it and its schema.
    ctx = multiprocessing.get_context("spawn")
    processes_count, per_process = 4, 200
    start = ctx.Event()
    results = ctx.Queue()
    processes = [
        ctx.Process(target=_process_worker, args=(str(db_path), n, per_process, start, results))
        for n in range(processes_count)
    ]
    for process in processes:
        process.start()
    start.set()
    outcomes = [results.get(timeout=120) for _ in processes]
    for process in processes:
        process.join(timeout=60)
        assert process.exitcode == 0
    assert [error for _, _, error in outcomes] == [None] * processes_count
    unique = 3 * per_process
    assert sum(inserted for _, inserted, _ in outcomes) == unique
    with SqliteTracker(db_path) as tracker:
        every_key = [f"b/{group}/{i}.dcm" for group in range(3) for i in range(per_process)]
        assert tracker.known_keys(every_key) == set(every_key)
        assert tracker.counts_by_state()["RECEIVED"] == unique
    with sqlite3.connect(db_path) as conn:
        assert conn.execute("SELECT COUNT(*) FROM schema_version").fetchone() == (SCHEMA_VERSION,)


def _use_inherited(tracker: SqliteTracker, results: object) -> None:
    try:
        tracker.record_receipt(make_receipt("b/child.dcm", sop_instance_uid="child"))
        results.put(sorted(tracker.known_keys(["b/parent.dcm", "b/child.dcm"])))  # type: ignore[attr-defined]
        tracker.close()
    except BaseException as exc:
        results.put(repr(exc))  # type: ignore[attr-defined]


@pytest.mark.skipif("fork" not in multiprocessing.get_all_start_methods(), reason="needs fork()")
def test_tracker_inherited_through_fork_opens_its_own_connection(
    tracker: SqliteTracker,
) -> None:
    tracker.record_receipt(make_receipt("b/parent.dcm", sop_instance_uid="parent"))
    ctx = multiprocessing.get_context("fork")
    results = ctx.Queue()
    child = ctx.Process(target=_use_inherited, args=(tracker, results))
    child.start()
    assert results.get(timeout=60) == ["b/child.dcm", "b/parent.dcm"]
    child.join(timeout=60)
    assert child.exitcode == 0
    # The parent's connection still works after the child closed its own.
    assert tracker.known_keys(["b/parent.dcm", "b/child.dcm"]) == {"b/parent.dcm", "b/child.dcm"}


def _open_and_close(path: str, results: multiprocessing.Queue[str]) -> None:
    try:
        SqliteTracker(Path(path)).close()
        results.put("ok")
    except Exception as exc:  # reported to the parent, which fails the test
        results.put(f"{type(exc).__name__}: {exc}")


def test_processes_opening_a_new_file_at_once_all_succeed(tmp_path: Path) -> None:
    """Receivers forked together (--processes N) all open the same new tracker file: the WAL
    switch and the first migration must not fail any of them."""
    ctx = multiprocessing.get_context("fork")
    failures = []
    for i in range(25):
        results: multiprocessing.Queue[str] = ctx.Queue()
        path = str(tmp_path / f"t{i}.sqlite3")
        procs = [ctx.Process(target=_open_and_close, args=(path, results)) for _ in range(3)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(60)
        failures += [r for r in (results.get(timeout=10) for _ in procs) if r != "ok"]
    assert failures == []


def _admission_steps(path: Path, history: int) -> int:
    """SQLite VM steps (in hundreds) spent admitting 50 new receipts into a job, with
    `history` receipts of other instances already IMPORTED and as many IMPORTING."""
    with SqliteTracker(path) as t:
        old = [make_receipt(f"old/{i}.dcm", sop_instance_uid=f"1.2.9.{i}") for i in range(history)]
        busy = [
            make_receipt(f"busy/{i}.dcm", sop_instance_uid=f"1.2.8.{i}") for i in range(history)
        ]
        new = [make_receipt(f"new/{i}.dcm", sop_instance_uid=f"1.2.7.{i}") for i in range(50)]
        t.record_receipts(old + busy + new)
        t.mark_importing([r.key for r in old], "old")
        t.mark_imported_many("old", [ImportedInstance(r.key, "set-1", True) for r in old])
        t.mark_importing([r.key for r in busy], "busy")
        steps = 0

        def count() -> int:
            nonlocal steps
            steps += 1
            return 0  # go on

        conn = t._connection()  # the progress handler is per connection: the tracker's own
        conn.set_progress_handler(count, 100)
        admitted = t.mark_importing([r.key for r in new], "new")
        conn.set_progress_handler(None, 0)
        assert set(admitted.values()) == {Admission.ACCEPTED}
        return steps


def test_admission_cost_does_not_grow_with_the_history(tmp_path: Path) -> None:
    """Admitting a receipt looks up the receipts of its own instance, not every receipt in
    the IMPORTED or IMPORTING state: a batch's admission holds the write lock (receipts of
    the receiver wait meanwhile) and must not slow down as the tracker fills up."""
    small = _admission_steps(tmp_path / "small.sqlite3", 100)
    large = _admission_steps(tmp_path / "large.sqlite3", 4000)
    assert large < 2 * small, (small, large)


def _round_steps(path: Path, history: int) -> int:
    """SQLite VM steps (in tens) of the reads the pipeline makes every round, with
    `history` jobs whose results are recorded (and their sealed batches) in the database."""
    with SqliteTracker(path) as t:
        for n in range(history):
            batch_id = f"old-{n}"
            t.open_batch(batch_id, f"{batch_id}/", "w", 60, now=n)
            t.seal_batch(batch_id, "w", now=n)
            t.record_job_start(batch_id, "t", "n", now=n)
            t.set_job_id(batch_id, f"job-{n}")
            t.update_job(batch_id, status=JobStatus.COMPLETED, results_at=n, now=n)
        for batch_id in ("running", "sealed", "open"):
            t.open_batch(batch_id, f"{batch_id}/", "w", 60)
        for batch_id in ("running", "sealed"):
            t.seal_batch(batch_id, "w")
        t.record_job_start("running", "t", "n")
        steps = 0

        def count() -> int:
            nonlocal steps
            steps += 1
            return 0  # go on

        conn = t._connection()
        conn.set_progress_handler(count, 10)
        found = (
            [j.batch_id for j in t.unfinished_jobs()],
            [b.batch_id for b in t.sealed_batches_without_job()],
            [b.batch_id for b in t.open_batches()],
            [j.batch_id for j in t.jobs(JobStatus.STARTING)],
            t.cleanup_due(keep_imported_seconds=0),
        )
        conn.set_progress_handler(None, 0)
        assert found == (["running"], ["sealed"], ["open"], ["running"], [])
        return steps


def test_a_pipeline_round_does_not_read_the_history(tmp_path: Path) -> None:
    """Every job stays in `jobs` and every batch stays SEALED once done: the reads of each
    pipeline round (about once a second) go through partial indexes that leave them out, so
    they cost the same with thousands of finished jobs as with none."""
    small = _round_steps(tmp_path / "small.sqlite3", 10)
    large = _round_steps(tmp_path / "large.sqlite3", 2000)
    assert large <= small + 2, (small, large)  # a deeper B-tree may cost a step


def test_upgrade_to_schema_4_knows_which_sealed_batches_have_a_job(db_path: Path) -> None:
    SqliteTracker(db_path).close()
    with sqlite3.connect(db_path) as conn:  # back to schema 3, with a history
        conn.execute("DROP INDEX jobs_unfinished")
        conn.execute("DROP INDEX batches_without_job")
        conn.execute("ALTER TABLE batches DROP COLUMN has_job")
        conn.execute("DELETE FROM schema_version WHERE version = 4")
        for batch_id in ("done", "running", "waiting"):
            conn.execute(
                "INSERT INTO batches (batch_id, prefix, owner, state, lease_seconds,"
                " lease_expires_at, opened_at, sealed_at)"
                " VALUES (?, ?, 'w', 'SEALED', 60, 0, 1, 2)",
                (batch_id, f"{batch_id}/"),
            )
        conn.executemany(
            "INSERT INTO jobs (batch_id, prefix, client_token, job_name, job_id, status,"
            " created_at, updated_at, results_at) VALUES (?, ?, 't', 'n', ?, ?, 3, 3, ?)",
            [
                ("done", "done/", "j1", "COMPLETED", 4),
                ("running", "running/", "j2", "SUBMITTED", None),
            ],
        )
    with SqliteTracker(db_path) as tracker:
        assert [b.batch_id for b in tracker.sealed_batches_without_job()] == ["waiting"]
        assert [j.batch_id for j in tracker.unfinished_jobs()] == ["running"]
