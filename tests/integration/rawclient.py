"""A tiny raw-socket DICOM client for hostile-input tests.

It speaks through the project's own PDU and DIMSE codecs but follows no state machine: a test
can associate properly, then send whatever bytes it likes (truncated PDUs, PDUs in the wrong
state, half a data set) and read back what the server answers, PDU by PDU.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import struct
import time
import uuid
import zlib
from collections import deque
from collections.abc import Iterable, Sequence
from types import TracebackType

from store_scp.dicom import dimse, uids
from store_scp.dicom import pdu as P

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
SECONDARY_CAPTURE_STORAGE = "1.2.840.10008.5.1.4.1.1.7"
VERIFICATION = uids.VERIFICATION_SOP_CLASS
EXPLICIT_LE = uids.EXPLICIT_VR_LITTLE_ENDIAN
IMPLICIT_LE = uids.IMPLICIT_VR_LITTLE_ENDIAN
DEFLATED_LE = uids.DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN

#: (abstract syntax, transfer syntaxes) per presentation context; ids are 1, 3, 5, ...
Contexts = Sequence[tuple[str, Sequence[str]]]
DEFAULT_CONTEXTS: Contexts = (
    (VERIFICATION, (IMPLICIT_LE,)),
    (CT_IMAGE_STORAGE, (EXPLICIT_LE,)),
)
#: Largest PDU this client reads; the server announces its own maximum in the A-ASSOCIATE-AC.
CLIENT_MAX_PDU = 1 << 24
_PDV_OVERHEAD = 6  # PDV item length (4) + context id (1) + control header (1)


class PeerClosed(Exception):
    """The server closed the connection (FIN or RST) before the PDU we waited for."""

    def __init__(self, reset: bool = False) -> None:
        super().__init__("connection reset by the server" if reset else "connection closed")
        self.reset = reset


def new_uid() -> str:
    return f"2.25.{uuid.uuid4().int}"


# --------------------------------------------------------------------------------------------
# data sets (explicit VR little endian, built by hand so that every byte is known)


def element(group: int, elem: int, vr: bytes, value: bytes, *, explicit: bool = True) -> bytes:
    """One little endian data element; the value is padded to an even length."""
    if len(value) % 2:
        value += b"\x00" if vr in (b"UI", b"OB") else b" "
    if not explicit:
        return struct.pack("<HHL", group, elem, len(value)) + value
    if vr in (b"OB", b"OW", b"SQ", b"UN", b"UT", b"UC", b"UR"):
        return struct.pack("<HH2s2xL", group, elem, vr, len(value)) + value
    return struct.pack("<HH2sH", group, elem, vr, len(value)) + value


def make_dataset(
    sop_instance_uid: str,
    *,
    sop_class_uid: str = CT_IMAGE_STORAGE,
    study_uid: str = "1.2.826.0.1.3680043.2.1143.1",
    series_uid: str = "1.2.826.0.1.3680043.2.1143.1.1",
    payload: int = 4096,
    explicit: bool = True,
) -> bytes:
    """A small but well-formed data set; `payload` bytes of pixel-like data at its end."""
    filler = bytes(range(256)) * (payload // 256) + bytes(payload % 256)
    parts = [
        element(0x0008, 0x0016, b"UI", sop_class_uid.encode(), explicit=explicit),
        element(0x0008, 0x0018, b"UI", sop_instance_uid.encode(), explicit=explicit),
        element(0x0008, 0x0060, b"CS", b"OT", explicit=explicit),
        element(0x0010, 0x0010, b"PN", b"Hostile^Test", explicit=explicit),
        element(0x0010, 0x0020, b"LO", b"HOSTILE-1", explicit=explicit),
        element(0x0020, 0x000D, b"UI", study_uid.encode(), explicit=explicit),
        element(0x0020, 0x000E, b"UI", series_uid.encode(), explicit=explicit),
        element(0x7FE0, 0x0010, b"OB", filler, explicit=explicit),
    ]
    return b"".join(parts)


def file_meta_elements(sop_class_uid: str, sop_instance_uid: str, transfer_syntax: str) -> bytes:
    """Group 0002 elements as a sender would wrongly put them at the start of a data set."""
    body = b"".join(
        (
            element(0x0002, 0x0001, b"OB", b"\x00\x01"),
            element(0x0002, 0x0002, b"UI", sop_class_uid.encode()),
            element(0x0002, 0x0003, b"UI", sop_instance_uid.encode()),
            element(0x0002, 0x0010, b"UI", transfer_syntax.encode()),
        )
    )
    return element(0x0002, 0x0000, b"UL", struct.pack("<L", len(body))) + body


def deflate(data: bytes) -> bytes:
    """Raw deflate, as the Deflated Explicit VR Little Endian transfer syntax uses."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    return compressor.compress(data) + compressor.flush()


def split_part10(data: bytes) -> tuple[bytes, bytes]:
    """(preamble + DICM + file meta, data set) of a Part 10 file written by the server."""
    if len(data) < 144 or data[128:132] != b"DICM":
        raise ValueError("not a Part 10 file")
    group, elem, vr, _, group_length = struct.unpack_from("<HH2sHL", data, 132)
    if (group, elem, vr) != (0x0002, 0x0000, b"UL"):
        raise ValueError("file meta does not start with its group length")
    end = 132 + 12 + group_length
    return data[:end], data[end:]


# --------------------------------------------------------------------------------------------
# the client


def associate_rq(
    contexts: Contexts = DEFAULT_CONTEXTS,
    *,
    calling_ae: str = "RAW_SCU",
    called_ae: str = "STORE_SCP",
    max_pdu: int = CLIENT_MAX_PDU,
) -> P.AssociateRQ:
    return P.AssociateRQ(
        called_ae=called_ae,
        calling_ae=calling_ae,
        application_context=uids.APPLICATION_CONTEXT_NAME,
        presentation_contexts=[
            P.PresentationContextRQ(2 * i + 1, abstract, list(syntaxes))
            for i, (abstract, syntaxes) in enumerate(contexts)
        ],
        user_info=P.UserInformation(
            max_length=max_pdu,
            implementation_class_uid="1.2.826.0.1.3680043.10.543.1",
            implementation_version_name="RAWCLIENT",
        ),
    )


class RawClient:
    """One TCP (or TLS) connection to the server; every method is a blocking call."""

    def __init__(self, sock: socket.socket, *, timeout: float = 5.0) -> None:
        self.sock = sock
        self.sock.settimeout(timeout)
        self.timeout = timeout
        self.reader = P.PDUReader(CLIENT_MAX_PDU)
        self._pdus: deque[P.PDU] = deque()
        self.accept: P.AssociateAC | None = None
        self.server_max_pdu = 0
        self.contexts: dict[int, tuple[str, str]] = {}  # accepted: id -> (abstract, syntax)
        self._message_id = 0

    @classmethod
    def connect(
        cls,
        host: str,
        port: int,
        *,
        timeout: float = 5.0,
        source: str | None = None,
        tls: ssl.SSLContext | None = None,
        server_hostname: str | None = None,
    ) -> RawClient:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            if source is not None:
                sock.bind((source, 0))
            sock.connect((host, port))
            if tls is not None:
                sock = tls.wrap_socket(sock, server_hostname=server_hostname)
        except BaseException:
            sock.close()
            raise
        return cls(sock, timeout=timeout)

    def __enter__(self) -> RawClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def local_address(self) -> str:
        host, port = self.sock.getsockname()[:2]
        return f"{host}:{port}"

    def close(self, *, reset: bool = False) -> None:
        """Close the connection; `reset` sends a TCP RST instead of a FIN."""
        if reset:
            with contextlib.suppress(OSError):
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        with contextlib.suppress(OSError):
            self.sock.close()

    # --- bytes and PDUs ----------------------------------------------------------------------

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def send_pdu(self, pdu: P.PDU) -> None:
        self.send(P.encode(pdu))

    def read_pdu(self, timeout: float | None = None) -> P.PDU:
        """The next PDU from the server; PeerClosed if the connection ends first."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while not self._pdus:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no PDU from the server in time")
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(1 << 16)
            except (ConnectionResetError, BrokenPipeError):
                raise PeerClosed(reset=True) from None
            except ssl.SSLEOFError:
                raise PeerClosed() from None
            except TimeoutError:
                raise TimeoutError("no PDU from the server in time") from None
            if not data:
                raise PeerClosed()
            self._pdus.extend(self.reader.feed(data))
        return self._pdus.popleft()

    def wait_closed(self, timeout: float | None = None) -> list[P.PDU]:
        """Read until the server closes the connection; return the PDUs it sent meanwhile."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        seen: list[P.PDU] = []
        while True:
            try:
                seen.append(self.read_pdu(max(0.0, deadline - time.monotonic())))
            except PeerClosed:
                return seen

    # --- association -------------------------------------------------------------------------

    def associate(
        self,
        contexts: Contexts = DEFAULT_CONTEXTS,
        *,
        calling_ae: str = "RAW_SCU",
        called_ae: str = "STORE_SCP",
        max_pdu: int = CLIENT_MAX_PDU,
    ) -> P.AssociateAC | P.AssociateRJ:
        """Send an A-ASSOCIATE-RQ; return the server's AC or RJ (anything else is an error)."""
        rq = associate_rq(contexts, calling_ae=calling_ae, called_ae=called_ae, max_pdu=max_pdu)
        self.send_pdu(rq)
        answer = self.read_pdu()
        if isinstance(answer, P.AssociateAC):
            self.accept = answer
            self.server_max_pdu = answer.user_info.max_length or 0
            proposed = {pc.id: pc.abstract_syntax for pc in rq.presentation_contexts}
            self.contexts = {
                ac.id: (proposed[ac.id], ac.transfer_syntax)
                for ac in answer.presentation_contexts
                if ac.result == P.PCResult.ACCEPTANCE
            }
            return answer
        if isinstance(answer, P.AssociateRJ):
            return answer
        raise AssertionError(f"expected A-ASSOCIATE-AC or -RJ, got {answer!r}")

    def context_for(self, abstract_syntax: str, transfer_syntax: str | None = None) -> int:
        for ctx_id, (abstract, syntax) in self.contexts.items():
            if abstract == abstract_syntax and transfer_syntax in (None, syntax):
                return ctx_id
        raise KeyError(f"no accepted context for {abstract_syntax} {transfer_syntax or ''}")

    def release(self) -> None:
        """A-RELEASE-RQ, wait for the A-RELEASE-RP, then close."""
        self.send_pdu(P.ReleaseRQ())
        answer = self.read_pdu()
        if not isinstance(answer, P.ReleaseRP):
            raise AssertionError(f"expected A-RELEASE-RP, got {answer!r}")
        self.close()

    def abort(self) -> None:
        self.send_pdu(P.Abort(source=0, reason=0))

    # --- DIMSE -------------------------------------------------------------------------------

    def next_message_id(self) -> int:
        self._message_id = (self._message_id + 1) & 0xFFFF
        return self._message_id

    def _fragment_size(self, fragment_size: int | None) -> int:
        limit = (self.server_max_pdu or 16384) - _PDV_OVERHEAD
        return limit if fragment_size is None else min(fragment_size, limit)

    def send_fragments(
        self,
        ctx_id: int,
        data: bytes,
        *,
        is_command: bool,
        fragment_size: int | None = None,
        last: bool = True,
    ) -> None:
        """`data` as PDVs of at most `fragment_size` bytes, one P-DATA-TF each; the final
        fragment carries the last-fragment bit only when `last`."""
        size = self._fragment_size(fragment_size)
        chunks = [data[i : i + size] for i in range(0, len(data), size)] or [b""]
        for n, chunk in enumerate(chunks, 1):
            is_last = last and n == len(chunks)
            self.send(P.encode_pdata([P.PDV(ctx_id, is_command, is_last, chunk)]))

    def send_command(
        self, ctx_id: int, command: bytes, *, fragment_size: int | None = None
    ) -> None:
        self.send_fragments(ctx_id, command, is_command=True, fragment_size=fragment_size)

    def send_dataset(
        self,
        ctx_id: int,
        data: bytes,
        *,
        fragment_size: int | None = None,
        last: bool = True,
    ) -> None:
        self.send_fragments(ctx_id, data, is_command=False, fragment_size=fragment_size, last=last)

    def read_command(self, timeout: float | None = None) -> dimse.Command:
        """Collect command fragments up to the last one and decode them."""
        parts: list[bytes] = []
        while True:
            pdu = self.read_pdu(timeout)
            if not isinstance(pdu, P.PDataTF):
                raise AssertionError(f"expected a P-DATA-TF with a response, got {pdu!r}")
            for pdv in pdu.pdvs:
                if not pdv.is_command:
                    raise AssertionError("the server sent a data set fragment")
                parts.append(bytes(pdv.data))
                if pdv.is_last:
                    return dimse.decode_command(b"".join(parts))

    def c_echo(self, ctx_id: int | None = None) -> int:
        ctx = self.context_for(VERIFICATION) if ctx_id is None else ctx_id
        self.send_command(ctx, dimse.c_echo_rq(self.next_message_id()))
        return int(self.read_command().get(dimse.STATUS, -1))

    def c_store(
        self,
        dataset: bytes,
        *,
        sop_instance_uid: str,
        sop_class_uid: str = CT_IMAGE_STORAGE,
        ctx_id: int | None = None,
        command_fragment: int | None = None,
        fragment_size: int | None = None,
        timeout: float | None = None,
    ) -> dimse.Command:
        """A complete C-STORE; returns the C-STORE-RSP command."""
        ctx = self.context_for(sop_class_uid) if ctx_id is None else ctx_id
        self.start_store(ctx, sop_class_uid, sop_instance_uid, command_fragment=command_fragment)
        self.send_dataset(ctx, dataset, fragment_size=fragment_size)
        return self.read_command(timeout)

    def start_store(
        self,
        ctx_id: int,
        sop_class_uid: str,
        sop_instance_uid: str,
        *,
        command_fragment: int | None = None,
    ) -> int:
        """Send only the C-STORE-RQ command set; returns its message id."""
        message_id = self.next_message_id()
        command = dimse.c_store_rq(message_id, sop_class_uid, sop_instance_uid)
        self.send_command(ctx_id, command, fragment_size=command_fragment)
        return message_id


def status_of(command: dimse.Command) -> int:
    return int(command.get(dimse.STATUS, -1))


def open_many(host: str, port: int, count: int, *, timeout: float = 5.0) -> list[RawClient]:
    """`count` idle TCP connections (no PDU sent)."""
    clients: list[RawClient] = []
    try:
        for _ in range(count):
            clients.append(RawClient.connect(host, port, timeout=timeout))
    except BaseException:
        close_all(clients)
        raise
    return clients


def close_all(clients: Iterable[RawClient]) -> None:
    for client in clients:
        client.close()
