"""Group commit of folder fsyncs: every caller is covered by an fsync that started after its
call, concurrent callers share fsyncs, and an fsync error reaches every caller it covered."""

from __future__ import annotations

import errno
import os
import threading
import time
from pathlib import Path

import pytest

from store_scp.storage.dirsync import FolderSync


class Recorder:
    """An fsync that takes its time and logs when each one started and ended."""

    def __init__(self, fail_first: int = 0) -> None:
        self.lock = threading.Lock()
        self.calls: list[tuple[float, float]] = []
        self.fail_first = fail_first

    def __call__(self, path: str) -> None:
        start = time.monotonic()
        time.sleep(0.01)
        with self.lock:
            self.calls.append((start, time.monotonic()))
            if len(self.calls) <= self.fail_first:
                raise OSError(errno.EIO, "injected")


def run_callers(sync: FolderSync, n: int) -> list[tuple[float, float, BaseException | None]]:
    results: list[tuple[float, float, BaseException | None]] = []
    lock = threading.Lock()
    barrier = threading.Barrier(n)

    def caller() -> None:
        barrier.wait()
        called = time.monotonic()
        error: BaseException | None = None
        try:
            sync.sync("/folder")
        except OSError as exc:
            error = exc
        with lock:
            results.append((called, time.monotonic(), error))

    threads = [threading.Thread(target=caller) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    return results


def test_each_caller_is_covered_by_an_fsync_started_after_its_call() -> None:
    fsync = Recorder()
    sync = FolderSync(fsync)
    results = run_callers(sync, 24)
    assert len(results) == 24 and all(error is None for *_, error in results)
    for called, returned, _ in results:
        assert any(called <= start and end <= returned for start, end in fsync.calls)
    assert len(fsync.calls) < 24  # shared: concurrent callers did not each get their own
    assert not sync._folders  # nothing kept once nobody waits


def test_one_caller_alone_gets_one_fsync_per_call() -> None:
    fsync = Recorder()
    sync = FolderSync(fsync)
    for _ in range(3):
        sync.sync("/folder")
    assert len(fsync.calls) == 3


def test_a_failed_fsync_fails_every_caller_it_covered_and_is_not_retried_for_them() -> None:
    fsync = Recorder(fail_first=1)
    sync = FolderSync(fsync)
    results = run_callers(sync, 12)
    failed = [r for r in results if r[2] is not None]
    assert failed  # the first fsync failed, and so did everyone it covered
    first_start, first_end = fsync.calls[0]
    for called, _returned, error in results:
        if error is not None:
            assert called <= first_start  # only callers that fsync was meant to cover
    for called, returned, error in results:
        if error is None:  # covered by a later, successful fsync that started after its call
            assert any(
                called <= start and end <= returned and start >= first_end
                for start, end in fsync.calls[1:]
            )


def test_real_folder(tmp_path: Path) -> None:
    sync = FolderSync()
    (tmp_path / "a").write_bytes(b"x")
    sync.sync(str(tmp_path))
    with pytest.raises(FileNotFoundError):
        sync.sync(os.path.join(tmp_path, "missing"))
