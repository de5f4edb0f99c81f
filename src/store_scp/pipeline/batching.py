"""The receiver's open batch: the prefix every newly committed object goes under.

A batch is a prefix that one import job will import whole; objects are never moved. This
process owns its open batch. It rolls over to a new batch when the open one would hold the
same SOP Instance UID twice (two receipts of one instance must never be imported by one job)
or reaches its size limits.
"""

from __future__ import annotations

import os
import secrets
import threading
import time
from dataclasses import dataclass, field

# HealthImaging's clientToken is [A-Za-z0-9._-]{1,64}: batch ids are made to fit it as is.
_ID_TIME_FORMAT = "%Y%m%dT%H%M%SZ"


def new_batch_id(now: float | None = None) -> str:
    stamp = time.strftime(_ID_TIME_FORMAT, time.gmtime(now))
    return f"{stamp}-{os.getpid():x}-{secrets.token_hex(4)}"


@dataclass(slots=True)
class OpenBatch:
    batch_id: str
    opened_at: float
    files: int = 0
    bytes: int = 0
    sop_instances: set[str] = field(default_factory=set)


class BatchAllocator:
    """Thread-safe: assignment happens on the event loop, accounting may come from threads."""

    def __init__(self, *, max_files: int = 5000, max_bytes: int = 50 * 1024**3) -> None:
        self.max_files = max_files
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._open = self._new()

    @staticmethod
    def _new() -> OpenBatch:
        now = time.time()
        return OpenBatch(new_batch_id(now), now)

    @property
    def current(self) -> OpenBatch:
        return self._open

    def assign(self, sop_instance_uid: str, size: int) -> str:
        """The batch id an object is committed under; counts it in that batch."""
        with self._lock:
            batch = self._open
            if (
                sop_instance_uid in batch.sop_instances
                or batch.files >= self.max_files
                or batch.bytes + size > self.max_bytes
            ) and batch.files:
                batch = self._open = self._new()
            batch.sop_instances.add(sop_instance_uid)
            batch.files += 1
            batch.bytes += size
            return batch.batch_id
