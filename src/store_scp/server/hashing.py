"""SHA-256 of received datasets, computed as they stream in but never on the response path.

A small object is hashed inline as its fragments arrive. Once an object has passed
OFFLOAD_MIN, the rest of it is hashed by one thread per process that reads the bytes back
from the staging file (the page cache; a copy is far cheaper than the hash) while the event
loop goes on writing. The C-STORE response waits for the durable commit only: the digest
belongs in the receipt, which is written after the response anyway (and the start-up
reconciler recomputes it from the committed file if the process dies before).

Why not hand the loop's read buffers to the thread: each hand-over costs GIL transfers and
couples the reader to the hasher (a buffer cannot be reused before it is hashed), so the
socket was read no faster than SHA-256 could run on a shared core, and every response waited
for the last chunk. Reading back from the file lets the hash lag by whole objects and catch
up while the sender prepares its next one.

Threading: each job's `available` is written by the event-loop thread only, its `hashed` by
the hashing thread only (plain integers under the GIL). The thread sleeps on a condition and
is woken only when it is asleep and enough work has arrived.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import threading
from collections import deque
from collections.abc import Callable
from typing import Any

log = logging.getLogger("store_scp.hashing")

#: An object's first bytes up to this size are hashed inline (handing a small object over
#: would cost more than hashing it); the rest goes to the hashing thread.
OFFLOAD_MIN = 64 * 1024
#: The thread reads and hashes this much at a time (fits in the CPU's L2 cache).
CHUNK = 1 << 20
#: The hashing thread yields the CPU to the threads that move bytes (ours and the sender's,
#: when it shares the machine) and catches up in their gaps; the listener's backlog bound
#: keeps it from falling far behind. Measured on 2 cores, 50 MB objects: about 8% faster.
HASH_THREAD_NICENESS = 10
#: Each job holds a descriptor: beyond this many unfinished jobs, objects are hashed inline
#: (a lagging thread must never exhaust the descriptors that accepts and staging files need).
MAX_JOBS = 128


class HashJob:
    """The part of one object's dataset that the hashing thread hashes from its file."""

    __slots__ = (
        "available",
        "cancelled",
        "deliver",
        "digest",
        "ended",
        "failed",
        "fd",
        "h",
        "hashed",
    )

    def __init__(self, h: Any, fd: int, offset: int) -> None:
        self.h = h  # the object's hash, continued from its inline part
        self.fd = fd  # our own descriptor of the staging file (closed by the thread)
        self.hashed = offset  # file offset hashed up to (hashing thread)
        self.available = offset  # file offset written up to (event-loop thread)
        self.ended = False
        self.cancelled = False
        self.failed = False  # the file could not be read back: the digest will be ""
        self.digest: str | None = None
        self.deliver: Callable[[str], object] | None = None


def _has_work(job: HashJob) -> bool:
    return job.cancelled or job.hashed < job.available or job.ended


class FileHasher:
    """One per process: hashes the jobs' files as they grow, round robin."""

    def __init__(self) -> None:
        self._jobs: deque[HashJob] = deque()
        self._cond = threading.Condition()
        self._asleep = False
        self._stop = False
        self.queued = 0  # bytes made available to the thread (event-loop thread)
        self.done = 0  # bytes hashed or dropped by it (hashing thread)
        self._thread = threading.Thread(target=self._run, name="sha256", daemon=True)
        self._thread.start()

    @property
    def backlog(self) -> int:
        """Bytes written but not hashed yet, over all jobs."""
        return self.queued - self.done

    # --- event-loop thread ---------------------------------------------------------------------

    def start(self, h: Any, fd: int, offset: int) -> HashJob | None:
        """Continue `h` from file offset `offset` of `fd` (duplicated: the caller may close
        its own descriptor, or unlink the file, at any time). None: hash inline instead (too
        many jobs, or no descriptor to spare)."""
        if len(self._jobs) >= MAX_JOBS:
            return None
        try:
            job = HashJob(h, os.dup(fd), offset)
        except OSError:
            return None
        with self._cond:
            self._jobs.append(job)
        return job

    def extend(self, job: HashJob, upto: int) -> None:
        """Bytes up to file offset `upto` are written."""
        self.queued += upto - job.available
        job.available = upto
        if self._asleep and upto - job.hashed >= CHUNK:
            self._wake()

    def end(self, job: HashJob, upto: int) -> None:
        """The object is complete at `upto`."""
        self.extend(job, upto)
        job.ended = True
        if self._asleep:
            self._wake()

    def when_done(
        self, job: HashJob, loop: asyncio.AbstractEventLoop, callback: Callable[[str], None]
    ) -> None:
        """Call `callback(hexdigest)` in `loop` once the ended `job` is hashed ("" if its
        file could not be read back)."""
        with self._cond:
            if job.digest is None:
                job.deliver = lambda digest: loop.call_soon_threadsafe(callback, digest)
                return
        loop.call_soon(callback, job.digest)

    def cancel(self, job: HashJob) -> None:
        """The object was dropped: stop hashing it."""
        job.cancelled = True
        if self._asleep:
            self._wake()

    def close(self) -> None:
        """Stop the thread; unfinished jobs are dropped (their callbacks never run)."""
        with self._cond:
            self._stop = True
            self._cond.notify()
        self._thread.join(10)

    def _wake(self) -> None:
        with self._cond:
            self._cond.notify()

    # --- hashing thread ------------------------------------------------------------------------

    def _next(self) -> HashJob | None:
        """A job with something to do, round robin; sleeps while there is none."""
        with self._cond:
            while not self._stop:
                for _ in range(len(self._jobs)):
                    job = self._jobs[0]
                    self._jobs.rotate(-1)
                    if _has_work(job):
                        return job
                # Asleep is set before the last look: work that arrives after the look sees
                # it and wakes us; work that arrived before it is found by the look.
                self._asleep = True
                try:
                    if not any(_has_work(j) for j in self._jobs):
                        self._cond.wait(0.5)
                finally:
                    self._asleep = False
            for job in self._jobs:
                self._release(job)
            self._jobs.clear()
            return None

    def _release(self, job: HashJob) -> None:
        with contextlib.suppress(OSError):
            os.close(job.fd)
        job.fd = -1

    def _drop(self, job: HashJob) -> None:
        """The job is over: its descriptor is closed and the thread forgets it."""
        self._release(job)
        with self._cond:
            self._jobs.remove(job)

    def _finish(self, job: HashJob, digest: str) -> None:
        self._drop(job)
        with self._cond:
            job.digest = digest
            deliver = job.deliver
        if deliver is not None:
            with contextlib.suppress(RuntimeError):  # the loop is gone: the process is ending
                deliver(digest)

    def _run(self) -> None:
        with contextlib.suppress(OSError, AttributeError):  # Linux: niceness is per thread
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), HASH_THREAD_NICENESS)
        buf = memoryview(bytearray(CHUNK))
        while (job := self._next()) is not None:
            if job.cancelled:
                self.done += job.available - job.hashed
                self._drop(job)
                continue
            if job.hashed < job.available:
                n = 0
                if not job.failed:
                    want = min(CHUNK, job.available - job.hashed)
                    try:
                        n = os.preadv(job.fd, [buf[:want]], job.hashed)
                    except OSError as exc:
                        why = os.strerror(exc.errno) if exc.errno else type(exc).__name__
                    else:
                        why = "file shorter than written"
                    if n <= 0:
                        job.failed = True
                        log.error("cannot read a staging file back to hash it", extra={"why": why})
                if job.failed:
                    n = job.available - job.hashed  # skipped: the digest will be ""
                else:
                    job.h.update(buf[:n])
                job.hashed += n
                self.done += n
                continue
            if job.ended:
                self._finish(job, "" if job.failed else job.h.hexdigest())


class StreamHash:
    """SHA-256 of one object's dataset as it is written to its staging file."""

    def __init__(self, hasher: FileHasher | None) -> None:
        self._h = hashlib.sha256()
        self._hasher = hasher
        self._inline = 0
        self.job: HashJob | None = None

    def update(self, data: bytes | memoryview, fd: int, end: int) -> None:
        """`data` was just written to `fd` and ends at file offset `end`."""
        if self.job is not None:
            assert self._hasher is not None
            self._hasher.extend(self.job, end)
            return
        if self._hasher is None or self._inline + len(data) <= OFFLOAD_MIN:
            self._h.update(data)
            self._inline += len(data)
            return
        self.job = self._hasher.start(self._h, fd, end - len(data))
        if self.job is None:
            self._hasher = None  # this object is hashed inline
            self._h.update(data)
            return
        self._hasher.extend(self.job, end)

    def end(self, end: int) -> str | None:
        """The object is complete: its hex digest, or None if the hashing thread will tell
        (see FileHasher.when_done with `job`)."""
        if self.job is None:
            return self._h.hexdigest()
        assert self._hasher is not None
        self._hasher.end(self.job, end)
        return None

    def cancel(self) -> None:
        if self.job is not None and self._hasher is not None:
            self._hasher.cancel(self.job)
