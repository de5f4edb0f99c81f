"""The receiver's open batch: the prefix every newly committed object goes under.

A batch is a prefix that one import job will import whole; objects are never moved. This
process owns its open batch (a lease in the tracker, renewed while it lives). It rolls over to
a new batch when the open one would hold the same SOP Instance UID twice (two receipts of one
instance must never be imported by one job), reaches its size limits, or is due for sealing
by the seal policy. A rolled batch is sealed once no commit into it is in flight.
"""

from __future__ import annotations

import os
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

# HealthImaging's clientToken is [A-Za-z0-9._-]{1,64}: batch ids are made to fit it as is.
_ID_TIME_FORMAT = "%Y%m%dT%H%M%SZ"


def new_batch_id(now: float | None = None) -> str:
    stamp = time.strftime(_ID_TIME_FORMAT, time.gmtime(now))
    return f"{stamp}-{os.getpid():x}-{secrets.token_hex(4)}"


@dataclass(slots=True)
class OpenBatch:
    batch_id: str
    opened_at: float  # when it opened, then when its first object came: its age counts from it
    files: int = 0
    bytes: int = 0
    last_object_at: float = 0.0
    sop_instances: set[str] = field(default_factory=set)
    folders: set[str] = field(default_factory=set)  # nested folders under its prefix


class BatchAllocator:
    """Thread-safe: assignment happens on the event loop, accounting may come from threads.

    `on_open(batch_id)` is called for every new batch before any object is assigned to it
    (the receiver records it in the tracker, owned by this process).
    """

    def __init__(
        self,
        *,
        max_files: int = 5000,
        max_bytes: int = 50 * 1024**3,
        max_folders: int = 10_000,
        on_open: Callable[[str], None] | None = None,
    ) -> None:
        self.max_files = max_files
        self.max_bytes = max_bytes
        #: HealthImaging imports at most 10,000 nested folders per job: a batch holds one
        #: folder per study and one per series.
        self.max_folders = max_folders
        self._on_open = on_open
        self._lock = threading.Lock()
        self._inflight: dict[str, int] = {}
        self._closing: set[str] = set()  # rolled over, to be sealed once nothing is in flight
        self._open = self._new()

    def _new(self) -> OpenBatch:
        now = time.time()
        batch = OpenBatch(new_batch_id(now), now, last_object_at=now)
        if self._on_open is not None:
            self._on_open(batch.batch_id)
        return batch

    @property
    def current(self) -> OpenBatch:
        return self._open

    def assign(self, sop_instance_uid: str, size: int, folders: tuple[str, ...] = ()) -> str:
        """The batch id an object is committed under; counts it in that batch and as in
        flight until `done`. `folders`: the nested folders its key has under the batch prefix
        (study, then study/series)."""
        with self._lock:
            batch = self._open
            if (
                sop_instance_uid in batch.sop_instances
                or batch.files >= self.max_files
                or batch.bytes + size > self.max_bytes
                or len(batch.folders) + len(set(folders) - batch.folders) > self.max_folders
            ) and batch.files:
                self._roll_locked()
                batch = self._open
            now = time.time()
            if not batch.files:
                # Its age counts from its first object: a batch opened before an idle hour
                # must not be sealed for its age a second after the next study starts, which
                # would split that study over two jobs.
                batch.opened_at = now
            batch.sop_instances.add(sop_instance_uid)
            batch.folders.update(folders)
            batch.files += 1
            batch.bytes += size
            batch.last_object_at = now
            self._inflight[batch.batch_id] = self._inflight.get(batch.batch_id, 0) + 1
            return batch.batch_id

    def done(self, batch_id: str) -> None:
        """A commit into `batch_id` ended (success or failure) and its receipt was queued."""
        with self._lock:
            left = self._inflight.get(batch_id, 1) - 1
            if left:
                self._inflight[batch_id] = left
            else:
                self._inflight.pop(batch_id, None)

    def _roll_locked(self) -> None:
        self._closing.add(self._open.batch_id)
        self._open = self._new()

    def roll(self) -> None:
        """Close the open batch (it will be sealed) and open a new one."""
        with self._lock:
            if self._open.files:
                self._roll_locked()

    def sealable(self) -> list[str]:
        """Closed batches with no commit in flight: seal them now (each is returned once)."""
        with self._lock:
            ready = [b for b in self._closing if not self._inflight.get(b)]
            self._closing.difference_update(ready)
            return ready
