"""SHA-256 of datasets as they are written: inline for small objects, read back from the
staging file by the hashing thread for large ones. The digest always equals hashlib's over the
bytes written, whatever the caller does with its own descriptor, and the thread never leaks a
descriptor or backlog when a job is cancelled, fails or is left behind at close."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from store_scp.server.hashing import CHUNK, MAX_JOBS, OFFLOAD_MIN, FileHasher, StreamHash


@pytest.fixture
def hasher() -> Iterator[FileHasher]:
    h = FileHasher()
    yield h
    h.close()


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


class Writer:
    """A staging file written the way StoreOperation writes it: a header, then chunks."""

    def __init__(self, path: Path, hasher: FileHasher | None, header: int = 132) -> None:
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        os.write(self.fd, b"H" * header)
        self.offset = header
        self.stream = StreamHash(hasher)
        self.expected = hashlib.sha256()

    def write(self, data: bytes) -> None:
        os.write(self.fd, data)
        self.offset += len(data)
        self.expected.update(data)
        self.stream.update(data, self.fd, self.offset)


async def digest_of(hasher: FileHasher, w: Writer) -> str:
    """The digest end() returns, or the one the thread delivers into this loop."""
    ready = w.stream.end(w.offset)
    if ready is not None:
        return ready
    assert w.stream.job is not None
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[str] = loop.create_future()
    hasher.when_done(w.stream.job, loop, fut.set_result)
    return await asyncio.wait_for(fut, 10)


@pytest.mark.parametrize(
    "sizes",
    [
        [10, 200, 3000],  # inline only
        [OFFLOAD_MIN],  # exactly the inline limit
        [OFFLOAD_MIN - 5, 5, 1],  # crosses it by one byte
        [OFFLOAD_MIN // 2, 2 * OFFLOAD_MIN, 17, 3 * CHUNK + 11],
        [256 * 1024] * 40,  # a 10 MB object in read-sized pieces
    ],
)
def test_digest_equals_hashlib(hasher: FileHasher, tmp_path: Path, sizes: list[int]) -> None:
    rng = random.Random(sum(sizes))
    w = Writer(tmp_path / "obj.part", hasher)
    for size in sizes:
        w.write(rng.randbytes(size))
    offloaded = sum(sizes) > OFFLOAD_MIN
    assert (w.stream.job is not None) == offloaded
    os.close(w.fd)  # the thread has its own descriptor
    assert asyncio.run(digest_of(hasher, w)) == w.expected.hexdigest()
    assert hasher.backlog == 0


def test_without_a_thread_everything_is_inline(tmp_path: Path) -> None:
    w = Writer(tmp_path / "obj.part", None)
    for _ in range(5):
        w.write(os.urandom(OFFLOAD_MIN))
    assert w.stream.end(w.offset) == w.expected.hexdigest()
    os.close(w.fd)


def test_the_file_may_be_renamed_or_unlinked_before_it_is_hashed(
    hasher: FileHasher, tmp_path: Path
) -> None:
    """The object is committed (renamed) or dropped by S3 upload while the thread lags."""
    w = Writer(tmp_path / "obj.part", hasher)
    for _ in range(8):
        w.write(os.urandom(CHUNK))
    os.close(w.fd)
    os.unlink(tmp_path / "obj.part")
    assert asyncio.run(digest_of(hasher, w)) == w.expected.hexdigest()


def test_many_objects_interleaved_each_get_their_own_digest(
    hasher: FileHasher, tmp_path: Path
) -> None:
    """Sixteen associations writing at once; one that stalls without ending does not hold
    back the others (no head-of-line blocking in the thread)."""
    rng = random.Random(3)
    writers = [Writer(tmp_path / f"{i}.part", hasher) for i in range(16)]
    stalled = Writer(tmp_path / "stalled.part", hasher)
    stalled.write(rng.randbytes(2 * OFFLOAD_MIN))
    for _ in range(6):
        for w in writers:
            w.write(rng.randbytes(rng.randrange(1, 3 * OFFLOAD_MIN)))

    async def all_digests() -> list[str]:
        return list(await asyncio.gather(*(digest_of(hasher, w) for w in writers)))

    assert asyncio.run(all_digests()) == [w.expected.hexdigest() for w in writers]
    stalled.stream.cancel()
    for w in [*writers, stalled]:
        os.close(w.fd)


def test_when_done_after_the_digest_is_ready_still_calls_back(
    hasher: FileHasher, tmp_path: Path
) -> None:
    w = Writer(tmp_path / "obj.part", hasher)
    w.write(os.urandom(3 * OFFLOAD_MIN))
    assert w.stream.end(w.offset) is None
    job = w.stream.job
    assert job is not None
    for _ in range(500):
        if job.digest is not None:
            break
        asyncio.run(asyncio.sleep(0.01))
    assert job.digest == w.expected.hexdigest()

    async def late() -> str:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[str] = loop.create_future()
        hasher.when_done(job, loop, fut.set_result)
        return await asyncio.wait_for(fut, 5)

    assert asyncio.run(late()) == w.expected.hexdigest()
    os.close(w.fd)


def test_cancelled_jobs_release_their_descriptor_and_backlog(
    hasher: FileHasher, tmp_path: Path
) -> None:
    before = open_fds()
    for i in range(20):
        w = Writer(tmp_path / f"{i}.part", hasher)
        w.write(os.urandom(2 * OFFLOAD_MIN))
        w.stream.cancel()
        os.close(w.fd)
    for _ in range(500):
        if hasher.backlog == 0 and open_fds() == before:
            break
        asyncio.run(asyncio.sleep(0.01))
    assert hasher.backlog == 0
    assert open_fds() == before


def test_a_file_that_cannot_be_read_back_gives_an_empty_digest(
    hasher: FileHasher, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The receipt then has no digest (logged); the committed object itself is untouched."""
    w = Writer(tmp_path / "obj.part", hasher)
    with caplog.at_level(logging.ERROR, logger="store_scp.hashing"):
        data = os.urandom(4 * CHUNK)
        os.write(w.fd, data)
        os.ftruncate(w.fd, 1000)  # the bytes are gone before the thread reads them
        w.offset += len(data)
        w.stream.update(data, w.fd, w.offset)
        assert w.stream.job is not None
        assert asyncio.run(digest_of(hasher, w)) == ""
    assert "cannot read a staging file back" in caplog.text
    assert hasher.backlog == 0
    os.close(w.fd)


def test_close_drops_unfinished_jobs_and_their_descriptors(tmp_path: Path) -> None:
    before = open_fds()
    hasher = FileHasher()
    w = Writer(tmp_path / "obj.part", hasher)
    w.write(os.urandom(2 * OFFLOAD_MIN))  # never ended
    os.close(w.fd)
    hasher.close()
    assert open_fds() == before


def test_beyond_max_jobs_objects_are_hashed_inline(tmp_path: Path) -> None:
    """A thread that falls behind never holds more than MAX_JOBS descriptors."""
    hasher = FileHasher()
    try:
        hasher.close()  # a stopped thread: every job stays unfinished
        writers = [Writer(tmp_path / f"{i}.part", hasher) for i in range(MAX_JOBS + 3)]
        for w in writers:
            w.write(os.urandom(OFFLOAD_MIN + 1))
        offloaded = [w for w in writers if w.stream.job is not None]
        assert len(offloaded) == MAX_JOBS
        for w in writers[MAX_JOBS:]:
            assert w.stream.end(w.offset) == w.expected.hexdigest()
        for w in offloaded:
            assert w.stream.job is not None
            os.close(w.stream.job.fd)  # no thread is left to close them
    finally:
        for w in writers:
            os.close(w.fd)
