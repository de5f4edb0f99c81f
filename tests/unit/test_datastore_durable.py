"""PendingFiles: every descriptor handed over is fsynced once and closed, errors are reported by
`sync()`, and nothing stays open after `close()`."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from store_scp.datastore.local.durable import Flusher, PendingFiles
from store_scp.datastore.local.jobs import default_job_threads


@pytest.fixture
def flusher() -> Iterator[Flusher]:
    f = Flusher(threads=4)
    yield f
    f.close()


def is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def new_file(folder: Path, name: str) -> int:
    fd = os.open(folder / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    os.write(fd, name.encode())
    return fd


def test_sync_closes_every_file_in_chunks_and_keeps_few_open(
    tmp_path: Path, flusher: Flusher
) -> None:
    pending = PendingFiles(flusher, [str(tmp_path)], chunk=8)
    fds = []
    before = len(os.listdir("/proc/self/fd"))
    for i in range(30):
        fds.append(new_file(tmp_path, f"f{i}"))
        pending.add(fds[-1], str(tmp_path))
        # At most the chunk being filled and the one in flight.
        assert len(os.listdir("/proc/self/fd")) - before <= 16
    pending.sync()
    assert not any(is_open(fd) for fd in fds)
    pending.close()
    assert sorted(p.read_text() for p in tmp_path.iterdir()) == sorted(f"f{i}" for i in range(30))


def test_a_failed_fsync_is_raised_by_sync_and_every_descriptor_is_closed(
    tmp_path: Path, flusher: Flusher
) -> None:
    pending = PendingFiles(flusher, chunk=4)
    files = [new_file(tmp_path, f"f{i}") for i in range(5)]
    read_end, write_end = os.pipe()  # fsync of a pipe fails (EINVAL)
    try:
        for fd in files[:2]:
            pending.add(fd, str(tmp_path))
        pending.add(write_end, str(tmp_path))
        for fd in files[2:]:
            pending.add(fd, str(tmp_path))
        with pytest.raises(OSError):
            pending.sync()
        pending.close()
        assert not any(is_open(fd) for fd in [*files, write_end])
    finally:
        os.close(read_end)


def test_close_without_sync_closes_what_was_not_handed_over(
    tmp_path: Path, flusher: Flusher
) -> None:
    pending = PendingFiles(flusher, chunk=100)
    fds = [new_file(tmp_path, f"f{i}") for i in range(3)]
    for fd in fds:
        pending.add(fd, str(tmp_path))
    pending.close()
    assert not any(is_open(fd) for fd in fds)


def test_a_disabled_flusher_closes_at_once(tmp_path: Path) -> None:
    off = Flusher(enabled=False)
    pending = off.pending([str(tmp_path)])
    fd = new_file(tmp_path, "f")
    pending.add(fd, str(tmp_path))
    assert not is_open(fd)
    pending.sync()
    pending.close()


def test_default_job_threads_follow_the_cores() -> None:
    assert [default_job_threads(n) for n in (1, 2, 4, 8, 16, 96)] == [2, 2, 2, 4, 4, 4]
    assert 2 <= default_job_threads() <= 4
