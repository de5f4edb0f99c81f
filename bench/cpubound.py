"""What this machine's CPU allows any receiver, measured in the same run as the servers.

- SHA-256 rate (`measure_sha256`): hashlib's on this CPU. store-scp must compute the SHA-256
  of every dataset byte it receives, so every build of ours spends this CPU on top of moving
  the bytes, on the same cores as the sender when both share the machine.
- Store floor (`measure_store_floor`): the kernel work that any receiver storing each object as
  a file of its own must do between the last byte of a small object arriving and its answer
  leaving: read the bytes from the socket, write them to an already open staging file,
  rename it into place, send the response. Over real TCP on loopback, in one thread, with no
  parsing and no event loop: less than any real server spends (a few calls of Python
  included).

`cpu_bound_mb_s` turns these and a row's DCMTK figures into the most MB/s the cores can give.
"""

from __future__ import annotations

import hashlib
import os
import socket
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL
_RESPONSE = bytes(200)  # about a C-STORE-RSP in its P-DATA-TF


@dataclass(frozen=True)
class CpuFacts:
    cores: int
    sha256_bytes_per_s: float
    store_floor_us: float  # median per 16 KB object


def measure_sha256(total: int = 128 << 20, chunk: int = 1 << 20, runs: int = 3) -> float:
    """hashlib's SHA-256 in bytes/s (median of `runs`), fed `chunk` bytes at a time."""
    data = memoryview(os.urandom(chunk))
    rates = []
    for _ in range(runs):
        h = hashlib.sha256()
        t0 = time.perf_counter()
        for _ in range(max(1, total // chunk)):
            h.update(data)
        rates.append(max(1, total // chunk) * chunk / (time.perf_counter() - t0))
    return statistics.median(rates)


def measure_store_floor(
    folder: Path, objects: int = 2000, size: int = 16 * 1024, samples: int = 3
) -> float:
    """Median microseconds per object from its last byte received to its response sent (see
    the module docstring). The files stay in `folder` for the caller to retire."""
    folder.mkdir(parents=True, exist_ok=True)
    payload = os.urandom(size)
    view = memoryview(bytearray(size))
    answer = bytearray(len(_RESPONSE))
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname()[:2])
        server, _ = listener.accept()
    times: list[float] = []
    try:
        for sock in (client, server):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for sample in range(samples):
            for i in range(objects):
                staging, final = f"{folder}/{sample}-{i}.part", f"{folder}/{sample}-{i}.dcm"
                fd = os.open(staging, _CREATE, 0o600)
                client.sendall(payload)  # in the server's receive queue before the clock starts
                t0 = time.perf_counter()
                got = 0
                while got < size:
                    got += server.recv_into(view[got:])
                os.write(fd, view)
                os.rename(staging, final)
                server.sendall(_RESPONSE)
                times.append(time.perf_counter() - t0)
                got = 0
                while got < len(_RESPONSE):
                    got += client.recv_into(memoryview(answer)[got:])
                os.close(fd)
    finally:
        client.close()
        server.close()
    return statistics.median(times) * 1e6


def cpu_bound_mb_s(
    total_bytes: int,
    cores: int,
    sender_cpu_s: float,
    receiver_cpu_s: float,
    sha256_bytes_per_s: float,
) -> float:
    """The most MB/s `cores` cores can sustain for `total_bytes` when the sender spends
    `sender_cpu_s`, the receiver `receiver_cpu_s` (DCMTK's storescp in the same row: a lean
    C receiver) plus the SHA-256 of every byte, all on this machine."""
    cpu_s = sender_cpu_s + receiver_cpu_s + total_bytes / sha256_bytes_per_s
    return total_bytes / (cpu_s / cores) / 1e6
