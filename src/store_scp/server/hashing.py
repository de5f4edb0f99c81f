"""SHA-256 of large datasets on a second core.

hashlib releases the GIL while it hashes a large buffer, so one hashing thread runs beside
the event loop: the loop writes a chunk to the staging file and hands it to the thread, and
the digest is ready by the time the last fragment has arrived. Small objects are hashed
inline; handing them over would cost more than it saves.

Chunks usually live in an association's reusable read buffer. Each hand-over gets a sequence
number; the thread publishes the number of the last chunk it hashed, and a read buffer is not
reused before the thread has passed the last chunk handed over from it (see `ReadBuffers`).
Plain integers under the GIL: no lock or event is made per chunk, and the thread wakes a
waiter only when one is waiting (rare: the thread hashes faster than a socket delivers).
"""

from __future__ import annotations

import hashlib
import queue
import threading
from collections import deque
from typing import Any

#: Chunks at least this large go to the hashing thread (once an object has gone there, all
#: its later chunks follow, to keep their order).
OFFLOAD_MIN = 64 * 1024


class HashThread:
    """One per process: hashes chunks in the order they were handed over."""

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[tuple[Any, Any, int] | None] = queue.SimpleQueue()
        self.submitted = 0  # sequence number of the latest hand-over (event-loop thread only)
        self.done = 0  # sequence number of the latest chunk hashed (hashing thread only)
        self._cond = threading.Condition()
        self._waiters = 0
        self._thread = threading.Thread(target=self._run, name="sha256", daemon=True)
        self._thread.start()

    def submit(self, h: Any, data: bytes | memoryview) -> int:
        self.submitted += 1
        self._queue.put((h, data, self.submitted))
        return self.submitted

    def wait(self, seq: int) -> None:
        """Return once the chunk numbered `seq` (and every one before it) is hashed."""
        if self.done >= seq:
            return
        with self._cond:
            self._waiters += 1
            try:
                # The thread stores `done` before it reads `_waiters`: a waiter counted too
                # late to be notified sees the new `done` here instead.
                while self.done < seq:
                    self._cond.wait(0.5)
            finally:
                self._waiters -= 1

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(10)

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            h, data, seq = item
            h.update(data)
            self.done = seq
            if self._waiters:
                with self._cond:
                    self._cond.notify_all()


class Lease:
    """The hand-overs from one read buffer: the buffer is free once `seq` is hashed."""

    __slots__ = ("seq",)

    def __init__(self) -> None:
        self.seq = 0


class StreamHash:
    """SHA-256 of one object's dataset, possibly computed on the hashing thread."""

    def __init__(self, thread: HashThread | None) -> None:
        self._h = hashlib.sha256()
        self._thread = thread
        self._last = 0  # the latest hand-over of this object (0: none)

    def update(self, data: bytes | memoryview, lease: Lease | None) -> None:
        """Hash `data`. `lease` is that of the reused buffer `data` lives in; None means
        `data` is not in a reused buffer."""
        if self._thread is None or (not self._last and len(data) < OFFLOAD_MIN):
            self._h.update(data)
            return
        if lease is None or len(data) < OFFLOAD_MIN:
            data = bytes(data)  # small, or not ours to hold: a copy travels instead
            self._last = self._thread.submit(self._h, data)
            return
        self._last = lease.seq = self._thread.submit(self._h, data)

    def hexdigest(self) -> str:
        if self._last and self._thread is not None:
            self._thread.wait(self._last)  # chunks are hashed in order
        return self._h.hexdigest()


class ReadBuffers:
    """An association's read buffers: reused as soon as the hashing thread is done with them.

    One buffer is enough while objects are hashed inline; a large object being hashed on the
    other core needs a few, so that reading goes on while earlier chunks are hashed.
    """

    def __init__(self, size: int, thread: HashThread | None, most: int = 8) -> None:
        self.size = size
        self.most = most
        self._thread = thread
        self._all: deque[tuple[memoryview, Lease]] = deque()
        self.current = Lease()  # the lease of the buffer being read into

    def get(self) -> memoryview:
        done = self._thread.done if self._thread is not None else 0
        for _ in range(len(self._all)):
            buf, lease = self._all[0]
            self._all.rotate(-1)
            if lease.seq <= done:
                self.current = lease
                return buf
        if len(self._all) < self.most:
            buf = memoryview(bytearray(self.size))
            self.current = Lease()
            self._all.append((buf, self.current))
            return buf
        # All in use: wait for the oldest hand-over (the thread hashes ~1 GB/s, so briefly).
        buf, lease = self._all[0]
        self._all.rotate(-1)
        if self._thread is not None:
            self._thread.wait(lease.seq)
        self.current = lease
        return buf
