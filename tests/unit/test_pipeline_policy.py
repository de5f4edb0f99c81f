"""Seal policy, job-start limiter and backoff: pure logic."""

import pytest

from store_scp.pipeline.policy import SealPolicy, StartLimiter, backoff

P = SealPolicy(quiet_seconds=10, max_age_seconds=300, max_files=100, max_bytes=1000)


def reason(**kw: float) -> str | None:
    args = {"files": 5, "size": 10, "age": 20.0, "idle": 0.0, "writers": 0, "backlog": 0}
    args.update(kw)
    return P.seal_reason(**args)  # type: ignore[arg-type]


def test_an_empty_batch_is_never_sealed() -> None:
    assert reason(files=0, age=10_000, idle=10_000) is None


def test_quiet_batch_without_writers_is_sealed() -> None:
    assert reason(idle=9.9) is None
    assert reason(idle=10) == "quiet"


def test_a_writing_association_keeps_it_open_until_a_limit() -> None:
    assert reason(idle=1000, writers=1) is None
    assert reason(idle=1000, writers=1, files=100) == "max files"
    assert reason(idle=0, writers=3, size=1000) == "max bytes"
    assert reason(idle=0, writers=3, age=300) == "max age"


def test_under_a_burst_quiet_batches_grow_instead() -> None:
    assert reason(idle=60, backlog=2) is None
    assert reason(idle=60, backlog=2, files=100) == "max files"
    assert reason(idle=60, backlog=1) == "quiet"


def test_limiter_rate_and_concurrency() -> None:
    lim = StartLimiter(rate_per_second=0.25, max_concurrent_jobs=2)
    assert lim.wait_time(0.0, running_jobs=0) == 0.0
    lim.take(0.0)
    assert lim.wait_time(0.0, running_jobs=0) == pytest.approx(4.0)
    assert lim.wait_time(2.0, running_jobs=0) == pytest.approx(2.0)
    assert lim.wait_time(4.0, running_jobs=0) == 0.0
    assert lim.wait_time(100.0, running_jobs=2) is None  # quota full, whatever the time
    lim.take(4.0)
    # starts never exceed the rate over a long run
    starts, t = 0, 4.0
    while t < 404.0:
        if lim.wait_time(t, running_jobs=0) == 0.0:
            lim.take(t)
            starts += 1
        t += 0.5
    assert starts <= 0.25 * 400 + 1


def test_backoff_grows_and_is_capped() -> None:
    assert [backoff(n) for n in (1, 2, 3, 4)] == [1, 2, 4, 8]
    assert backoff(30) == 300
    assert backoff(3, jitter=0.5) == pytest.approx(3.0)
