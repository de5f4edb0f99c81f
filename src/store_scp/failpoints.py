"""Fail points: a real kill -9 of this process at a named step. A test facility, not a setting.

The crash tests arm points through the environment variable `STORE_SCP_FAILPOINTS`, read once
when this module is imported: a comma-separated list of `name` (die the first time the point is
reached) or `name:count` (die the count-th time). An unknown name is refused at import, so a
renamed point cannot leave a test armed with nothing.

Unarmed (the variable unset, always in production), `hit` returns after one test of an empty
dict: tens of nanoseconds, measured by the unit tests. Armed, the point that fires writes one
line `failpoint <name>: kill -9` to stderr (unbuffered, so the test can tell which point killed
the process) and sends SIGKILL to its own process: no finally block, atexit handler or buffered
write runs, exactly as when an operator runs kill -9.
"""

from __future__ import annotations

import os
import signal
import threading

__all__ = ["ENV", "POINTS", "hit", "parse"]

ENV = "STORE_SCP_FAILPOINTS"

#: Every fail point, in the order of an object's way through the system.
POINTS: dict[str, str] = {
    "receive.committed": "the object is durable; its C-STORE response is not sent yet",
    "receive.answered": "the success response is sent; the receipt is not queued for the tracker",
    "receive.sealed": "the receiver sealed its batch; no import job is recorded yet",
    "worker.orphan_sealed": "the worker sealed a batch whose receiver died; no job recorded yet",
    "worker.admitted": "the batch's receipts are IMPORTING; no job record yet",
    "worker.job_recorded": "the job record exists (STARTING); StartDICOMImportJob not called",
    "worker.job_started": "StartDICOMImportJob returned a job id; it is not recorded yet",
    "worker.job_ended": "the job's end status is recorded; its outputs are not read yet",
    "worker.outputs_read": "the job's outputs are read; no receipt has its outcome yet",
    "worker.results_partial": "the imported receipts are marked; failed ones and counts are not",
    "worker.job_failed": "a FAILED job is recorded; its receipts are not marked FAILED yet",
    "cleanup.note_written": "a FAILED object's quarantine note is written; the object is not moved",
    "cleanup.moved": "the object is in quarantine; its other copies and the record are not done",
    "cleanup.deleted": "an IMPORTED receipt's object (or a copy) is deleted; nothing is recorded",
    "retry.opened": "a retry batch is open; no receipt is admitted into it yet",
    "retry.admitted": "the retried receipts are IMPORTING in the retry batch; no copy is made",
    "retry.copied": "one retried object is copied into its retry batch; the others are not yet",
    "retry.sealed": "the retry batch is sealed; the retry has not answered",
}


def parse(spec: str) -> dict[str, int]:
    """`name[:count],...` -> {name: count}; raises ValueError on an unknown name or count."""
    armed: dict[str, int] = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        name, _, count = item.partition(":")
        if name not in POINTS:
            raise ValueError(f"{ENV}: unknown fail point {name!r}; known: {', '.join(POINTS)}")
        armed[name] = int(count) if count else 1
        if armed[name] < 1:
            raise ValueError(f"{ENV}: the count of {name!r} must be at least 1")
    return armed


_armed = parse(os.environ.get(ENV, ""))
_lock = threading.Lock()


def hit(name: str) -> None:
    """Reaching the step `name`: dies here if the point is armed and its count is reached."""
    if _armed:
        _count_down(name)


def _count_down(name: str) -> None:
    with _lock:
        left = _armed.get(name)
        if left is None:
            return
        _armed[name] = left - 1
        if left > 1:
            return
    os.write(2, f"failpoint {name}: kill -9\n".encode())
    os.kill(os.getpid(), signal.SIGKILL)
