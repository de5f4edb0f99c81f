"""The datastore's SQLite database, `datastore.sqlite3` (WAL): jobs, image sets, every
version's gzip metadata, the frame index. One connection per thread; several processes may
share the file (writes are `BEGIN IMMEDIATE` transactions)."""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id TEXT NOT NULL UNIQUE,
    job_name TEXT NOT NULL,
    client_token TEXT NOT NULL UNIQUE,
    status TEXT NOT NULL,
    role_arn TEXT NOT NULL,
    input_uri TEXT NOT NULL,
    output_uri TEXT NOT NULL,
    submitted_at REAL NOT NULL,
    ended_at REAL,
    message TEXT,
    runner TEXT
);
CREATE INDEX IF NOT EXISTS jobs_status ON jobs (status, seq);
CREATE TABLE IF NOT EXISTS image_sets (
    image_set_id TEXT PRIMARY KEY,
    study_uid TEXT NOT NULL,
    series_uid TEXT NOT NULL,
    is_primary INTEGER NOT NULL,
    version INTEGER NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    patient_id TEXT NOT NULL,
    accession TEXT NOT NULL,
    study_id TEXT NOT NULL,
    study_date TEXT NOT NULL,
    study_time TEXT NOT NULL,
    series_number TEXT NOT NULL,
    tags TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS image_sets_series ON image_sets (study_uid, series_uid, is_primary);
CREATE INDEX IF NOT EXISTS image_sets_patient ON image_sets (patient_id);
CREATE TABLE IF NOT EXISTS image_set_versions (
    image_set_id TEXT NOT NULL,
    version INTEGER NOT NULL,
    created_at REAL NOT NULL,
    is_primary INTEGER NOT NULL,
    job_id TEXT,
    metadata BLOB NOT NULL,
    PRIMARY KEY (image_set_id, version)
);
CREATE TABLE IF NOT EXISTS frames (
    frame_id TEXT PRIMARY KEY,
    image_set_id TEXT NOT NULL,
    path TEXT NOT NULL,
    transfer_syntax TEXT NOT NULL,
    content_type TEXT NOT NULL
);
"""


class Database:
    def __init__(self, path: Path, *, fsync: bool = True) -> None:
        self.path = path
        self.fsync = fsync
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._connections_lock = threading.Lock()
        self.conn().executescript(SCHEMA)

    def conn(self) -> sqlite3.Connection:
        """This thread's connection."""
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(
                self.path, timeout=30.0, isolation_level=None, check_same_thread=False
            )
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(
                "PRAGMA synchronous=NORMAL" if not self.fsync else "PRAGMA synchronous=FULL"
            )
            conn.execute("PRAGMA busy_timeout=30000")
            self._local.conn = conn
            with self._connections_lock:
                self._connections.append(conn)
        return conn

    @contextlib.contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """A write transaction on this thread's connection."""
        db = self.conn()
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def close(self) -> None:
        with self._connections_lock:
            for conn in self._connections:
                with contextlib.suppress(sqlite3.Error):
                    conn.close()
            self._connections.clear()
        self._local = threading.local()
