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
key: every `Receipt` field, then the receipt's fate (`state`, `state_changed_at`, and for the
import pipeline `image_set_id`, `is_primary`, `job_id`, `reason`). `schema_version` lists the
migrations applied; `_MIGRATIONS` is applied in order at open, each in one transaction, so a
newer release only appends to it.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import fields
from itertools import islice
from pathlib import Path

from store_scp.tracking.base import Receipt, State

__all__ = ["SCHEMA_VERSION", "SqliteTracker", "TrackerSchemaError"]

log = logging.getLogger(__name__)

_STATES = ", ".join(f"'{state.value}'" for state in State)

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


class TrackerSchemaError(RuntimeError):
    """The database was written by a newer release (or is not a tracker database)."""


class SqliteTracker:
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
        self._conn: sqlite3.Connection | None = self._connect()
        try:
            self._migrate(self._conn)
        except BaseException:
            self._conn.close()
            self._conn = None
            raise

    # -- the Tracker port ------------------------------------------------------------------

    def record_receipt(self, receipt: Receipt) -> bool:
        """Insert a RECEIVED row. Idempotent by key: returns False if the key was known."""
        values = tuple(getattr(receipt, column) for column in _RECEIPT_COLUMNS)
        with self._lock:
            cursor = self._connection().execute(
                _INSERT_RECEIPT, (*values, State.RECEIVED.value, time.time())
            )
            return cursor.rowcount == 1

    def record_receipts(self, receipts: Sequence[Receipt]) -> int:
        """Insert many RECEIVED rows in one transaction; returns how many were new."""
        now = time.time()
        rows = [
            (*(getattr(r, column) for column in _RECEIPT_COLUMNS), State.RECEIVED.value, now)
            for r in receipts
        ]
        with self._lock:
            conn = self._connection()
            before = conn.total_changes
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.executemany(_INSERT_RECEIPT, rows)
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            return conn.total_changes - before

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

    def counts_by_state(self) -> dict[str, int]:
        """Number of receipts in each state; every state is present, zero included."""
        counts = {state.value: 0 for state in State}
        with self._lock:
            rows = self._connection().execute("SELECT state, COUNT(*) FROM receipts GROUP BY state")
            counts.update({state: count for state, count in rows})
        return counts

    def __enter__(self) -> SqliteTracker:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- internals -------------------------------------------------------------------------

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
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                # Still correct with several processes (rollback journal), only less concurrent.
                log.warning("tracker database could not switch to WAL (journal_mode=%s)", mode)
            conn.execute("PRAGMA synchronous=NORMAL")  # why: see the module docstring
            conn.execute("PRAGMA foreign_keys=ON")
        except BaseException:
            conn.close()
            raise
        return conn

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


def _schema_version(conn: sqlite3.Connection) -> int:
    exists = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'"
    ).fetchone()
    if exists is None:
        if conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'receipts'").fetchone():
            raise TrackerSchemaError("database has a receipts table but no schema_version")
        return 0
    row = conn.execute("SELECT MAX(version) FROM schema_version").fetchone()
    return int(row[0] or 0)


def _chunks(items: Iterable[str], size: int) -> Iterator[list[str]]:
    iterator = iter(items)
    while chunk := list(islice(iterator, size)):
        yield chunk
