"""Cleanup is crash-safe: a crash before any one of its steps (each write to the object store,
and the tracker record), then a restart, ends with the object deleted (imported) or in
quarantine with its note (failed), never lost, and the cleanup recorded once."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from store_scp.pipeline.cleanup import CleanupPolicy, clean_up
from store_scp.storage.layout import quarantine_key, quarantine_note_key
from store_scp.storage.local import LocalObjectStore
from store_scp.tracking.base import Receipt, State, Tracker
from store_scp.tracking.sqlite import SqliteTracker

T0 = 1_700_000_000.0
POLICY = CleanupPolicy(keep_imported_seconds=0, lease_seconds=60)


class Crash(BaseException):
    """kill -9: nothing after it runs, nothing catches it."""


class Steps:
    """Counts the steps of a cleanup; raises Crash before step `crash_at`."""

    def __init__(self, crash_at: int | None) -> None:
        self.crash_at = crash_at
        self.done = 0

    def step(self) -> None:
        if self.done == self.crash_at:
            raise Crash
        self.done += 1


class CrashingStore:
    """The local store, with a crash point before each write."""

    def __init__(self, inner: LocalObjectStore, steps: Steps) -> None:
        self.inner, self.steps = inner, steps
        self.staging_dir = inner.staging_dir

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)  # reads

    def put_bytes(self, key: str, data: bytes, *, content_type: str = "") -> None:
        self.steps.step()
        self.inner.put_bytes(key, data)

    def copy(self, src: str, dst: str) -> None:
        self.steps.step()
        self.inner.copy(src, dst)

    def move(self, src: str, dst: str) -> None:
        self.steps.step()
        self.inner.move(src, dst)

    def delete(self, key: str) -> None:
        self.steps.step()
        self.inner.delete(key)


class CrashingTracker:
    """The tracker, with a crash point before the cleanup is recorded."""

    def __init__(self, inner: Tracker, steps: Steps) -> None:
        self.inner, self.steps = inner, steps

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def record_cleanup(self, *args: Any, **kwargs: Any) -> bool:
        self.steps.step()
        return self.inner.record_cleanup(*args, **kwargs)


@dataclass
class Case:
    tracker: SqliteTracker
    store: LocalObjectStore
    key: str
    data: bytes
    copies: list[str]  # retry copies that exist before the cleanup


def receive(store: LocalObjectStore, tracker: Tracker, batch: str, sop: str) -> tuple[str, bytes]:
    key = f"{batch}/1.2.3/1.2.3.4/{sop}.dcm"
    data = os.urandom(2000)
    fd, name = tempfile.mkstemp(dir=store.staging_dir, suffix=".part")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    committed = store.commit(Path(name), key)
    tracker.record_receipt(
        Receipt(key, batch, sop, "1.2.840.10008.5.1.4.1.1.2", "1.2.3", "1.2.3.4",
                "1.2.840.10008.1.2.1", committed.size, "ab" * 32, "SCU", "", T0)
    )  # fmt: skip
    return key, data


def imported(root: Path) -> Case:
    store, tracker = LocalObjectStore(root), SqliteTracker(root / "t.sqlite3")
    key, data = receive(store, tracker, "b1", "9.1")
    tracker.mark_importing([key], "b1", now=T0)
    tracker.mark_imported(key, "b1", "is-1", False, at=T0 + 1)  # non-primary: imported too
    return Case(tracker, store, key, data, [])


def failed(root: Path) -> Case:
    store, tracker = LocalObjectStore(root), SqliteTracker(root / "t.sqlite3")
    key, data = receive(store, tracker, "b1", "9.2")
    tracker.mark_importing([key], "b1", now=T0)
    tracker.mark_failed([key], "import job failed: boom", "b1", at=T0 + 1)
    return Case(tracker, store, key, data, [])


def failed_again_after_a_retry(root: Path) -> Case:
    """First failure not cleaned up yet, retried, failed again: the object and a retry copy."""
    case = failed(root)
    copy = f"retry/r1/{case.key}"
    case.store.copy(case.key, copy)
    case.tracker.mark_importing([case.key], "r1", retry=True, now=T0 + 2)
    case.tracker.mark_failed([case.key], "import job failed: again", "r1", at=T0 + 3)
    case.copies.append(copy)
    return case


def imported_after_a_quarantine(root: Path) -> Case:
    """Failed and quarantined, retried, imported: a quarantine copy, a note, a retry copy."""
    case = failed(root)
    clean_up(case.tracker, case.store, POLICY, owner="w0", now=T0 + 2)
    copy = f"retry/r1/{case.key}"
    case.store.copy(quarantine_key(case.key), copy)
    case.tracker.mark_importing([case.key], "r1", retry=True, now=T0 + 3)
    case.tracker.mark_imported(case.key, "r1", "is-1", True, at=T0 + 4)
    case.copies.append(copy)
    return case


def present(store: LocalObjectStore, key: str) -> bytes | None:
    return store.open(key).read() if store.exists(key) else None


@pytest.mark.parametrize(
    "make", [imported, failed, failed_again_after_a_retry, imported_after_a_quarantine]
)
def test_a_crash_before_any_step_then_a_restart_finishes_the_cleanup(
    tmp_path: Path, make: Callable[[Path], Case]
) -> None:
    crash_at = 0
    while True:
        case = make(tmp_path / f"c{crash_at}")
        final_state = case.tracker.receipt_status(case.key).state  # type: ignore[union-attr]
        steps = Steps(crash_at)
        crashed = False
        try:
            clean_up(
                CrashingTracker(case.tracker, steps),  # type: ignore[arg-type]
                CrashingStore(case.store, steps),  # type: ignore[arg-type]
                POLICY,
                owner="w1",
                now=T0 + 10,
            )
        except Crash:
            crashed = True
        if final_state is State.FAILED:
            # Never lost: in place (or in a copy), or in quarantine with its note.
            in_place = any(present(case.store, k) == case.data for k in [case.key, *case.copies])
            quarantined = present(case.store, quarantine_key(case.key)) == case.data
            assert in_place or (quarantined and case.store.exists(quarantine_note_key(case.key)))
        # The restarted worker (another owner) waits for the dead one's claim to run out...
        assert clean_up(case.tracker, case.store, POLICY, owner="w2", now=T0 + 20) == 0
        clean_up(case.tracker, case.store, POLICY, owner="w2", now=T0 + 100)
        # ...then everything is done, and recorded once.
        status = case.tracker.receipt_status(case.key)
        assert status is not None and status.state is final_state
        others = {k for k in case.store.list_keys() if k != quarantine_key(case.key)}
        if final_state is State.IMPORTED:
            assert status.cleanup_action == "deleted"
            assert list(case.store.list_keys()) == []
        else:
            assert status.cleanup_action == f"quarantined:{quarantine_key(case.key)}"
            assert present(case.store, quarantine_key(case.key)) == case.data
            note = json.loads(present(case.store, quarantine_note_key(case.key)) or b"{}")
            assert (note["receipt_key"], note["reason"]) == (case.key, status.reason)
            assert others == {quarantine_note_key(case.key)}
        assert case.tracker.attempts(case.key)[-1].cleanup_action == status.cleanup_action
        assert case.tracker.cleanup_due(keep_imported_seconds=0, now=T0 + 1000) == []
        case.tracker.close()
        if not crashed:
            break  # every step was a crash point once
        crash_at += 1
    assert crash_at >= 2  # at least one write and the record
