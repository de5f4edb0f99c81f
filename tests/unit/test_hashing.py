"""The hashing thread and the read buffers it leases: a buffer is never reused before the
thread has hashed every chunk handed over from it, and digests equal hashlib's."""

from __future__ import annotations

import hashlib
import random
import threading
import time

from store_scp.server.hashing import OFFLOAD_MIN, HashThread, ReadBuffers, StreamHash


class SlowHash:
    """A hash that takes its time, so that the reader catches up with the thread."""

    def __init__(self) -> None:
        self.h = hashlib.sha256()

    def update(self, data: bytes | memoryview) -> None:
        time.sleep(0.002)
        self.h.update(data)


def test_buffers_are_reused_only_after_their_chunks_are_hashed() -> None:
    thread = HashThread()
    try:
        buffers = ReadBuffers(OFFLOAD_MIN, thread, most=3)
        rng = random.Random(7)
        slow, expected = SlowHash(), hashlib.sha256()
        seen: set[int] = set()
        for _ in range(60):
            buf = buffers.get()
            seen.add(id(buf.obj))
            lease = buffers.current
            assert lease.seq <= thread.done  # nothing of it is still waiting to be hashed
            chunk = rng.randbytes(OFFLOAD_MIN)
            buf[:] = chunk
            expected.update(chunk)
            lease.seq = thread.submit(slow, buf)
        thread.wait(thread.submitted)
        assert slow.h.digest() == expected.digest()
        assert len(seen) == 3  # the reader had to wait for the thread, and reused its buffers
    finally:
        thread.close()


def test_stream_hash_equals_hashlib_inline_and_offloaded() -> None:
    thread = HashThread()
    try:
        buffers = ReadBuffers(4 * OFFLOAD_MIN, thread)
        rng = random.Random(11)
        for sizes in (
            [10, 200, 3000],
            [OFFLOAD_MIN, 5, 2 * OFFLOAD_MIN, 17],
            [4 * OFFLOAD_MIN] * 9,
        ):
            stream, expected = StreamHash(thread), hashlib.sha256()
            for size in sizes:
                buf = buffers.get()
                data = rng.randbytes(size)
                buf[:size] = data
                expected.update(data)
                stream.update(buf[:size], buffers.current)
            assert stream.hexdigest() == expected.hexdigest()
        assert StreamHash(None).hexdigest() == hashlib.sha256().hexdigest()
    finally:
        thread.close()


def test_wait_returns_for_a_waiter_that_arrives_while_the_thread_finishes() -> None:
    thread = HashThread()
    try:
        for _ in range(200):
            seq = thread.submit(hashlib.sha256(), b"x" * 1024)
            waiter = threading.Thread(target=thread.wait, args=(seq,))
            waiter.start()
            waiter.join(5)
            assert not waiter.is_alive()
            assert thread.done >= seq
    finally:
        thread.close()
