"""New files made durable together, before anything references them.

An import job writes one file per frame. An fsync of every file and of its folder as it is
written costs two journal commits per frame, one after the other, on the job's thread. Instead
the job writes its frames without fsync into a `PendingFiles` and calls `sync()` before it
commits the image set versions that reference them:

- every file is fsynced once, through the descriptor it was written with (so a write-back error
  of that file is reported to this fsync, and its inode stays in memory until then), by the
  threads of a shared `Flusher`: fsyncs that run together share journal commits, and they run
  while the job goes on decoding and encoding the next frames;
- then every folder that received a new entry is fsynced once.

At most `chunk` descriptors wait to be handed to the flusher and one chunk is in flight per job:
a job holds at most twice `chunk` descriptors open.

A crash before `sync()` returned leaves files that nothing references (their names are fresh
random ids); it never leaves a reference to a file that is not durable.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import TypeVar

_T = TypeVar("_T")

#: Threads that run fsyncs for every job of a datastore: enough to keep a fast disk busy
#: (the file system joins fsyncs that run together into one journal commit).
FLUSH_THREADS = 16

#: Files handed to the flusher at a time, per job.
CHUNK = 64


def fsync_dir(path: str | Path) -> None:
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_and_close(fd: int) -> None:
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Flusher:
    """The fsync threads of one datastore; `enabled=False` makes every `PendingFiles` close its
    files without fsync (benchmarks only: nothing is durable then)."""

    def __init__(self, *, enabled: bool = True, threads: int = FLUSH_THREADS) -> None:
        self.enabled = enabled
        self._threads = threads
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()

    def submit(self, fn: Callable[[_T], None], arg: _T) -> Future[None]:
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self._threads, thread_name_prefix="fsync")
            return self._pool.submit(fn, arg)

    def pending(self, folders: Iterable[str] = ()) -> PendingFiles:
        """A new set of pending files; `folders` are fsynced by its `sync()` in any case."""
        return PendingFiles(self, folders)

    def close(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True)


class PendingFiles:
    """Files written without fsync; `sync()` makes them and their folders durable. Used by one
    thread. `close()` (always call it) closes whatever was not synced."""

    def __init__(self, flusher: Flusher, folders: Iterable[str] = (), chunk: int = CHUNK) -> None:
        self._flusher = flusher
        self._chunk = chunk
        self._waiting: list[int] = []
        self._in_flight: list[Future[None]] = []
        self._folders: set[str] = set(folders)
        self._error: BaseException | None = None

    def add(self, fd: int, folder: str) -> None:
        """Take over `fd`, a file just written in `folder`: it is closed by this object."""
        if not self._flusher.enabled:
            os.close(fd)
            return
        self._waiting.append(fd)
        self._folders.add(folder)
        if len(self._waiting) >= self._chunk:
            self._hand_over()

    def _hand_over(self) -> None:
        self._settle()  # the previous chunk: at most one in flight
        fds, self._waiting = self._waiting, []
        self._in_flight = [self._flusher.submit(_fsync_and_close, fd) for fd in fds]

    def _settle(self) -> None:
        """Wait for the chunk in flight; keep its first error."""
        futures, self._in_flight = self._in_flight, []
        wait(futures)
        for future in futures:
            exc = future.exception()
            if exc is not None and self._error is None:
                self._error = exc

    def sync(self) -> None:
        """Make every file added so far, then every folder, durable; raises the first OSError."""
        if not self._flusher.enabled:
            return
        if self._waiting:
            self._hand_over()
        self._settle()
        if self._error is None and self._folders:
            folders, self._folders = sorted(self._folders), set()
            self._in_flight = [self._flusher.submit(fsync_dir, f) for f in folders]
            self._settle()
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def close(self) -> None:
        """Close the files not handed over yet, without fsync (the job did not finish)."""
        self._settle()
        fds, self._waiting = self._waiting, []
        for fd in fds:
            os.close(fd)
