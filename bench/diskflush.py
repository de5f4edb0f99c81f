"""What the disk under a folder allows, measured with the commit sequence store-scp uses.

- Flush latency: one sample = create a file, write 16 KB, fsync it, rename it, fsync the
  folder: what one durable commit costs at the least. A single association sends objects one
  at a time, so with fsync on it cannot beat 1 / (this latency) objects per second.
- Durable commit throughput (`measure_commit_bound`): the same sequence for the objects of a
  row, their bytes already in memory (no network, no parsing), by one writer or by several
  at once: an upper bound on the MB/s any server can reach with fsync on.

The probes leave their files in place: the bench retires their folders as it does a run's
(truncated at once, deleted at the end; see run.py `_retire`).
"""

from __future__ import annotations

import os
import statistics
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from store_scp.server.store import WRITEBACK_FIRST, writeback_due

_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL
#: Writes of 256 KB (store-scp's read buffer), early write-back on store-scp's schedule.
_CHUNK = 256 * 1024


@dataclass(frozen=True)
class FlushResult:
    samples_ms: list[float]

    @property
    def median_ms(self) -> float:
        return statistics.median(self.samples_ms)

    @property
    def p90_ms(self) -> float:
        ordered = sorted(self.samples_ms)
        return ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))]

    @property
    def bound_objects_per_s(self) -> float:
        return 1000.0 / self.median_ms if self.median_ms > 0 else float("inf")


@dataclass(frozen=True)
class CommitBound:
    """Durable commits of `writers` x `objects` objects of `size` bytes, all writers at once."""

    size: int
    writers: int
    objects: int
    wall_s: float

    @property
    def mb_s(self) -> float:
        return self.size * self.writers * self.objects / 1e6 / self.wall_s


def measure_flush(folder: Path, samples: int = 200, size: int = 16 * 1024) -> FlushResult:
    folder.mkdir(parents=True, exist_ok=True)
    payload = os.urandom(size)
    dir_fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    out: list[float] = []
    try:
        for i in range(samples):
            tmp = folder / f".probe-{i}.part"
            final = folder / f"probe-{i}.dcm"
            t0 = time.perf_counter()
            fd = os.open(tmp, _CREATE, 0o644)
            try:
                os.write(fd, payload)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(tmp, final)
            os.fsync(dir_fd)
            out.append((time.perf_counter() - t0) * 1000.0)
    finally:
        os.close(dir_fd)
    return FlushResult(out)


def _commit_objects(folder: Path, payload: memoryview, objects: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    dir_fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for i in range(objects):
            tmp = folder / f".{i}.part"
            fd = os.open(tmp, _CREATE, 0o600)
            try:
                written, writeback_at = 0, WRITEBACK_FIRST
                while written < len(payload):
                    written += os.write(fd, payload[written : written + _CHUNK])
                    writeback_at = writeback_due(fd, written, writeback_at)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(tmp, folder / f"{i}.dcm")
            os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def measure_commit_bound(folder: Path, size: int, writers: int, objects: int) -> CommitBound:
    """Best-case MB/s of durable commits on this disk: create, write (with early write-back,
    as store-scp), fsync, rename, fsync the folder; `writers` threads at
    once, each into its own folder (the system calls run without the GIL)."""
    payload = memoryview(os.urandom(size))
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            _commit_objects(folder / f"w{i}", payload, objects)
        except BaseException as exc:  # reported below, not lost in the thread
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(writers)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    os.sync()
    if errors:
        raise errors[0]
    return CommitBound(size=size, writers=writers, objects=objects, wall_s=wall)
