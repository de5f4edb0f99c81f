"""SHA-256 of large datasets on a second core.

hashlib releases the GIL while it hashes a large buffer, so one hashing thread runs beside
the event loop: the loop writes a chunk to the staging file and hands it to the thread, and
the digest is ready by the time the last fragment has arrived. Small objects are hashed
inline; handing them over would cost more than it saves.

Chunks usually live in an association's reusable read buffer. Each hand-over returns a
`threading.Event` set once the thread is done with the chunk; the read buffer is not reused
before all its events are set (see `ReadBuffers`).
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
        self._queue: queue.SimpleQueue[tuple[Any, Any, threading.Event] | None] = (
            queue.SimpleQueue()
        )
        self._thread = threading.Thread(target=self._run, name="sha256", daemon=True)
        self._thread.start()

    def submit(self, h: Any, data: bytes | memoryview) -> threading.Event:
        done = threading.Event()
        self._queue.put((h, data, done))
        return done

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(10)

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            h, data, done = item
            h.update(data)
            done.set()


class StreamHash:
    """SHA-256 of one object's dataset, possibly computed on the hashing thread."""

    def __init__(self, thread: HashThread | None) -> None:
        self._h = hashlib.sha256()
        self._thread = thread
        self._last: threading.Event | None = None  # the latest hand-over of this object

    def update(self, data: bytes | memoryview, leases: list[threading.Event] | None) -> None:
        """Hash `data`. `leases` collects the events that free the buffer `data` lives in;
        None means `data` is not in a reused buffer."""
        if self._thread is None or (self._last is None and len(data) < OFFLOAD_MIN):
            self._h.update(data)
            return
        if leases is None or len(data) < OFFLOAD_MIN:
            data = bytes(data)  # small, or not ours to hold: a copy travels instead
        self._last = self._thread.submit(self._h, data)
        if leases is not None and not isinstance(data, bytes):
            leases.append(self._last)

    def hexdigest(self) -> str:
        if self._last is not None:
            self._last.wait()  # chunks are hashed in order: the last one done means all
        return self._h.hexdigest()


class ReadBuffers:
    """An association's read buffers: reused as soon as the hashing thread is done with them.

    One buffer is enough while objects are hashed inline; a large object being hashed on the
    other core needs a few, so that reading goes on while earlier chunks are hashed.
    """

    def __init__(self, size: int, most: int = 8) -> None:
        self.size = size
        self.most = most
        self._all: deque[tuple[memoryview, list[threading.Event]]] = deque()
        self.current: list[threading.Event] = []  # leases on the buffer being read into

    def get(self) -> memoryview:
        for _ in range(len(self._all)):
            buf, leases = self._all[0]
            self._all.rotate(-1)
            if all(e.is_set() for e in leases):
                leases.clear()
                self.current = leases
                return buf
        if len(self._all) < self.most:
            buf = memoryview(bytearray(self.size))
            self.current = []
            self._all.append((buf, self.current))
            return buf
        # All in use: wait for the oldest hand-over (the thread hashes ~1 GB/s, so briefly).
        buf, leases = self._all[0]
        self._all.rotate(-1)
        for e in leases:
            e.wait()
        leases.clear()
        self.current = leases
        return buf
