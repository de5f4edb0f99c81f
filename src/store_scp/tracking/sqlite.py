"""SQLite adapter of the Tracker port: the embedded default, one database file.

Concurrency
-----------
Several processes may open the same file at once: the SO_REUSEPORT server workers and a separate
`store-scp worker`. The database runs in WAL mode, so readers never block the writer and the
writer never blocks readers; writers take turns, and a writer that finds the lock taken waits up
to `busy_timeout` seconds instead of failing with "database is locked". Multi-statement writes
start with BEGIN IMMEDIATE, which takes the write lock before reading anything: a deferred
transaction that reads and then writes can fail at once with SQLITE_BUSY (its snapshot went
stale) without ever calling the busy handler.

Within one process, the server calls the tracker from a thread pool. One connection is shared
and guarded by a lock: SQLite admits one writer at a time anyway, and the statements here are
short. A tracker inherited through fork() opens a fresh connection in the child (SQLite
connections must not cross a fork); open trackers after forking where you can.

WAL needs shared memory between the processes, so the file must be on a local file system, not
on NFS or SMB.

Durability
----------
`synchronous=NORMAL`: in WAL mode a commit is safe against a crash of the process, but the last
transactions before a power loss or OS crash may roll back (they are in the WAL, not yet synced).
That is acceptable because the committed object, not the row, is the record: the object store
fsyncs every object before the C-STORE-RSP, and the start-up reconciler
(`tracking.reconcile.reconcile`) registers every committed object that has no row. FULL would
add an fsync to every receipt, on the hot path of every C-STORE, for nothing the reconciler does
not already restore. State changes of the import pipeline are idempotent and are replayed from
the datastore's job outputs, so they do not need FULL either; an operation that cannot be
replayed can switch this connection to `PRAGMA synchronous=FULL` around its own transaction.

Schema
------
`receipts` holds one row per receipt (one received copy of a SOP instance), keyed by its object
key: every `Receipt` field, then the receipt's fate: `state`, `state_changed_at`, the newest
attempt (`attempt`, its job's batch `job_batch_id` and `job_id`) and its outcome
(`image_set_id`, `is_primary`, `image_set_version`, `reason`), the cleanup recorded beside
it (`cleanup_action`, `cleanup_at`) and the claim of the worker doing it (`cleanup_claimed_by`,
`cleanup_claim_expires_at`). `attempts` keeps every attempt, keyed by (key, attempt), with the
cleanup of its outcome.
`batches` holds one row per batch (owner, lease, state, counts, whether its job is recorded),
`jobs` one row per job, keyed by the batch id it imports. What the pipeline reads every round
(open batches, sealed batches without a job, unfinished jobs, cleanups due) goes through
partial indexes that leave the finished history out. `schema_version` lists the migrations
applied; `_MIGRATIONS` is applied in order at open, each in one transaction, so a newer release
only appends to it.

Conditional writes (the transitions, seal, job start) read and write inside one BEGIN IMMEDIATE
transaction: with the write lock held from the start, the check and the write cannot be split
by another thread or process. The ordering rules of `tracking.base` are checked against the
other receipts of the same SOP instance in that same transaction.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
import time
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import fields
from itertools import islice
from pathlib import Path
from typing import Any

from store_scp.tracking.base import (
    SUPERSEDED_REASON,
    Admission,
    Attempt,
    Batch,
    BatchNotSealedError,
    BatchState,
    ImportedInstance,
    Job,
    JobStatus,
    Receipt,
    ReceiptStatus,
    State,
    Tracker,
    TrackerError,
    admission_by_state,
    is_superseded,
)

__all__ = ["SCHEMA_VERSION", "SqliteTracker", "TrackerSchemaError"]

log = logging.getLogger(__name__)

_STATES = ", ".join(f"'{state.value}'" for state in State)
_BATCH_STATES = ", ".join(f"'{state.value}'" for state in BatchState)
_JOB_STATUSES = ", ".join(f"'{status.value}'" for status in JobStatus)

#: Migrations, in order: entry i brings the schema from version i to version i + 1. Never edit
#: an entry once released; append a new one.
_MIGRATIONS: tuple[tuple[str, ...], ...] = (
    # Version 1: receipts and their state.
    (
        f"""
        CREATE TABLE receipts (
            key                 TEXT PRIMARY KEY,
            batch_id            TEXT NOT NULL,
            sop_instance_uid    TEXT NOT NULL,
            sop_class_uid       TEXT NOT NULL,
            study_instance_uid  TEXT NOT NULL,
            series_instance_uid TEXT NOT NULL,
            transfer_syntax_uid TEXT NOT NULL,
            size                INTEGER NOT NULL,
            sha256              TEXT NOT NULL,
            calling_ae          TEXT NOT NULL,
            peer                TEXT NOT NULL,
            received_at         REAL NOT NULL,
            state               TEXT NOT NULL DEFAULT 'RECEIVED' CHECK (state IN ({_STATES})),
            state_changed_at    REAL NOT NULL,
            image_set_id        TEXT,
            is_primary          INTEGER CHECK (is_primary IN (0, 1)),
            job_id              TEXT,
            reason              TEXT
        )
        """,
        # "Every receipt of this instance, oldest first" and "its newest receipt".
        "CREATE INDEX receipts_by_instance ON receipts (sop_instance_uid, received_at)",
        # `store-scp where UID` for a study or a series.
        "CREATE INDEX receipts_by_study ON receipts (study_instance_uid)",
        "CREATE INDEX receipts_by_series ON receipts (series_instance_uid)",
        # Counts per state, and the oldest receipt in a state (the oldest un-imported age).
        "CREATE INDEX receipts_by_state ON receipts (state, received_at)",
        # The receipts of a batch, when it is sealed and when its job's results come back.
        "CREATE INDEX receipts_by_batch ON receipts (batch_id)",
    ),
    # Version 2: the import pipeline: attempts, cleanup, batches and jobs.
    (
        # The newest attempt (0: none yet) and the batch whose job runs or ran it.
        "ALTER TABLE receipts ADD COLUMN attempt INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE receipts ADD COLUMN job_batch_id TEXT",
        "ALTER TABLE receipts ADD COLUMN image_set_version TEXT",
        # Cleanup, beside the outcome.
        "ALTER TABLE receipts ADD COLUMN cleanup_action TEXT",
        "ALTER TABLE receipts ADD COLUMN cleanup_at REAL",
        f"""
        CREATE TABLE attempts (
            key                 TEXT NOT NULL REFERENCES receipts (key),
            attempt             INTEGER NOT NULL CHECK (attempt >= 1),
            batch_id            TEXT,
            job_id              TEXT,
            started_at          REAL NOT NULL,
            ended_at            REAL,
            outcome             TEXT CHECK (outcome IN ({_STATES})),
            reason              TEXT,
            image_set_id        TEXT,
            is_primary          INTEGER CHECK (is_primary IN (0, 1)),
            image_set_version   TEXT,
            PRIMARY KEY (key, attempt)
        ) WITHOUT ROWID
        """,
        f"""
        CREATE TABLE batches (
            batch_id                TEXT PRIMARY KEY,
            prefix                  TEXT NOT NULL,
            owner                   TEXT NOT NULL,
            state                   TEXT NOT NULL CHECK (state IN ({_BATCH_STATES})),
            lease_seconds           REAL NOT NULL,
            lease_expires_at        REAL NOT NULL,
            opened_at               REAL NOT NULL,
            sealed_at               REAL,
            sealed_by               TEXT,
            files                   INTEGER NOT NULL DEFAULT 0,
            bytes                   INTEGER NOT NULL DEFAULT 0,
            first_receipt_at        REAL,
            last_receipt_at         REAL,
            open_associations       INTEGER NOT NULL DEFAULT 0,
            last_association_end_at REAL
        )
        """,
        # Open batches (seal policy), sealed batches waiting for a job.
        "CREATE INDEX batches_by_state ON batches (state, opened_at)",
        # renew_lease: the open batches of one owner.
        "CREATE INDEX batches_by_owner ON batches (owner) WHERE state = 'OPEN'",
        f"""
        CREATE TABLE jobs (
            batch_id        TEXT PRIMARY KEY REFERENCES batches (batch_id),
            prefix          TEXT NOT NULL,
            client_token    TEXT NOT NULL,
            job_name        TEXT NOT NULL,
            job_id          TEXT,
            status          TEXT NOT NULL CHECK (status IN ({_JOB_STATUSES})),
            message         TEXT NOT NULL DEFAULT '',
            counts          TEXT NOT NULL DEFAULT '{{}}',
            created_at      REAL NOT NULL,
            submitted_at    REAL,
            updated_at      REAL NOT NULL,
            ended_at        REAL,
            output_uri      TEXT,
            results_at      REAL,
            cleaned_at      REAL
        )
        """,
        "CREATE INDEX jobs_by_job_id ON jobs (job_id) WHERE job_id IS NOT NULL",
        "CREATE INDEX jobs_by_status ON jobs (status, created_at)",
        # Receipts recorded before this version belong to batches nobody owns any more: they
        # become OPEN, unowned, with an expired lease, so any worker seals them.
        """
        INSERT INTO batches (batch_id, prefix, owner, state, lease_seconds, lease_expires_at,
                             opened_at, files, bytes, first_receipt_at, last_receipt_at)
        SELECT batch_id, batch_id || '/', '', 'OPEN', 0, 0, MIN(received_at), COUNT(*),
               SUM(size), MIN(received_at), MAX(received_at)
        FROM receipts WHERE batch_id <> '' GROUP BY batch_id
        """,
    ),
    # Version 3: retry batches and cleanup.
    (
        # The claim of a worker cleaning the receipt's object up, and until when it holds.
        "ALTER TABLE receipts ADD COLUMN cleanup_claimed_by TEXT",
        "ALTER TABLE receipts ADD COLUMN cleanup_claim_expires_at REAL",
        # Cleanup of each attempt's outcome, kept with the history.
        "ALTER TABLE attempts ADD COLUMN cleanup_action TEXT",
        "ALTER TABLE attempts ADD COLUMN cleanup_at REAL",
        # The receipts a job imports (a retry batch's were received in other batches).
        "CREATE INDEX receipts_by_job ON receipts (job_batch_id) WHERE job_batch_id IS NOT NULL",
        # Outcomes whose cleanup is due, oldest first.
        "CREATE INDEX receipts_cleanup_due ON receipts (state, state_changed_at)"
        " WHERE cleanup_action IS NULL AND state IN ('IMPORTED', 'FAILED')",
    ),
    # Version 4: what the pipeline looks at every round, indexed apart from the history (every
    # batch stays SEALED and every job stays in the table once done).
    (
        # Jobs whose results are not recorded yet: the ones the pipeline follows.
        "CREATE INDEX jobs_unfinished ON jobs (created_at, batch_id) WHERE results_at IS NULL",
        # Whether the batch has its job record (set with it, in record_job_start).
        "ALTER TABLE batches ADD COLUMN has_job INTEGER NOT NULL DEFAULT 0"
        " CHECK (has_job IN (0, 1))",
        "UPDATE batches SET has_job = 1 WHERE batch_id IN (SELECT batch_id FROM jobs)",
        # Sealed batches waiting for their job.
        "CREATE INDEX batches_without_job ON batches (sealed_at, batch_id)"
        " WHERE state = 'SEALED' AND has_job = 0",
    ),
)

#: The schema version this code writes.
SCHEMA_VERSION = len(_MIGRATIONS)

#: Keys per `IN (...)` query: well under SQLite's bound-parameter limit.
_CHUNK = 500

#: Columns holding the Receipt fields, in the dataclass's order (rows map back positionally).
_RECEIPT_COLUMNS = tuple(f.name for f in fields(Receipt))
_SELECT_RECEIPT = f"SELECT {', '.join(_RECEIPT_COLUMNS)} FROM receipts"
# ON CONFLICT (key) DO NOTHING rather than INSERT OR IGNORE: OR IGNORE would also drop, silently,
# a row that breaks a NOT NULL or CHECK constraint; only a known key may be skipped.
_INSERT_RECEIPT = (
    f"INSERT INTO receipts ({', '.join(_RECEIPT_COLUMNS)}, state, state_changed_at) "
    f"VALUES ({', '.join('?' * len(_RECEIPT_COLUMNS))}, ?, ?) ON CONFLICT (key) DO NOTHING"
)
# New receipts count in their batch; a batch seen for the first time is OPEN and unowned.
_COUNT_IN_BATCH = """
    INSERT INTO batches (batch_id, prefix, owner, state, lease_seconds, lease_expires_at,
                         opened_at, files, bytes, first_receipt_at, last_receipt_at)
    VALUES (:batch_id, :prefix, '', 'OPEN', 0, 0, :first, :files, :bytes, :first, :last)
    ON CONFLICT (batch_id) DO UPDATE SET
        files = files + excluded.files,
        bytes = bytes + excluded.bytes,
        first_receipt_at = MIN(COALESCE(first_receipt_at, excluded.first_receipt_at),
                               excluded.first_receipt_at),
        last_receipt_at = MAX(COALESCE(last_receipt_at, excluded.last_receipt_at),
                              excluded.last_receipt_at)
"""

#: ReceiptStatus fields, in order, from `receipts r LEFT JOIN jobs j`.
_STATUS_COLUMNS = ", ".join(
    "COALESCE(j.job_id, r.job_id)" if f.name == "job_id" else f"r.{f.name}"
    for f in fields(ReceiptStatus)
)
_STATUS_FROM = "FROM receipts r LEFT JOIN jobs j ON j.batch_id = r.job_batch_id"
_SELECT_STATUS = f"SELECT {_STATUS_COLUMNS} {_STATUS_FROM}"
#: One instance per SOP Instance UID; a receipt without one (an unreadable object) is its own.
_INSTANCE = "CASE WHEN r.sop_instance_uid = '' THEN r.key ELSE r.sop_instance_uid END"
_NEWEST_FIRST = (
    f"ROW_NUMBER() OVER (PARTITION BY {_INSTANCE} ORDER BY r.received_at DESC, r.key DESC)"
)

_ATTEMPT_COLUMNS = ", ".join(
    "COALESCE(a.job_id, j.job_id)" if f.name == "job_id" else f"a.{f.name}" for f in fields(Attempt)
)
_BATCH_COLUMNS = ", ".join(f.name for f in fields(Batch))
_JOB_COLUMNS = ", ".join(f.name for f in fields(Job))

_FINAL = (State.IMPORTED.value, State.FAILED.value)
#: A new attempt starts without a cleanup (its outcome will get its own). A claim still held
#: stays: the cleanup of the new outcome waits until the old one's has stopped.
_NO_CLEANUP = "cleanup_action = NULL, cleanup_at = NULL"


class TrackerSchemaError(TrackerError):
    """The database was written by a newer release (or is not a tracker database)."""


class SqliteTracker(Tracker):
    """Tracker on one SQLite file, safe for several threads and several processes."""

    def __init__(self, path: Path, *, busy_timeout: float = 30.0) -> None:
        """Open (creating it if needed) the database at `path` and bring its schema up to date.

        `busy_timeout` is how long, in seconds, a write waits for another writer (thread or
        process) before failing with "database is locked".
        """
        self._path = Path(path)
        self._busy_timeout = busy_timeout
        self._lock = threading.Lock()
        self._path.parent.mkdir(parents=True, exist_ok=True)
        self._pid = os.getpid()
        try:
            self._conn: sqlite3.Connection | None = self._connect()
        except sqlite3.DatabaseError as exc:  # not a database, unreadable, locked for good
            raise TrackerError(f"cannot open the tracker database {self._path}: {exc}") from exc
        try:
            self._migrate(self._conn)
        except BaseException as exc:
            self._conn.close()
            self._conn = None
            if isinstance(exc, sqlite3.DatabaseError):
                raise TrackerError(f"tracker database {self._path}: {exc}") from exc
            raise

    # -- receipts, as the receiver writes them ----------------------------------------------

    def record_receipts(self, receipts: Sequence[Receipt]) -> int:
        """Insert many RECEIVED rows in one transaction; returns how many were new. New rows
        count in their batch (created OPEN and unowned if unknown)."""
        if not receipts:
            return 0
        now = time.time()
        per_batch: dict[str, list[float]] = {}  # batch id -> [files, bytes, first, last]
        new = 0
        with self._write() as conn:
            for r in receipts:
                values = tuple(getattr(r, column) for column in _RECEIPT_COLUMNS)
                cursor = conn.execute(_INSERT_RECEIPT, (*values, State.RECEIVED.value, now))
                if cursor.rowcount != 1:
                    continue
                new += 1
                if not r.batch_id:
                    continue  # no prefix to import: never a batch
                agg = per_batch.get(r.batch_id)
                if agg is None:
                    per_batch[r.batch_id] = [1, r.size, r.received_at, r.received_at]
                else:
                    agg[0] += 1
                    agg[1] += r.size
                    agg[2] = min(agg[2], r.received_at)
                    agg[3] = max(agg[3], r.received_at)
            for batch_id, (files, size, first, last) in per_batch.items():
                conn.execute(
                    _COUNT_IN_BATCH,
                    {
                        "batch_id": batch_id,
                        "prefix": f"{batch_id}/",
                        "files": int(files),
                        "bytes": int(size),
                        "first": first,
                        "last": last,
                    },
                )
        return new

    def known_keys(self, keys: Iterable[str]) -> set[str]:
        """The subset of `keys` that already has a row."""
        known: set[str] = set()
        for chunk in _chunks(keys, _CHUNK):
            query = f"SELECT key FROM receipts WHERE key IN ({', '.join('?' * len(chunk))})"
            with self._lock:
                rows = self._connection().execute(query, chunk).fetchall()
            known.update(row[0] for row in rows)
        return known

    def receipts_for_instance(self, sop_instance_uid: str) -> list[Receipt]:
        """Every receipt of one SOP instance, oldest first."""
        query = f"{_SELECT_RECEIPT} WHERE sop_instance_uid = ? ORDER BY received_at, rowid"
        with self._lock:
            rows = self._connection().execute(query, (sop_instance_uid,)).fetchall()
        return [Receipt(*row) for row in rows]

    # -- receipt transitions ----------------------------------------------------------------

    def _mark_importing(
        self, keys: list[str], batch_id: str, retry: bool, at: float
    ) -> dict[str, Admission]:
        result: dict[str, Admission] = {}
        with self._write() as conn:
            rows = _load(conn, keys)
            groups: dict[str, list[_Row]] = defaultdict(list)
            for key in keys:
                row = rows.get(key)
                if row is None:
                    result[key] = Admission.UNKNOWN
                else:
                    groups[row.instance].append(row)
            blocked = False
            for instance in sorted(groups):
                *older, newest = sorted(groups[instance], key=lambda r: (r.received_at, r.key))
                if blocked:
                    for row in (*older, newest):
                        result[row.key] = Admission.WAITING
                    continue
                admission = self._admit(conn, newest, batch_id, retry, at)
                result[newest.key] = admission
                blocked = admission is Admission.BLOCKED
                for row in older:
                    # Two receipts of one instance in one call: only the newest may be imported.
                    result[row.key] = (
                        Admission.WAITING if blocked else _supersede(conn, row, retry, at)
                    )
        return result

    def _mark_imported_many(
        self, batch_id: str, results: Mapping[str, ImportedInstance], at: float
    ) -> set[str]:
        """In one transaction."""
        done: set[str] = set()
        with self._write() as conn:
            rows = _load(conn, results)
            for key, outcome in results.items():
                row = rows.get(key)
                if row is None or row.job_batch_id != batch_id:
                    continue
                if row.state == State.IMPORTED:
                    done.add(key)  # a replay
                    continue
                if row.state != State.IMPORTING:
                    continue
                values = (
                    at,
                    outcome.image_set_id,
                    int(outcome.is_primary),
                    outcome.image_set_version,
                    batch_id,
                    key,
                )
                conn.execute(
                    "UPDATE receipts SET state = 'IMPORTED', state_changed_at = ?,"
                    " image_set_id = ?, is_primary = ?, image_set_version = ?, reason = NULL,"
                    " job_id = (SELECT job_id FROM jobs WHERE batch_id = ?) WHERE key = ?",
                    values,
                )
                conn.execute(
                    "UPDATE attempts SET ended_at = ?, outcome = 'IMPORTED', image_set_id = ?,"
                    " is_primary = ?, image_set_version = ?,"
                    " job_id = (SELECT job_id FROM jobs WHERE batch_id = ?)"
                    " WHERE key = ? AND attempt = ?",
                    (*values, row.attempt),
                )
                done.add(key)
        return done

    def _mark_failed(
        self, keys: list[str], reason: str, batch_id: str | None, at: float
    ) -> set[str]:
        done: set[str] = set()
        with self._write() as conn:
            rows = _load(conn, keys)
            for key in keys:
                row = rows.get(key)
                if row is None:
                    continue
                if batch_id is None:
                    if row.state == State.FAILED and row.job_batch_id is None:
                        if row.reason == reason:
                            done.add(key)  # a replay
                    elif row.state == State.RECEIVED:
                        _fail_without_job(conn, row, reason, at)
                        done.add(key)
                    continue
                if row.job_batch_id != batch_id:
                    continue
                if row.state == State.FAILED:
                    done.add(key)  # a replay
                elif row.state == State.IMPORTING:
                    conn.execute(
                        "UPDATE receipts SET state = 'FAILED', state_changed_at = ?, reason = ?,"
                        " job_id = (SELECT job_id FROM jobs WHERE batch_id = ?) WHERE key = ?",
                        (at, reason, batch_id, key),
                    )
                    conn.execute(
                        "UPDATE attempts SET ended_at = ?, outcome = 'FAILED', reason = ?,"
                        " job_id = (SELECT job_id FROM jobs WHERE batch_id = ?)"
                        " WHERE key = ? AND attempt = ?",
                        (at, reason, batch_id, key, row.attempt),
                    )
                    done.add(key)
        return done

    def _record_cleanup(self, key: str, action: str, at: float, attempt: int | None) -> bool:
        with self._write() as conn:
            row = conn.execute(
                "SELECT state, attempt, cleanup_action FROM receipts WHERE key = ?", (key,)
            ).fetchone()
            if row is None or row[0] not in _FINAL or attempt not in (None, row[1]):
                return False
            if row[2] is not None:
                return bool(row[2] == action)  # a replay
            conn.execute(
                "UPDATE receipts SET cleanup_action = ?, cleanup_at = ?,"
                " cleanup_claimed_by = NULL, cleanup_claim_expires_at = NULL WHERE key = ?",
                (action, at, key),
            )
            conn.execute(
                "UPDATE attempts SET cleanup_action = ?, cleanup_at = ?"
                " WHERE key = ? AND attempt = ?",
                (action, at, key, row[1]),
            )
            return True

    def _claim_cleanup(self, key: str, attempt: int, owner: str, until: float, at: float) -> bool:
        with self._lock:
            cursor = self._connection().execute(
                "UPDATE receipts SET cleanup_claimed_by = ?, cleanup_claim_expires_at = ?"
                " WHERE key = ? AND attempt = ? AND state IN (?, ?) AND cleanup_action IS NULL"
                " AND (cleanup_claimed_by IS NULL OR cleanup_claimed_by = ?"
                "      OR cleanup_claim_expires_at < ?)",
                (owner, until, key, attempt, *_FINAL, owner, at),
            )
            return cursor.rowcount == 1

    def _cleanup_due(
        self, state: State, cutoff: float | None, at: float, limit: int
    ) -> list[ReceiptStatus]:
        """Through the partial index (whose terms are written here as in its definition, so
        that SQLite can use it)."""
        rows = self._query(
            f"SELECT {_STATUS_COLUMNS} FROM receipts r INDEXED BY receipts_cleanup_due"
            " LEFT JOIN jobs j ON j.batch_id = r.job_batch_id"
            " WHERE r.cleanup_action IS NULL AND r.state IN ('IMPORTED', 'FAILED')"
            f" AND r.state = ?{'' if cutoff is None else ' AND r.state_changed_at <= ?'}"
            " AND (r.cleanup_claim_expires_at IS NULL OR r.cleanup_claim_expires_at < ?)"
            " ORDER BY r.state_changed_at, r.key LIMIT ?",
            (state.value, *(() if cutoff is None else (cutoff,)), at, limit),
        )
        return [_status(row) for row in rows]

    # -- receipt queries --------------------------------------------------------------------

    def receipt_status(self, key: str) -> ReceiptStatus | None:
        rows = self._query(f"{_SELECT_STATUS} WHERE r.key = ?", (key,))
        return _status(rows[0]) if rows else None

    def attempts(self, key: str) -> list[Attempt]:
        rows = self._query(
            f"SELECT {_ATTEMPT_COLUMNS} FROM attempts a LEFT JOIN jobs j"
            " ON j.batch_id = a.batch_id WHERE a.key = ? ORDER BY a.attempt",
            (key,),
        )
        return [_attempt(row) for row in rows]

    def receipts_in_batch(self, batch_id: str) -> list[ReceiptStatus]:
        rows = self._query(f"{_SELECT_STATUS} WHERE r.batch_id = ? ORDER BY r.key", (batch_id,))
        return [_status(row) for row in rows]

    def receipts_in_job(self, batch_id: str) -> list[ReceiptStatus]:
        rows = self._query(f"{_SELECT_STATUS} WHERE r.job_batch_id = ? ORDER BY r.key", (batch_id,))
        return [_status(row) for row in rows]

    def superseded(self, key: str) -> bool:
        rows = self._query(
            "SELECT 1 FROM receipts r JOIN receipts n ON n.sop_instance_uid = r.sop_instance_uid"
            " WHERE r.key = ? AND r.sop_instance_uid <> '' AND n.state = 'IMPORTED'"
            " AND (n.received_at > r.received_at"
            "      OR (n.received_at = r.received_at AND n.key > r.key)) LIMIT 1",
            (key,),
        )
        return bool(rows)

    def receipts_blocking(self, batch_id: str) -> list[ReceiptStatus]:
        rows = self._query(
            f"{_SELECT_STATUS} WHERE r.state = 'IMPORTING' AND r.job_batch_id <> ?"
            " AND r.sop_instance_uid <> '' AND r.sop_instance_uid IN"
            " (SELECT sop_instance_uid FROM receipts WHERE batch_id = ?)"
            " ORDER BY r.sop_instance_uid, r.key",
            (batch_id, batch_id),
        )
        return [_status(row) for row in rows]

    def where(self, uid: str) -> list[ReceiptStatus]:
        rows = self._query(
            f"SELECT * FROM (SELECT {_STATUS_COLUMNS}, {_NEWEST_FIRST} AS newest {_STATUS_FROM}"
            " WHERE r.sop_instance_uid = ? OR r.series_instance_uid = ?"
            " OR r.study_instance_uid = ?) WHERE newest = 1"
            " ORDER BY study_instance_uid, series_instance_uid, sop_instance_uid, key",
            (uid, uid, uid),
        )
        return [_status(row[:-1]) for row in rows]

    def failures(self) -> list[ReceiptStatus]:
        rows = self._query(
            f"SELECT * FROM (SELECT {_STATUS_COLUMNS}, {_NEWEST_FIRST} AS newest {_STATUS_FROM}"
            " WHERE r.sop_instance_uid IN"
            " (SELECT sop_instance_uid FROM receipts WHERE state = 'FAILED'))"
            " WHERE newest = 1 AND state = 'FAILED' ORDER BY received_at, key"
        )
        return [_status(row[:-1]) for row in rows]

    def counts_by_state(self) -> dict[str, int]:
        """Number of receipts in each state; every state is present, zero included."""
        counts = {state.value: 0 for state in State}
        with self._lock:
            rows = self._connection().execute("SELECT state, COUNT(*) FROM receipts GROUP BY state")
            counts.update({state: count for state, count in rows})
        return counts

    def _oldest_unimported_received_at(self) -> float | None:
        rows = self._query(
            "SELECT MIN(received_at) FROM receipts WHERE state IN ('RECEIVED', 'IMPORTING')"
        )
        oldest: float | None = rows[0][0]
        return oldest

    # -- batches ----------------------------------------------------------------------------

    def _open_batch(
        self, batch_id: str, prefix: str, owner: str, lease_seconds: float, at: float
    ) -> bool:
        with self._lock:
            cursor = self._connection().execute(
                "INSERT INTO batches (batch_id, prefix, owner, state, lease_seconds,"
                " lease_expires_at, opened_at) VALUES (?, ?, ?, 'OPEN', ?, ?, ?)"
                " ON CONFLICT (batch_id) DO UPDATE SET owner = excluded.owner,"
                " prefix = excluded.prefix, lease_seconds = excluded.lease_seconds,"
                " lease_expires_at = excluded.lease_expires_at"
                " WHERE batches.state = 'OPEN' AND batches.owner IN (excluded.owner, '')",
                (batch_id, prefix, owner, lease_seconds, at + lease_seconds, at),
            )
            return cursor.rowcount == 1

    def _renew_lease(self, owner: str, at: float) -> list[str]:
        with self._lock:
            rows = (
                self._connection()
                .execute(
                    "UPDATE batches SET lease_expires_at = ? + lease_seconds"
                    " WHERE owner = ? AND state = 'OPEN' RETURNING batch_id",
                    (at, owner),
                )
                .fetchall()
            )
        return [row[0] for row in rows]

    def _record_associations(
        self, batch_id: str, owner: str, open_associations: int, last_end_at: float | None
    ) -> bool:
        with self._lock:
            cursor = self._connection().execute(
                "UPDATE batches SET open_associations = ?,"
                " last_association_end_at = COALESCE(?, last_association_end_at)"
                " WHERE batch_id = ? AND owner = ? AND state = 'OPEN'",
                (open_associations, last_end_at, batch_id, owner),
            )
            return cursor.rowcount == 1

    def _seal_batch(self, batch_id: str, by: str, at: float) -> bool:
        with self._write() as conn:
            cursor = conn.execute(
                "UPDATE batches SET state = 'SEALED', sealed_at = ?, sealed_by = ?"
                " WHERE batch_id = ? AND state = 'OPEN' AND (owner = ? OR lease_expires_at < ?)",
                (at, by, batch_id, by, at),
            )
            if cursor.rowcount == 1:
                return True
            row = conn.execute(
                "SELECT state, sealed_by FROM batches WHERE batch_id = ?", (batch_id,)
            ).fetchone()
        return row is not None and row[0] == BatchState.SEALED and row[1] == by

    def batch(self, batch_id: str) -> Batch | None:
        found = self._batches("WHERE batch_id = ?", (batch_id,))
        return found[0] if found else None

    def open_batches(self) -> list[Batch]:
        return self._batches("WHERE state = 'OPEN' ORDER BY opened_at, batch_id")

    def sealed_batches_without_job(self) -> list[Batch]:
        # INDEXED BY: left to itself, SQLite picks batches_by_state and reads every batch
        # ever sealed. The partial index's terms are written as in its definition.
        return self._batches(
            "INDEXED BY batches_without_job WHERE state = 'SEALED' AND has_job = 0"
            " ORDER BY sealed_at, batch_id"
        )

    def _batches(self, clause: str, params: Sequence[Any] = ()) -> list[Batch]:
        """SELECT the batches FROM batches `clause`."""
        return [
            _batch(row)
            for row in self._query(f"SELECT {_BATCH_COLUMNS} FROM batches {clause}", params)
        ]

    # -- jobs -------------------------------------------------------------------------------

    def _record_job_start(self, batch_id: str, client_token: str, job_name: str, at: float) -> bool:
        with self._write() as conn:
            row = conn.execute(
                "SELECT state, prefix FROM batches WHERE batch_id = ?", (batch_id,)
            ).fetchone()
            if row is None or row[0] != BatchState.SEALED:
                raise BatchNotSealedError(f"batch {batch_id} is not sealed")
            cursor = conn.execute(
                "INSERT INTO jobs (batch_id, prefix, client_token, job_name, status,"
                " created_at, updated_at) VALUES (?, ?, ?, ?, 'STARTING', ?, ?)"
                " ON CONFLICT (batch_id) DO NOTHING",
                (batch_id, row[1], client_token, job_name, at, at),
            )
            conn.execute("UPDATE batches SET has_job = 1 WHERE batch_id = ?", (batch_id,))
            return cursor.rowcount == 1

    def _set_job_id(self, batch_id: str, job_id: str, submitted_at: float) -> bool:
        with self._write() as conn:
            cursor = conn.execute(
                "UPDATE jobs SET job_id = ?, status = 'SUBMITTED', submitted_at = ?,"
                " updated_at = ? WHERE batch_id = ? AND job_id IS NULL AND status = 'STARTING'",
                (job_id, submitted_at, time.time(), batch_id),
            )
            if cursor.rowcount == 1:
                return True
            row = conn.execute("SELECT job_id FROM jobs WHERE batch_id = ?", (batch_id,)).fetchone()
        return row is not None and row[0] == job_id

    def _update_job(
        self, batch_id: str, changes: Mapping[str, Any], allowed: Sequence[str] | None
    ) -> bool:
        columns = dict(changes)
        if "counts" in columns:
            columns["counts"] = json.dumps(columns["counts"], sort_keys=True)
        sets = [f"{name} = ?" for name in columns]
        values: list[Any] = [*columns.values(), batch_id]
        where = "batch_id = ?"
        if allowed is not None:
            where += f" AND status IN ({', '.join('?' * len(allowed))})"
            values.extend(allowed)
        with self._lock:
            cursor = self._connection().execute(
                f"UPDATE jobs SET {', '.join(sets)} WHERE {where}", values
            )
            return cursor.rowcount == 1

    def job(self, job_id: str) -> Job | None:
        found = self._jobs("WHERE job_id = ?", (job_id,))
        return found[0] if found else None

    def batch_job(self, batch_id: str) -> Job | None:
        found = self._jobs("WHERE batch_id = ?", (batch_id,))
        return found[0] if found else None

    def jobs(self, status: JobStatus | None = None) -> list[Job]:
        if status is None:
            return self._jobs("ORDER BY created_at, batch_id")
        return self._jobs(
            "WHERE status = ? ORDER BY created_at, batch_id", (JobStatus(status).value,)
        )

    def unfinished_jobs(self) -> list[Job]:
        # Through the partial index (its terms written as in its definition): the finished
        # jobs are never read.
        return self._jobs(
            "INDEXED BY jobs_unfinished WHERE results_at IS NULL ORDER BY created_at, batch_id"
        )

    def _jobs(self, clause: str, params: Sequence[Any] = ()) -> list[Job]:
        """SELECT the jobs FROM jobs `clause`."""
        return [
            _job(row) for row in self._query(f"SELECT {_JOB_COLUMNS} FROM jobs {clause}", params)
        ]

    def close(self) -> None:
        """Close the connection. Idempotent; the tracker cannot be used afterwards."""
        with self._lock:
            conn, self._conn = self._conn, None
            if conn is not None and self._pid == os.getpid():
                conn.close()

    # -- beyond the port -------------------------------------------------------------------

    @property
    def path(self) -> Path:
        return self._path

    def __enter__(self) -> SqliteTracker:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- internals -------------------------------------------------------------------------

    def _admit(
        self, conn: sqlite3.Connection, row: _Row, batch_id: str, retry: bool, at: float
    ) -> Admission:
        """Decide on, and apply, the admission of the newest receipt of an instance."""
        decided = admission_by_state(row.state, row.job_batch_id, row.reason, batch_id, retry)
        if decided is not None:
            return decided
        if row.sop_instance_uid:
            # INDEXED BY: left to itself, SQLite picks receipts_by_state here and scans every
            # IMPORTED (or IMPORTING) receipt for each receipt admitted, so admitting a batch
            # grows with the tracker's whole history and holds the write lock meanwhile.
            newer_imported = conn.execute(
                "SELECT 1 FROM receipts INDEXED BY receipts_by_instance"
                " WHERE sop_instance_uid = ? AND state = 'IMPORTED'"
                " AND (received_at > ? OR (received_at = ? AND key > ?)) LIMIT 1",
                (row.sop_instance_uid, row.received_at, row.received_at, row.key),
            ).fetchone()
            if newer_imported:
                return _supersede(conn, row, retry, at)
            other_importing = conn.execute(
                "SELECT 1 FROM receipts INDEXED BY receipts_by_instance"
                " WHERE sop_instance_uid = ? AND state = 'IMPORTING'"
                " AND key <> ? LIMIT 1",
                (row.sop_instance_uid, row.key),
            ).fetchone()
            if other_importing:
                return Admission.BLOCKED
        conn.execute(
            "UPDATE receipts SET state = 'IMPORTING', state_changed_at = ?, attempt = ?,"
            " job_batch_id = ?, job_id = (SELECT job_id FROM jobs WHERE batch_id = ?),"
            " image_set_id = NULL, is_primary = NULL, image_set_version = NULL, reason = NULL,"
            f" {_NO_CLEANUP} WHERE key = ?",
            (at, row.attempt + 1, batch_id, batch_id, row.key),
        )
        conn.execute(
            "INSERT INTO attempts (key, attempt, batch_id, started_at) VALUES (?, ?, ?, ?)",
            (row.key, row.attempt + 1, batch_id, at),
        )
        return Admission.ACCEPTED

    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        with self._lock:
            return self._connection().execute(sql, params).fetchall()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One BEGIN IMMEDIATE transaction, with the connection's lock held."""
        with self._lock:
            conn = self._connection()
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

    def _connect(self) -> sqlite3.Connection:
        # isolation_level=None: autocommit; multi-statement writes use explicit BEGIN IMMEDIATE.
        # timeout sets SQLite's busy handler from the very first statement.
        conn = sqlite3.connect(
            self._path,
            timeout=self._busy_timeout,
            isolation_level=None,
            check_same_thread=False,
        )
        try:
            mode = self._switch_to_wal(conn)
            if str(mode).lower() != "wal":
                # Still correct with several processes (rollback journal), only less concurrent.
                log.warning("tracker database could not switch to WAL (journal_mode=%s)", mode)
            conn.execute("PRAGMA synchronous=NORMAL")  # why: see the module docstring
            conn.execute("PRAGMA foreign_keys=ON")
        except BaseException:
            conn.close()
            raise
        return conn

    def _switch_to_wal(self, conn: sqlite3.Connection) -> str:
        """PRAGMA journal_mode=WAL, retried: on a new file, two processes switching at once
        get "database is locked" at once (SQLite's busy handler does not cover it)."""
        deadline = time.monotonic() + self._busy_timeout
        delay = 0.005
        while True:
            try:
                return str(conn.execute("PRAGMA journal_mode=WAL").fetchone()[0])
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(delay)
                delay = min(delay * 2, 0.1)

    def _connection(self) -> sqlite3.Connection:
        """The connection of this process; call with the lock held."""
        if self._conn is None:
            raise sqlite3.ProgrammingError("the tracker is closed")
        if self._pid != os.getpid():
            # Inherited through fork(): never touch the parent's connection (closing it could
            # drop the POSIX locks of this process's own connection); open our own.
            self._pid = os.getpid()
            self._conn = self._connect()
        return self._conn

    def _migrate(self, conn: sqlite3.Connection) -> None:
        """Apply the missing migrations, each in its own transaction."""
        if _schema_version(conn) == SCHEMA_VERSION:
            return  # the common case: read only, no write lock taken
        while True:
            # BEGIN IMMEDIATE serialises processes that open a fresh file at the same time:
            # the second one waits, then finds the migration applied.
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.execute(
                    "CREATE TABLE IF NOT EXISTS schema_version ("
                    " version INTEGER PRIMARY KEY, applied_at REAL NOT NULL)"
                )
                current = _schema_version(conn)
                if current > SCHEMA_VERSION:
                    raise TrackerSchemaError(
                        f"tracker database {self._path.name} has schema version {current}; "
                        f"this release knows up to {SCHEMA_VERSION}: upgrade store-scp"
                    )
                if current == SCHEMA_VERSION:
                    conn.execute("COMMIT")
                    return
                for statement in _MIGRATIONS[current]:
                    conn.execute(statement)
                conn.execute(
                    "INSERT INTO schema_version (version, applied_at) VALUES (?, ?)",
                    (current + 1, time.time()),
                )
                conn.execute("COMMIT")
                log.info("tracker database migrated to schema version %d", current + 1)
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise


class _Row:
    """What a transition needs to know about one receipt."""

    __slots__ = (
        "attempt",
        "job_batch_id",
        "key",
        "reason",
        "received_at",
        "sop_instance_uid",
        "state",
    )

    def __init__(self, row: Sequence[Any]) -> None:
        (
            self.key,
            self.sop_instance_uid,
            self.received_at,
            self.state,
            self.attempt,
            self.job_batch_id,
            self.reason,
        ) = row

    @property
    def instance(self) -> str:
        """Receipts of one instance share this; a receipt without a SOP UID is its own."""
        return self.sop_instance_uid or f"\x00{self.key}"

    @property
    def is_superseded(self) -> bool:
        return is_superseded(self.state, self.job_batch_id, self.reason)


def _load(conn: sqlite3.Connection, keys: Iterable[str]) -> dict[str, _Row]:
    rows: dict[str, _Row] = {}
    for chunk in _chunks(keys, _CHUNK):
        for values in conn.execute(
            "SELECT key, sop_instance_uid, received_at, state, attempt, job_batch_id, reason"
            f" FROM receipts WHERE key IN ({', '.join('?' * len(chunk))})",
            chunk,
        ):
            row = _Row(values)
            rows[row.key] = row
    return rows


def _supersede(conn: sqlite3.Connection, row: _Row, retry: bool, at: float) -> Admission:
    """Mark a receipt that must never be imported; FINAL if it already has an outcome."""
    if row.is_superseded:
        return Admission.SUPERSEDED
    if row.state == State.RECEIVED or (row.state == State.FAILED and retry):
        _fail_without_job(conn, row, SUPERSEDED_REASON, at)
        return Admission.SUPERSEDED
    return Admission.FINAL


def _fail_without_job(conn: sqlite3.Connection, row: _Row, reason: str, at: float) -> None:
    conn.execute(
        "UPDATE receipts SET state = 'FAILED', state_changed_at = ?, attempt = ?,"
        " job_batch_id = NULL, job_id = NULL, image_set_id = NULL, is_primary = NULL,"
        f" image_set_version = NULL, reason = ?, {_NO_CLEANUP} WHERE key = ?",
        (at, row.attempt + 1, reason, row.key),
    )
    conn.execute(
        "INSERT INTO attempts (key, attempt, started_at, ended_at, outcome, reason)"
        " VALUES (?, ?, ?, ?, 'FAILED', ?)",
        (row.key, row.attempt + 1, at, at, reason),
    )


def _status(row: Sequence[Any]) -> ReceiptStatus:
    values = dict(zip((f.name for f in fields(ReceiptStatus)), row, strict=True))
    values["state"] = State(values["state"])
    values["is_primary"] = _bool(values["is_primary"])
    return ReceiptStatus(**values)


def _attempt(row: Sequence[Any]) -> Attempt:
    values = dict(zip((f.name for f in fields(Attempt)), row, strict=True))
    values["outcome"] = None if values["outcome"] is None else State(values["outcome"])
    values["is_primary"] = _bool(values["is_primary"])
    return Attempt(**values)


def _batch(row: Sequence[Any]) -> Batch:
    values = dict(zip((f.name for f in fields(Batch)), row, strict=True))
    values["state"] = BatchState(values["state"])
    return Batch(**values)


def _job(row: Sequence[Any]) -> Job:
    values = dict(zip((f.name for f in fields(Job)), row, strict=True))
    values["status"] = JobStatus(values["status"])
    values["counts"] = {str(k): int(v) for k, v in json.loads(values["counts"] or "{}").items()}
    return Job(**values)


def _bool(value: int | None) -> bool | None:
    return None if value is None else bool(value)


def _schema_version(conn: sqlite3.Connection) -> int:
    # One statement, so one snapshot: another process may be migrating this very moment.
    names = {
        row[0]
        for row in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' "
            "AND name IN ('schema_version', 'receipts')"
        )
    }
    if "schema_version" not in names:
        if "receipts" in names:
            raise TrackerSchemaError("database has a receipts table but no schema_version")
        return 0
    row = conn.execute("SELECT MAX(version) FROM schema_version").fetchone()
    return int(row[0] or 0)


def _chunks(items: Iterable[str], size: int) -> Iterator[list[str]]:
    iterator = iter(items)
    while chunk := list(islice(iterator, size)):
        yield chunk
