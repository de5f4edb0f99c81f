"""Flush latency of the disk under a folder: what one durable commit costs at the least.

One sample = create a file, write 16 KB, fsync it, rename it, fsync the folder: the sequence
store-scp performs before every C-STORE success when fsync is on. A single association sends
objects one at a time, so with fsync on it cannot beat 1 / (this latency) objects per second.
"""

from __future__ import annotations

import os
import statistics
import time
from dataclasses import dataclass
from pathlib import Path


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
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            try:
                os.write(fd, payload)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(tmp, final)
            os.fsync(dir_fd)
            out.append((time.perf_counter() - t0) * 1000.0)
        for i in range(samples):
            (folder / f"probe-{i}.dcm").unlink(missing_ok=True)
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return FlushResult(out)
