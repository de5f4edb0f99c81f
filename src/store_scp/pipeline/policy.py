"""When to seal a batch, and when an import job may start. Pure logic: no clock, no I/O.

Defaults are chosen for a hospital's real traffic, where one study usually comes in one
association and studies arrive a few per minute:

- A batch is sealed once no association is writing into it and it has been quiet for
  `quiet_seconds` (a study that arrives over two associations a few seconds apart still lands
  in one job), or when it reaches `max_files`, `max_bytes` or `max_age_seconds`. Under steady
  traffic (studies less than `quiet_seconds` apart, or overlapping) the quiet rule never
  holds, so the age limit is what bounds a study's time to available: 60 s keeps it well
  under 2 minutes and makes at most one job a minute per receiver, far below the start rate.
- Job starts respect HealthImaging's StartDICOMImportJob rate (AWS pages disagree between
  0.25 and 1 call per second: the lower is the default), the concurrent-jobs quota and the
  files-per-job quota. Sealed batches queue while a limit is reached; nothing is dropped.
- Under a burst (sealed batches already waiting to start), a quiet batch is not sealed: it
  stays open and grows until a size or age limit, so that jobs stay few and within the rate.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class SealPolicy:
    quiet_seconds: float = 10.0
    max_age_seconds: float = 60.0
    max_files: int = 5_000
    max_bytes: int = 50 * 1024**3
    #: Sealed batches waiting to start beyond which quiet batches stay open (burst mode).
    backlog_threshold: int = 2

    def seal_reason(
        self,
        *,
        files: int,
        size: int,
        age: float,
        idle: float,
        writers: int,
        backlog: int,
    ) -> str | None:
        """Why the batch should be sealed now, or None to keep it open.

        `age`: seconds since it opened; `idle`: seconds since its last object or association
        end; `writers`: associations still writing into it; `backlog`: sealed batches whose
        job has not started yet.
        """
        if files == 0:
            return None
        if files >= self.max_files:
            return "max files"
        if size >= self.max_bytes:
            return "max bytes"
        if age >= self.max_age_seconds:
            return "max age"
        if writers == 0 and idle >= self.quiet_seconds and backlog < self.backlog_threshold:
            return "quiet"
        return None


@dataclass(slots=True)
class StartLimiter:
    """Token bucket for StartDICOMImportJob plus the concurrent-jobs quota."""

    rate_per_second: float = 0.25
    burst: int = 1
    max_concurrent_jobs: int = 20
    _tokens: float = 1.0
    _last: float | None = None

    def _refill(self, now: float) -> None:
        if self._last is not None:
            self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate_per_second)
        self._last = now

    def wait_time(self, now: float, running_jobs: int) -> float | None:
        """Seconds until a start is allowed (0: now); None while the concurrency quota is
        full (wait for a job to end, whatever the time)."""
        if running_jobs >= self.max_concurrent_jobs:
            return None
        self._refill(now)
        if self._tokens >= 1:
            return 0.0
        return (1 - self._tokens) / self.rate_per_second

    def take(self, now: float) -> None:
        """Record a start call (made or attempted: a throttled call counts too)."""
        self._refill(now)
        self._tokens -= 1


def backoff(attempt: int, *, base: float = 1.0, cap: float = 300.0, jitter: float = 0.0) -> float:
    """Seconds before retry `attempt` (1-based): exponential, capped, with the given jitter
    fraction already drawn by the caller (0 <= jitter < 1) so that this stays pure."""
    delay = min(cap, base * 2 ** (attempt - 1))
    return delay * (1 - jitter / 2)
