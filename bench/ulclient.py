"""A tiny raw-socket DICOM client for one measurement: new association + C-ECHO + release.

It encodes the handful of PDUs it needs by hand (PS3.8 section 9.3, PS3.7 section 9.3.5) and
checks only what the measurement relies on: the presentation context was accepted, the C-ECHO
status is Success, the release was answered. It is a measurement tool, not a DICOM library.
"""

from __future__ import annotations

import socket
import statistics
import struct
import time
from dataclasses import dataclass

APPLICATION_CONTEXT = b"1.2.840.10008.3.1.1.1"
VERIFICATION = b"1.2.840.10008.1.1"
IMPLICIT_VR_LE = b"1.2.840.10008.1.2"
IMPLEMENTATION_UID = b"2.25.122225172495295819787651693593792610512"
IMPLEMENTATION_VERSION = b"STORESCP_BENCH"
MAX_PDU = 131072


class EchoError(Exception):
    """The server did not complete association, C-ECHO and release as expected."""


def _item(item_type: int, payload: bytes) -> bytes:
    return struct.pack(">BBH", item_type, 0, len(payload)) + payload


def _pdu(pdu_type: int, body: bytes) -> bytes:
    return struct.pack(">BBI", pdu_type, 0, len(body)) + body


def _ae(title: str) -> bytes:
    return title.encode("ascii").ljust(16, b" ")[:16]


def associate_rq(called_ae: str, calling_ae: str) -> bytes:
    context = _item(
        0x20, bytes([1, 0, 0, 0]) + _item(0x30, VERIFICATION) + _item(0x40, IMPLICIT_VR_LE)
    )
    user = _item(0x51, struct.pack(">I", MAX_PDU))
    user += _item(0x52, IMPLEMENTATION_UID) + _item(0x55, IMPLEMENTATION_VERSION)
    variable = _item(0x10, APPLICATION_CONTEXT) + context + _item(0x50, user)
    header = struct.pack(">HH", 1, 0) + _ae(called_ae) + _ae(calling_ae) + bytes(32)
    return _pdu(0x01, header + variable)


def _element(group: int, elem: int, value: bytes) -> bytes:
    return struct.pack("<HHI", group, elem, len(value)) + value


def c_echo_rq(message_id: int) -> bytes:
    """P-DATA-TF with one PDV: a C-ECHO-RQ command set (implicit VR little endian)."""
    sop_class = VERIFICATION + b"\x00" if len(VERIFICATION) % 2 else VERIFICATION
    body = _element(0x0000, 0x0002, sop_class)
    body += _element(0x0000, 0x0100, struct.pack("<H", 0x0030))
    body += _element(0x0000, 0x0110, struct.pack("<H", message_id))
    body += _element(0x0000, 0x0800, struct.pack("<H", 0x0101))
    command = _element(0x0000, 0x0000, struct.pack("<I", len(body))) + body
    pdv = struct.pack(">IBB", len(command) + 2, 1, 0x03) + command
    return _pdu(0x04, pdv)


RELEASE_RQ = _pdu(0x05, bytes(4))


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = sock.recv_into(view[got:])
        if k == 0:
            raise EchoError("connection closed by the server")
        got += k
    return bytes(buf)


def _recv_pdu(sock: socket.socket) -> tuple[int, bytes]:
    pdu_type, _, length = struct.unpack(">BBI", _recv_exact(sock, 6))
    if length > 1 << 24:
        raise EchoError(f"PDU of {length} bytes")
    return pdu_type, _recv_exact(sock, length)


def _check_ac(body: bytes) -> None:
    pos = 68  # protocol version, reserved, AE titles and 32 reserved bytes
    while pos + 4 <= len(body):
        item_type, _, length = struct.unpack(">BBH", body[pos : pos + 4])
        if item_type == 0x21:
            result = body[pos + 6]
            if result != 0:
                raise EchoError(f"Verification presentation context not accepted ({result})")
            return
        pos += 4 + length
    raise EchoError("A-ASSOCIATE-AC without a presentation context")


def _recv_command(sock: socket.socket) -> bytes:
    """Read P-DATA-TF PDUs until the last fragment of a command set; return the command set."""
    command = b""
    while True:
        pdu_type, body = _recv_pdu(sock)
        if pdu_type != 0x04:
            raise EchoError(f"expected P-DATA-TF, got PDU type 0x{pdu_type:02x}")
        pos = 0
        while pos + 6 <= len(body):
            length, _pcid, control = struct.unpack(">IBB", body[pos : pos + 6])
            if control & 0x01:
                command += body[pos + 6 : pos + 4 + length]
                if control & 0x02:
                    return command
            pos += 4 + length


def _status(command: bytes) -> int:
    pos = 0
    while pos + 8 <= len(command):
        group, elem, length = struct.unpack("<HHI", command[pos : pos + 8])
        if (group, elem) == (0x0000, 0x0900):
            return int(struct.unpack("<H", command[pos + 8 : pos + 10])[0])
        pos += 8 + length
    raise EchoError("C-ECHO-RSP without a status")


def echo_once(host: str, port: int, called_ae: str, calling_ae: str, timeout: float = 5.0) -> None:
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(associate_rq(called_ae, calling_ae))
        pdu_type, body = _recv_pdu(sock)
        if pdu_type != 0x02:
            raise EchoError(f"association not accepted (PDU type 0x{pdu_type:02x})")
        _check_ac(body)
        sock.sendall(c_echo_rq(1))
        status = _status(_recv_command(sock))
        if status != 0:
            raise EchoError(f"C-ECHO status 0x{status:04x}")
        sock.sendall(RELEASE_RQ)
        pdu_type, _ = _recv_pdu(sock)
        if pdu_type != 0x06:
            raise EchoError(f"expected A-RELEASE-RP, got PDU type 0x{pdu_type:02x}")


@dataclass(frozen=True)
class EchoResult:
    samples_ms: list[float]

    @property
    def median_ms(self) -> float:
        return statistics.median(self.samples_ms)

    @property
    def p90_ms(self) -> float:
        ordered = sorted(self.samples_ms)
        return ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))]


def measure_echo(
    host: str, port: int, called_ae: str, calling_ae: str, iterations: int, warmup: int = 5
) -> EchoResult:
    """Time connect + A-ASSOCIATE + C-ECHO + A-RELEASE + close, `iterations` times."""
    for _ in range(warmup):
        echo_once(host, port, called_ae, calling_ae)
    samples = []
    for _ in range(iterations):
        t0 = time.perf_counter()
        echo_once(host, port, called_ae, calling_ae)
        samples.append((time.perf_counter() - t0) * 1000.0)
    return EchoResult(samples)
