"""The Python floor: the least work a Store SCP written in Python can do per object.

One association at a time, one thread, blocking calls, no event loop. Per object it does only
what every receiver must: frame the PDUs, decode the command, write the data set to a file of
its own as it arrives, rename that file into place, answer. With --fsync it commits as
store-scp does (early write-back, fsync of the file, rename, fsync of the folder). It checks
nothing, parses no data set, writes no Part 10 header, tracks nothing and logs nothing: a real
receiver does all of that on top. So in the bench, where this floor misses a target with
storescu as the sender, no Python receiver reaches it on that machine.

With --sha256 it also computes the SHA-256 of every data set, which store-scp must: `inline`
hashes each read as it is written (the fewest steps; the hash runs on the receiving thread),
`process` hashes each committed file in a second process (no shared interpreter lock; it reads
the file back from the page cache and may fall behind by as much as store-scp lets its own
hashing fall behind, MAX_HASH_BACKLOG, before an answer waits for it).

It accepts every presentation context with the first transfer syntax proposed and answers
every C-STORE with success: a measuring instrument for the bench, never a server to deploy.

    python3 bench/floorscp.py --port 11112 --out-dir OUT [--fsync] [--sha256 inline|process]
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import select
import socket
import struct
import sys
from collections import deque
from pathlib import Path
from typing import NoReturn

from store_scp.dicom import dimse
from store_scp.dicom import pdu as P
from store_scp.dicom.uids import IMPLEMENTATION_CLASS_UID
from store_scp.server.hashing import CHUNK as _HASH_CHUNK
from store_scp.server.listener import MAX_HASH_BACKLOG
from store_scp.server.store import WRITEBACK_FIRST, writeback_due

_PDU_HEADER = struct.Struct(">BxL")
_PDV_HEADER = struct.Struct(">LBB")
_BUFFER = 256 * 1024
_MAX_PDU = 1 << 20  # what store-scp announces by default
_IMPLEMENTATION = IMPLEMENTATION_CLASS_UID + ".9"
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL


class _Reader:
    """Reads from the socket into one reused buffer."""

    def __init__(self, sock: socket.socket, hash_inline: bool) -> None:
        self.sock = sock
        self.hash = hashlib.sha256() if hash_inline else None
        self.buf = bytearray(_BUFFER)
        self.view = memoryview(self.buf)
        self.pos = self.end = 0

    def _fill(self) -> None:
        if self.pos:
            rest = self.end - self.pos
            self.buf[:rest] = self.view[self.pos : self.end]
            self.pos, self.end = 0, rest
        n = self.sock.recv_into(self.view[self.end :])
        if not n:
            raise EOFError
        self.end += n

    def read(self, n: int) -> bytes:
        """`n` bytes; longer than the buffer only for an association request."""
        if n > _BUFFER:
            out = bytearray(self.view[self.pos : self.end])
            self.pos = self.end = 0
            while len(out) < n:
                chunk = self.sock.recv(n - len(out))
                if not chunk:
                    raise EOFError
                out += chunk
            return bytes(out)
        while self.end - self.pos < n:
            self._fill()
        data = bytes(self.view[self.pos : self.pos + n])
        self.pos += n
        return data

    def copy_to(self, fd: int, n: int, written: int, writeback_at: int) -> tuple[int, int]:
        """Copy `n` bytes to the file; returns (bytes written so far, next write-back)."""
        while n:
            if self.pos == self.end:
                self._fill()
            take = min(n, self.end - self.pos)
            view = self.view[self.pos : self.pos + take]
            if self.hash is not None:
                self.hash.update(view)
            while view:
                view = view[os.write(fd, view) :]
            self.pos += take
            n -= take
            written += take
            writeback_at = writeback_due(fd, written, writeback_at)
        return written, writeback_at


def _hash_files(jobs: int, acks: int) -> NoReturn:
    """The hashing process: hashes each file named on `jobs`, then writes one byte to `acks`."""
    buf = memoryview(bytearray(_HASH_CHUNK))
    with os.fdopen(jobs, "rb") as names:
        for name in names:
            h = hashlib.sha256()
            fd = os.open(name[:-1], os.O_RDONLY)
            while n := os.readv(fd, [buf]):
                h.update(buf[:n])
            os.close(fd)
            h.hexdigest()
            os.write(acks, b".")
    os._exit(0)


class _HashProcess:
    """Hashes committed files in a child process; `submit` waits only while the child is more
    than MAX_HASH_BACKLOG bytes behind. Made before the listener, which the child must not
    hold; the child ends when this process does (its job pipe closes)."""

    def __init__(self) -> None:
        jobs, self._jobs = os.pipe()
        self._acks, acks = os.pipe()
        if os.fork() == 0:
            os.close(self._jobs)
            os.close(self._acks)
            _hash_files(jobs, acks)
        os.close(jobs)
        os.close(acks)
        os.set_blocking(self._acks, False)
        self._sizes: deque[int] = deque()
        self._behind = 0

    def submit(self, path: str, size: int) -> None:
        os.write(self._jobs, f"{path}\n".encode())
        self._sizes.append(size)
        self._behind += size
        self._collect(wait=False)
        while self._behind > MAX_HASH_BACKLOG:
            self._collect(wait=True)

    def _collect(self, wait: bool) -> None:
        if wait:
            select.select([self._acks], [], [])
        try:
            done = os.read(self._acks, 65536)
        except BlockingIOError:
            return
        if not done:
            raise RuntimeError("the hashing process ended")
        for _ in done:
            self._behind -= self._sizes.popleft()


def _accept(reader: _Reader, conn: socket.socket) -> None:
    pdu_type, length = _PDU_HEADER.unpack(reader.read(6))
    rq = P.decode_body(pdu_type, memoryview(reader.read(length)))
    if not isinstance(rq, P.AssociateRQ):
        raise EOFError
    contexts = [
        P.PresentationContextAC(pc.id, P.PCResult.ACCEPTANCE, pc.transfer_syntaxes[0])
        for pc in rq.presentation_contexts
    ]
    # Under the project's UID root, so that it is never taken for store-scp itself.
    info = P.UserInformation(max_length=_MAX_PDU, implementation_class_uid=_IMPLEMENTATION)
    ac = P.AssociateAC(rq.called_ae, rq.calling_ae, rq.application_context, contexts, info)
    conn.sendall(P.encode(ac))


def serve_association(
    conn: socket.socket,
    folder: Path,
    fsync: bool,
    counter: list[int],
    sha256: str | None = None,
    hasher: _HashProcess | None = None,
) -> None:
    reader = _Reader(conn, hash_inline=sha256 == "inline")
    _accept(reader, conn)
    folder_fd = os.open(folder, os.O_RDONLY)
    command_bytes = bytearray()
    command: dimse.Command | None = None
    fd, staging, written, writeback_at = -1, "", 0, -1
    try:
        while True:
            pdu_type, length = _PDU_HEADER.unpack(reader.read(6))
            if pdu_type != P.P_DATA_TF:
                reader.read(length)
                if pdu_type == P.A_RELEASE_RQ:
                    conn.sendall(P.encode(P.ReleaseRP()))
                return
            left = length
            while left:
                pdv_length, ctx, control = _PDV_HEADER.unpack(reader.read(6))
                left -= 4 + pdv_length
                if control & 1:  # command fragment
                    command_bytes += reader.read(pdv_length - 2)
                    if not control & 2:
                        continue
                    command = dimse.decode_command(bytes(command_bytes))
                    command_bytes.clear()
                    if command.command_field == dimse.C_ECHO_RQ:
                        rsp = dimse.c_echo_rsp(command)
                        conn.sendall(b"".join(P.fragment(ctx, rsp, True, _MAX_PDU)))
                        continue
                    staging = f"{folder}/{counter[0]}.part"
                    counter[0] += 1
                    fd = os.open(staging, _CREATE, 0o600)
                    written, writeback_at = 0, WRITEBACK_FIRST if fsync else -1
                    continue
                written, writeback_at = reader.copy_to(fd, pdv_length - 2, written, writeback_at)
                if control & 2 and command is not None:
                    if fsync:
                        os.fsync(fd)
                    os.close(fd)
                    fd = -1
                    final = staging[: -len(".part")] + ".dcm"
                    os.rename(staging, final)
                    if fsync:
                        os.fsync(folder_fd)
                    if reader.hash is not None:
                        reader.hash.hexdigest()
                        reader.hash = hashlib.sha256()
                    elif hasher is not None:
                        hasher.submit(final, written)
                    rsp = dimse.c_store_rsp(command, dimse.SUCCESS)
                    conn.sendall(b"".join(P.fragment(ctx, rsp, True, _MAX_PDU)))
    finally:
        if fd >= 0:
            os.close(fd)
        os.close(folder_fd)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--bind", default="127.0.0.1")
    ap.add_argument("--out-dir", type=Path, required=True)
    ap.add_argument("--fsync", action="store_true", help="commit durably, as store-scp does")
    ap.add_argument(
        "--sha256",
        choices=("inline", "process"),
        help="also compute each data set's SHA-256, on the receiving thread or in a second process",
    )
    args = ap.parse_args(argv)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    counter = [0]
    hasher = _HashProcess() if args.sha256 == "process" else None
    with socket.create_server((args.bind, args.port)) as listener:
        while True:
            conn, _ = listener.accept()
            with conn:
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                # A peer that goes away or sends nonsense ends its association, not the floor.
                with contextlib.suppress(EOFError, ConnectionError, P.PDUError, dimse.DimseError):
                    serve_association(conn, args.out_dir, args.fsync, counter, args.sha256, hasher)


if __name__ == "__main__":
    sys.exit(main())
