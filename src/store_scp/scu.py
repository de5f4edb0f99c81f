"""A blocking DICOM requestor (SCU) for C-ECHO and C-STORE, driven over store-scp's own
sans-IO protocol core (`dicom/association.py`, `dicom/pdu.py`, `dicom/dimse.py`).

One `Requestor` is one association over one plain socket (optionally wrapped in TLS). It never
transcodes: a dataset is sent only on an accepted presentation context whose transfer syntax is
the dataset's own, and its bytes go on the wire exactly as given. Large datasets are streamed
from their file in chunks of the negotiated PDU size, so memory stays bounded whatever the
object size.

`send_files` sends many Part 10 files: one presentation context per (SOP class, transfer
syntax) pair found in the files, at most 128 per association, further associations when more
pairs are needed.
"""

from __future__ import annotations

import contextlib
import os
import socket
import ssl
import struct
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, NamedTuple, Protocol

import pydicom
from pydicom.filereader import read_file_meta_info

from store_scp.dicom import association as A
from store_scp.dicom import dimse, uids
from store_scp.dicom import pdu as P

__all__ = [
    "DEFAULT_MAX_PDU",
    "LOCAL_FAILURE",
    "MAX_CONTEXTS",
    "AcceptedContext",
    "AssociationAbortedError",
    "AssociationRejectedError",
    "ConnectError",
    "DatasetReadError",
    "FileOutcome",
    "FileToSend",
    "InvalidPart10Error",
    "NotPart10Error",
    "Part10Info",
    "Requestor",
    "SCUError",
    "SCUTimeoutError",
    "ScanResult",
    "StoreResult",
    "is_deflated",
    "plan_associations",
    "read_part10",
    "scan_paths",
    "send_files",
    "status_text",
]

#: Largest P-DATA-TF PDU we announce we accept, and the cap on those we send.
DEFAULT_MAX_PDU = 1 << 20
#: PS3.8: presentation context IDs are odd numbers 1-255, so at most 128 per association.
MAX_CONTEXTS = 128
#: Status of a `StoreResult` for a dataset that was not sent at all (no DICOM status exists).
LOCAL_FAILURE = -1
#: Media Storage Directory Storage (DICOMDIR): a media object, never sent by C-STORE.
MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"

_RECV_SIZE = 256 * 1024
# PDU header (type, reserved, length) + PDV header (length, context ID, control header).
_DATA_HEADER = struct.Struct(">BxLLBB")
_TCP_QUICKACK: int | None = getattr(socket, "TCP_QUICKACK", None)
_PDV_OVERHEAD = 6  # PDV length field + context ID + control header, counted in the PDU length

# ---------------------------------------------------------------------------------------------
# Errors


class SCUError(Exception):
    """Base of every error this module raises."""


class ConnectError(SCUError):
    """The TCP connection or the TLS handshake could not be established."""


_RJ_RESULT = {1: "rejected-permanent", 2: "rejected-transient"}
_RJ_SOURCE = {
    1: "service-user",
    2: "service-provider (ACSE)",
    3: "service-provider (presentation)",
}
_RJ_REASON = {
    (1, 1): "no reason given",
    (1, 2): "application context name not supported",
    (1, 3): "calling AE title not recognized",
    (1, 7): "called AE title not recognized",
    (2, 1): "no reason given",
    (2, 2): "protocol version not supported",
    (3, 1): "temporary congestion",
    (3, 2): "local limit exceeded",
}
_ABORT_SOURCE = {0: "service-user", 1: "reserved", 2: "service-provider"}
_ABORT_REASON = {
    0: "reason not specified",
    1: "unrecognized PDU",
    2: "unexpected PDU",
    4: "unrecognized PDU parameter",
    5: "unexpected PDU parameter",
    6: "invalid PDU parameter value",
}


class AssociationRejectedError(SCUError):
    """The peer answered A-ASSOCIATE-RJ (PS3.8 Table 9-21)."""

    def __init__(self, result: int, source: int, reason: int) -> None:
        self.result = result
        self.source = source
        self.reason = reason
        text = _RJ_REASON.get((source, reason), "reason not specified")
        super().__init__(
            f"association rejected ({_RJ_RESULT.get(result, f'result {result}')}, "
            f"{_RJ_SOURCE.get(source, f'source {source}')}: {text}) "
            f"[result {result}, source {source}, reason {reason}]"
        )


class AssociationAbortedError(SCUError):
    """The association ended without a release: A-ABORT from the peer, a protocol error, a lost
    connection, or a local abort after a timeout."""

    def __init__(self, source: int, reason: int, detail: str = "", *, by_peer: bool = False):
        self.source = source
        self.reason = reason
        self.detail = detail
        self.by_peer = by_peer
        if by_peer:
            text = (
                f"association aborted by the peer ({_ABORT_SOURCE.get(source, source)}: "
                f"{_ABORT_REASON.get(reason, f'reason {reason}')})"
            )
        else:
            text = "association aborted"
        super().__init__(f"{text}: {detail}" if detail else text)


class SCUTimeoutError(AssociationAbortedError):
    """Nothing arrived from the peer within the timeout; we aborted the association."""

    def __init__(self, waiting_for: str, timeout: float | None) -> None:
        super().__init__(
            0, 0, f"no {waiting_for} within {timeout:g} s" if timeout else f"no {waiting_for}"
        )


class DatasetReadError(SCUError):
    """Reading the dataset to send failed midway; the association had to be aborted."""


class NotPart10Error(SCUError):
    """The file is not DICOM Part 10 (no 128-byte preamble followed by 'DICM')."""


class InvalidPart10Error(SCUError):
    """The file starts like DICOM Part 10 but its file meta cannot be used to send it."""


# ---------------------------------------------------------------------------------------------
# Status codes

_STATUS_TEXT = {
    0x0000: "Success",
    0x0001: "Warning: requested optional attributes not supported",
    0x0107: "Warning: attribute list error",
    0x0116: "Warning: attribute value out of range",
    0xB000: "Warning: coercion of data elements",
    0xB006: "Warning: elements discarded",
    0xB007: "Warning: data set does not match SOP class",
    0x0110: "Failure: processing failure",
    0x0117: "Failure: invalid object instance",
    0x0122: "Refused: SOP class not supported",
    0x0124: "Refused: not authorized",
    0x0210: "Failure: duplicate invocation",
    0x0211: "Failure: unrecognized operation",
    0x0212: "Failure: mistyped argument",
    0x0213: "Failure: resource limitation",
    0xC002: "Error: cannot understand (file meta in data set)",
}


def status_text(status: int) -> str:
    """A short description of a DIMSE status, e.g. 'Refused: out of resources (0xA700)'."""
    if status == LOCAL_FAILURE:
        return "not sent"
    text = _STATUS_TEXT.get(status)
    if text is None:
        high = status & 0xFF00
        if high == 0xA700:
            text = "Refused: out of resources"
        elif high in (0xA900, 0xA800):
            text = "Error: data set does not match SOP class"
        elif status & 0xF000 == 0xC000:
            text = "Error: cannot understand"
        else:
            text = dimse.status_category(status).capitalize()
    return f"{text} (0x{status:04X})"


def is_deflated(transfer_syntax: str) -> bool:
    """True for a transfer syntax whose whole data set stream is deflated (PS3.5 A.5)."""
    syntax = uids.TRANSFER_SYNTAXES.get(transfer_syntax)
    if syntax is not None:
        return syntax.deflated
    return transfer_syntax == uids.DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN


def _status_ok(status: int) -> bool:
    return status >= 0 and dimse.status_category(status) in ("success", "warning")


class StoreResult(NamedTuple):
    """Outcome of one C-STORE: the peer's status and Error Comment, or `LOCAL_FAILURE` and the
    reason the dataset was not sent."""

    status: int
    error_comment: str = ""

    @property
    def ok(self) -> bool:
        """Success or warning: the peer took the object."""
        return _status_ok(self.status)


@dataclass(frozen=True, slots=True)
class AcceptedContext:
    id: int
    abstract_syntax: str
    transfer_syntax: str


# ---------------------------------------------------------------------------------------------
# Dataset sources: anything we can `readinto`


class _Readable(Protocol):
    def readinto(self, buffer: memoryview, /) -> int | None: ...


class _ChunkReader:
    """`readinto` over an iterable of byte chunks of any sizes."""

    def __init__(self, chunks: Iterable[bytes | bytearray | memoryview]) -> None:
        self._it = iter(chunks)
        self._cur = memoryview(b"")

    def readinto(self, buffer: memoryview, /) -> int:
        while not self._cur:
            nxt = next(self._it, None)
            if nxt is None:
                return 0
            self._cur = memoryview(nxt).cast("B")
        n = min(len(buffer), len(self._cur))
        buffer[:n] = self._cur[:n]
        self._cur = self._cur[n:]
        return n


class _BytesReader:
    """`readinto` over a bytes-like object, without copying it first."""

    def __init__(self, data: bytes | bytearray | memoryview) -> None:
        self._view = memoryview(data).cast("B")
        self._pos = 0

    def readinto(self, buffer: memoryview, /) -> int:
        n = min(len(buffer), len(self._view) - self._pos)
        buffer[:n] = self._view[self._pos : self._pos + n]
        self._pos += n
        return n


DatasetSource = bytes | bytearray | memoryview | BinaryIO | Iterable[bytes]


def _as_reader(source: DatasetSource) -> _Readable:
    if isinstance(source, bytes | bytearray | memoryview):
        return _BytesReader(source)
    readinto = getattr(source, "readinto", None)
    if readinto is not None:
        return source  # type: ignore[return-value]
    read = getattr(source, "read", None)
    if read is not None:
        return _ChunkReader(iter(lambda: read(_RECV_SIZE), b""))
    return _ChunkReader(source)  # type: ignore[arg-type]


def _fill(reader: _Readable, buffer: memoryview) -> int:
    """Fill `buffer` unless the source ends first; return the number of bytes read."""
    got = 0
    while got < len(buffer):
        n = reader.readinto(buffer[got:])
        if not n:  # 0 at the end; None would mean a non-blocking source with nothing ready
            if n is None:
                raise OSError("dataset source returned no data (non-blocking source?)")
            break
        got += n
    return got


# ---------------------------------------------------------------------------------------------
# The requestor


def _check_ae(title: str, what: str) -> str:
    if not 0 < len(title.strip()) <= 16 or len(title) > 16:
        raise ValueError(f"{what} must be 1 to 16 characters, got {title!r}")
    if not title.isascii() or "\\" in title or any(ord(c) < 0x20 for c in title):
        raise ValueError(f"{what} must be printable ASCII without backslash, got {title!r}")
    return title


def _format_peer(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class Requestor:
    """One association as requestor, blocking. Not thread-safe; one association per instance.

    ```
    with Requestor() as scu:
        scu.connect("127.0.0.1", 11112, "STORE_SCU", "STORE_SCP", [(VERIFICATION, [IMPLICIT])])
        status = scu.echo()
    ```
    Leaving the `with` block releases the association, or aborts it on an exception.
    """

    def __init__(self) -> None:
        self._sock: socket.socket | None = None
        self._assoc: A.Association | None = None
        self._events: deque[A.Event] = deque()
        self._message_id = 0
        self._timeout: float | None = None
        self.peer = ""
        self.established = False
        self.accept: P.AssociateAC | None = None
        #: Context ID -> (abstract syntax, proposed transfer syntaxes).
        self.proposed: dict[int, tuple[str, list[str]]] = {}
        #: Context ID -> result (PS3.8 Table 9-18) for every proposed context the peer answered.
        self.results: dict[int, int] = {}
        self.accepted: list[AcceptedContext] = []
        #: The peer's maximum P-DATA-TF length (0: unlimited) and the one we send with.
        self.peer_max_pdu = 0
        self.send_max_pdu = DEFAULT_MAX_PDU

    def __enter__(self) -> Requestor:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            self.release()
        else:
            self.abort()

    # --- establishment -----------------------------------------------------------------------

    def connect(
        self,
        host: str,
        port: int,
        calling_ae: str,
        called_ae: str,
        contexts: Sequence[tuple[str, Sequence[str]]],
        *,
        max_pdu: int = DEFAULT_MAX_PDU,
        timeout: float | None = 30.0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> Requestor:
        """Open the connection and negotiate the association; return self.

        `contexts` lists (abstract syntax, transfer syntaxes) in the order of their presentation
        context IDs 1, 3, 5, ... `max_pdu` is the largest P-DATA-TF we accept (announced to the
        peer) and also caps those we send. `timeout` bounds the connect, the TLS handshake and
        every wait for the peer. Raises `ConnectError`, `AssociationRejectedError` or
        `AssociationAbortedError`.
        """
        if self._assoc is not None:
            raise SCUError("a Requestor carries one association; use a new one")
        _check_ae(calling_ae, "calling AE title")
        _check_ae(called_ae, "called AE title")
        if not contexts:
            raise ValueError("at least one presentation context is needed")
        if len(contexts) > MAX_CONTEXTS:
            raise ValueError(f"at most {MAX_CONTEXTS} presentation contexts per association")
        if max_pdu < 64:
            raise ValueError(f"maximum PDU length {max_pdu} is too small")
        self.proposed = {
            2 * i + 1: (abstract, list(syntaxes)) for i, (abstract, syntaxes) in enumerate(contexts)
        }
        request = P.AssociateRQ(
            called_ae=called_ae,
            calling_ae=calling_ae,
            application_context=uids.APPLICATION_CONTEXT_NAME,
            presentation_contexts=[
                P.PresentationContextRQ(cid, abstract, syntaxes)
                for cid, (abstract, syntaxes) in self.proposed.items()
            ],
            user_info=P.UserInformation(
                max_length=max_pdu,
                implementation_class_uid=uids.IMPLEMENTATION_CLASS_UID,
                implementation_version_name=uids.IMPLEMENTATION_VERSION_NAME,
            ),
        )
        self.peer = _format_peer(host, port)
        self._timeout = timeout
        assoc = A.Association(A.Role.REQUESTOR, max_pdata_length=max_pdu)
        assoc.send_request(request)
        try:
            raw = socket.create_connection((host, port), timeout=timeout)
        except OSError as exc:
            raise ConnectError(f"cannot connect to {self.peer}: {exc.strerror or exc}") from exc
        try:
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock: socket.socket = raw
            if ssl_context is not None:
                sock = ssl_context.wrap_socket(raw, server_hostname=host)
        except (OSError, ssl.SSLError) as exc:
            raw.close()
            raise ConnectError(f"TLS handshake with {self.peer} failed: {exc}") from exc
        self._sock = sock
        self._assoc = assoc
        assoc.connection_made()
        self._flush()
        while True:
            event = self._next_event("A-ASSOCIATE response")
            if isinstance(event, A.AssociationAccepted):
                self._accepted(event.accept, max_pdu)
                return self
            if isinstance(event, A.AssociationRejected):
                self._close()
                rj = event.reject
                raise AssociationRejectedError(rj.result, rj.source, rj.reason)
            if isinstance(event, A.Aborted):
                self._close()
                raise _aborted(event)

    def _accepted(self, ac: P.AssociateAC, max_pdu: int) -> None:
        self.accept = ac
        self.established = True
        self.results = {}
        self.accepted = []
        for pc in ac.presentation_contexts:
            proposed = self.proposed.get(pc.id)
            if proposed is None:
                continue  # an ID we never proposed: ignore it
            self.results[pc.id] = pc.result
            if pc.result == P.PCResult.ACCEPTANCE:
                self.accepted.append(AcceptedContext(pc.id, proposed[0], pc.transfer_syntax))
        peer = ac.user_info.max_length or 0
        self.peer_max_pdu = peer
        self.send_max_pdu = min(peer, max_pdu) if peer > 0 else max_pdu

    # --- services ----------------------------------------------------------------------------

    def find_context(self, abstract_syntax: str, transfer_syntax: str) -> AcceptedContext | None:
        """The accepted context for this abstract syntax with exactly this transfer syntax."""
        for ctx in self.accepted:
            if ctx.abstract_syntax == abstract_syntax and ctx.transfer_syntax == transfer_syntax:
                return ctx
        return None

    def _no_context_reason(self, abstract_syntax: str, transfer_syntax: str) -> str:
        answers = []
        for cid, (abstract, syntaxes) in self.proposed.items():
            if abstract != abstract_syntax:
                continue
            result = self.results.get(cid)
            if result == P.PCResult.ACCEPTANCE:
                accepted = next(c.transfer_syntax for c in self.accepted if c.id == cid)
                answers.append(f"context {cid} accepted with {accepted}")
            elif result is None:
                answers.append(f"context {cid} not answered")
            else:
                answers.append(f"context {cid} {_pc_result_text(result)}")
            if transfer_syntax not in syntaxes:
                answers[-1] += f" (proposed {', '.join(syntaxes)})"
        what = f"SOP class {abstract_syntax} in transfer syntax {transfer_syntax}"
        if not answers:
            return f"no presentation context was proposed for {what}"
        return f"the peer accepted no presentation context for {what}: {'; '.join(answers)}"

    def echo(self) -> int:
        """C-ECHO; return the response status."""
        ctx = next(
            (c for c in self.accepted if c.abstract_syntax == uids.VERIFICATION_SOP_CLASS), None
        )
        if ctx is None:
            raise SCUError(f"{self.peer} did not accept the Verification SOP Class")
        assoc = self._established()
        msg_id = self._next_message_id()
        assoc.send_pdata(P.fragment(ctx.id, dimse.c_echo_rq(msg_id), True, self.send_max_pdu))
        self._flush()
        rsp = self._wait_response(msg_id, dimse.C_ECHO_RSP, "C-ECHO response")
        status = rsp.get(dimse.STATUS)
        if status is None:
            raise SCUError(f"C-ECHO response from {self.peer} has no Status")
        return int(status)

    def store(
        self,
        sop_class_uid: str,
        sop_instance_uid: str,
        transfer_syntax: str,
        dataset: DatasetSource,
        *,
        priority: int = 0,
    ) -> StoreResult:
        """C-STORE one dataset, encoded in `transfer_syntax`, exactly as given.

        `dataset` is bytes, a binary file positioned at the start of the dataset (read to its
        end), or an iterable of byte chunks. It is streamed in PDU-sized chunks. The one change
        ever made: a deflated data set of odd length gets the single trailing NUL byte that
        PS3.5 A.5 requires (files written without it exist). Without an
        accepted context for (SOP class, transfer syntax) nothing is sent and the result has
        status `LOCAL_FAILURE` and the reason. If reading the source fails midway the
        association is aborted and `DatasetReadError` raised.
        """
        ctx = self.find_context(sop_class_uid, transfer_syntax)
        if ctx is None:
            return StoreResult(
                LOCAL_FAILURE, self._no_context_reason(sop_class_uid, transfer_syntax)
            )
        self._established()
        msg_id = self._next_message_id()
        command = dimse.c_store_rq(msg_id, sop_class_uid, sop_instance_uid, priority)
        self._send_dataset(
            ctx.id,
            list(P.fragment(ctx.id, command, True, self.send_max_pdu)),
            dataset,
            pad_odd=is_deflated(transfer_syntax),
        )
        rsp = self._wait_response(msg_id, dimse.C_STORE_RSP, "C-STORE response")
        status = rsp.get(dimse.STATUS)
        comment = rsp.get(dimse.ERROR_COMMENT) or ""
        if status is None:
            return StoreResult(LOCAL_FAILURE, "C-STORE response without a Status")
        if isinstance(comment, bytes):
            comment = comment.decode("latin-1", "replace")
        return StoreResult(int(status), str(comment).strip())

    def _send_dataset(
        self,
        context_id: int,
        command_pdus: list[bytes],
        source: DatasetSource,
        pad_odd: bool,
    ) -> None:
        """Send the command PDUs, then the dataset as P-DATA-TF PDUs of at most the peer's
        maximum, each read straight into a buffer behind its headers (no per-chunk copies).
        Two buffers alternate so that one chunk of look-ahead tells which PDV is the last.

        Every PDV but the last holds an even number of bytes (PS3.8 Annex E); with `pad_odd`
        an odd total gets one trailing NUL byte (PS3.5 A.5, deflated data sets)."""
        chunk = (self.send_max_pdu - _PDV_OVERHEAD) & ~1
        if chunk <= 0:
            raise SCUError(f"peer maximum PDU length {self.send_max_pdu} is too small")
        reader = _as_reader(source)
        head = _DATA_HEADER.size
        views = [memoryview(bytearray(head + chunk)), memoryview(bytearray(head + chunk))]
        pending: list[bytes] | None = command_pdus  # sent together with the first data PDU
        try:
            i = 0
            n = _fill(reader, views[0][head:])
            while True:
                view = views[i]
                if n < chunk:
                    last, n_next = True, 0
                    if pad_odd and n % 2:  # every earlier chunk was full, hence even
                        view[head + n] = 0
                        n += 1
                else:
                    n_next = _fill(reader, views[1 - i][head:])
                    last = n_next == 0
                _DATA_HEADER.pack_into(
                    view, 0, P.P_DATA_TF, n + _PDV_OVERHEAD, n + 2, context_id, 2 if last else 0
                )
                if pending is not None:
                    self._send_pdata(b"".join([*pending, view[: head + n]]))
                    pending = None
                else:
                    self._send_pdata(view[: head + n])
                if last:
                    return
                i, n = 1 - i, n_next
        except OSError as exc:  # only reads raise OSError here: _sendall raises SCUError
            self.abort()
            raise DatasetReadError(f"reading the dataset failed: {exc}") from exc

    def _send_pdata(self, data: bytes | memoryview) -> None:
        """Write encoded P-DATA-TF PDUs; the state machine checks that P-DATA is allowed."""
        assoc = self._established()
        assoc.send_pdata([])  # the P-DATA request primitive, written below without a copy
        self._flush()
        self._sendall(data)

    def release(self) -> None:
        """A-RELEASE and close. A no-op when no association is established."""
        assoc = self._assoc
        if assoc is None or not self.established:
            self._close()
            return
        try:
            assoc.send_release_request()
            self._flush()
            while True:
                event = self._next_event("A-RELEASE response")
                if isinstance(event, A.ReleaseConfirmed):
                    return
                if isinstance(event, A.ReleaseRequested):  # release collision
                    assoc.send_release_response()
                    self._flush()
                elif isinstance(event, A.Aborted):
                    raise _aborted(event)
                # Late P-DATA (A-R-6) is dropped: we have no request outstanding.
        finally:
            self._close()

    def abort(self) -> None:
        """A-ABORT (if established) and close; never raises."""
        assoc = self._assoc
        if assoc is not None and self._sock is not None:
            try:
                self._sock.settimeout(2.0)  # do not wait long for a peer that stopped reading
                assoc.send_abort()
                data = assoc.data_to_send()
                if data:
                    self._sock.sendall(data)
            except (OSError, A.LocalError):
                pass
        self._close()

    # --- plumbing ----------------------------------------------------------------------------

    def _established(self) -> A.Association:
        if self._assoc is None or not self.established or self._sock is None:
            raise SCUError("no association is established")
        return self._assoc

    def _next_message_id(self) -> int:
        self._message_id = self._message_id % 0xFFFF + 1
        return self._message_id

    def _close(self) -> None:
        self.established = False
        sock, self._sock = self._sock, None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.close()

    def _sendall(self, data: bytes | memoryview) -> None:
        assert self._sock is not None
        try:
            self._sock.sendall(data)
        except TimeoutError:
            self.abort()
            raise SCUTimeoutError("progress while sending", self._timeout) from None
        except OSError as exc:
            # The peer may have aborted: pick up its A-ABORT if it reached us.
            why = self._drain_after_send_error()
            self._close()
            if why is not None:
                raise why from exc
            raise AssociationAbortedError(2, 0, f"connection lost while sending: {exc}") from exc

    def _drain_after_send_error(self) -> AssociationAbortedError | None:
        sock, assoc = self._sock, self._assoc
        if sock is None or assoc is None:
            return None
        try:
            sock.settimeout(0.2)
            while assoc.state is not A.State.STA1:
                data = sock.recv(_RECV_SIZE)
                for event in assoc.receive_data(data):
                    if isinstance(event, A.Aborted) and event.by_peer:
                        return _aborted(event)
                if not data:
                    break
        except (OSError, A.LocalError):
            pass
        return None

    def _flush(self) -> None:
        if self._assoc is None:
            return
        data = self._assoc.data_to_send()
        if data and self._sock is not None:
            self._sendall(data)

    def _next_event(self, waiting_for: str) -> A.Event:
        """The next event from the peer, reading the socket as needed."""
        while not self._events:
            assoc, sock = self._assoc, self._sock
            if assoc is None or sock is None or assoc.state is A.State.STA1:
                self._close()
                raise AssociationAbortedError(2, 0, f"connection closed before the {waiting_for}")
            try:
                _quickack(sock)
                data = sock.recv(_RECV_SIZE)
            except TimeoutError:
                self.abort()
                raise SCUTimeoutError(waiting_for, self._timeout) from None
            except OSError as exc:
                data = b""  # a reset is a closed transport (Evt17)
                detail = f"connection lost while waiting for the {waiting_for}: {exc}"
            else:
                detail = ""
            events = assoc.receive_data(data)
            with contextlib.suppress(SCUError):  # the events below tell what happened
                self._flush()  # e.g. the A-ABORT answering a protocol error
            if detail:
                events = [
                    A.Aborted(e.source, e.reason, e.by_peer, detail)
                    if isinstance(e, A.Aborted) and not e.by_peer
                    else e
                    for e in events
                ]
            self._events.extend(events)
            if assoc.should_close:
                self._close()
        return self._events.popleft()

    def _wait_response(self, message_id: int, command_field: int, what: str) -> dimse.Command:
        command = bytearray()
        while True:
            event = self._next_event(what)
            if isinstance(event, A.DataReceived):
                for pdv in event.pdvs:
                    if not pdv.is_command:
                        continue  # no response we wait for carries a dataset
                    command += pdv.data
                    if len(command) > dimse.MAX_COMMAND_LENGTH:
                        self.abort()
                        raise AssociationAbortedError(0, 0, f"oversized {what} command set")
                    if not pdv.is_last:
                        continue
                    try:
                        rsp = dimse.decode_command(bytes(command))
                    except dimse.DimseError as exc:
                        self.abort()
                        raise AssociationAbortedError(0, 0, f"undecodable {what}: {exc}") from None
                    command.clear()
                    responded_to = rsp.get(dimse.MESSAGE_ID_BEING_RESPONDED_TO)
                    if rsp.command_field == command_field and responded_to == message_id:
                        return rsp
                    # Anything else (a stray response, an unsolicited request) is not ours.
            elif isinstance(event, A.Aborted):
                self._close()
                raise _aborted(event)
            elif isinstance(event, A.ReleaseRequested):
                assert self._assoc is not None
                self._assoc.send_release_response()
                self._flush()
                self._close()
                raise AssociationAbortedError(
                    2, 0, f"the peer released the association before the {what}"
                )


def _quickack(sock: socket.socket) -> None:
    """Linux: ACK at once rather than after the delayed-ACK timer. A peer that leaves Nagle on
    writes a PDU in two parts and holds the second until the first is acknowledged: without
    this, every response of such a peer (DCMTK as shipped) would wait about 40 ms. The flag
    is not sticky, hence set before every receive."""
    if _TCP_QUICKACK is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, _TCP_QUICKACK, 1)


def _aborted(event: A.Aborted) -> AssociationAbortedError:
    return AssociationAbortedError(event.source, event.reason, event.detail, by_peer=event.by_peer)


def _pc_result_text(result: int) -> str:
    return {
        1: "rejected by the user",
        2: "rejected (no reason)",
        3: "rejected: abstract syntax not supported",
        4: "rejected: transfer syntax not supported",
    }.get(result, f"rejected (result {result})")


# ---------------------------------------------------------------------------------------------
# Part 10 files


class Part10Info(NamedTuple):
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str
    dataset_offset: int


_LONG_VRS = frozenset(
    (b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV")
)


def _file_meta_end(fp: BinaryIO, size: int) -> int:
    """Offset of the first byte after the file meta (group 0002), read from position 132.

    Elements of group 0002 are walked (explicit VR little endian; an implicit VR meta, as some
    old writers made, is recognized). When a File Meta Information Group Length is present
    and ends exactly on one of the walked element boundaries, it wins: group 0002 elements a
    dataset wrongly carries after it are then sent as part of the dataset, as in the file.
    """
    pos = 132
    boundaries = {pos}
    group_length_end: int | None = None
    while pos + 8 <= size:
        fp.seek(pos)
        head = fp.read(8)
        group, elem = struct.unpack_from("<HH", head)
        if group != 0x0002:
            break
        vr = head[4:6]
        if vr in _LONG_VRS:
            ext = fp.read(4)
            if len(ext) < 4:
                raise InvalidPart10Error("truncated file meta element")
            (length,) = struct.unpack("<L", ext)
            header = 12
        elif vr.isalpha() and vr.isupper():
            (length,) = struct.unpack_from("<H", head, 6)
            header = 8
        else:  # implicit VR
            (length,) = struct.unpack_from("<L", head, 4)
            header = 8
        if length == 0xFFFFFFFF:
            raise InvalidPart10Error(f"undefined length in file meta element (0002,{elem:04X})")
        if pos + header + length > size:
            raise InvalidPart10Error(f"file meta element (0002,{elem:04X}) overruns the file")
        if elem == 0x0000 and length == 4:
            fp.seek(pos + header)
            (value,) = struct.unpack("<L", fp.read(4))
            group_length_end = pos + header + value
        pos += header + length
        boundaries.add(pos)
    if group_length_end is not None and group_length_end in boundaries:
        return group_length_end
    return pos


def _uid_value(value: object) -> str:
    if value is None:
        return ""
    return str(value).strip(" \x00")


def read_part10(path: str | os.PathLike[str]) -> Part10Info:
    """SOP Class, SOP Instance, Transfer Syntax UIDs and the dataset's offset in a Part 10 file.

    The UIDs come from the file meta (read with pydicom); when the file meta lacks the SOP
    class or instance, the dataset's own (0008,0016)/(0008,0018) are used. A file without a
    Transfer Syntax UID is refused: its encoding would be a guess. Raises `NotPart10Error`
    (no preamble + 'DICM'), `InvalidPart10Error` or `OSError`; their messages do not repeat
    the path.
    """
    with open(path, "rb") as fp:
        size = os.fstat(fp.fileno()).st_size
        head = fp.read(132)
        if len(head) < 132 or head[128:132] != b"DICM":
            raise NotPart10Error("not a DICOM Part 10 file (no preamble and DICM prefix)")
        offset = _file_meta_end(fp, size)
    try:
        meta = read_file_meta_info(path)
        transfer_syntax = _uid_value(meta.get("TransferSyntaxUID"))
        sop_class = _uid_value(meta.get("MediaStorageSOPClassUID"))
        sop_instance = _uid_value(meta.get("MediaStorageSOPInstanceUID"))
    except Exception as exc:  # pydicom raises many types on damaged data
        raise InvalidPart10Error(f"unreadable file meta: {exc}") from exc
    if not transfer_syntax:
        raise InvalidPart10Error("the file meta has no Transfer Syntax UID")
    if offset >= size:
        raise InvalidPart10Error("no data set after the file meta")
    if not sop_class or not sop_instance:
        try:
            ds = pydicom.dcmread(
                path, stop_before_pixels=True, specific_tags=["SOPClassUID", "SOPInstanceUID"]
            )
        except Exception as exc:  # pydicom raises many types on damaged data
            raise InvalidPart10Error(f"unreadable data set: {exc}") from exc
        sop_class = sop_class or _uid_value(ds.get("SOPClassUID"))
        sop_instance = sop_instance or _uid_value(ds.get("SOPInstanceUID"))
    if not sop_class or not sop_instance:
        raise InvalidPart10Error("no SOP Class UID or SOP Instance UID")
    return Part10Info(sop_class, sop_instance, transfer_syntax, offset)


# ---------------------------------------------------------------------------------------------
# Sending many files


@dataclass(frozen=True, slots=True)
class FileToSend:
    path: Path
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str
    dataset_offset: int
    dataset_size: int

    @classmethod
    def from_path(cls, path: str | os.PathLike[str]) -> FileToSend:
        info = read_part10(path)
        size = os.stat(path).st_size - info.dataset_offset
        return cls(Path(path), *info, dataset_size=size)

    @property
    def pair(self) -> tuple[str, str]:
        return (self.sop_class_uid, self.transfer_syntax_uid)


@dataclass(frozen=True, slots=True)
class FileOutcome:
    file: FileToSend
    status: int  # the peer's status, or LOCAL_FAILURE when nothing was stored
    error: str = ""

    @property
    def ok(self) -> bool:
        return _status_ok(self.status)


def plan_associations(
    files: Sequence[FileToSend], max_contexts: int = MAX_CONTEXTS
) -> list[tuple[list[tuple[str, list[str]]], list[FileToSend]]]:
    """Group files by association: each gets at most `max_contexts` (SOP class, transfer
    syntax) pairs, one presentation context each proposing only that syntax."""
    pairs: dict[tuple[str, str], int] = {}
    for f in files:
        pairs.setdefault(f.pair, len(pairs) // max_contexts)
    groups: list[tuple[list[tuple[str, list[str]]], list[FileToSend]]] = [
        ([], []) for _ in range((len(pairs) + max_contexts - 1) // max_contexts)
    ]
    for (sop_class, syntax), index in pairs.items():
        groups[index][0].append((sop_class, [syntax]))
    for f in files:
        groups[pairs[f.pair]][1].append(f)
    return groups


def send_files(
    host: str,
    port: int,
    files: Sequence[FileToSend],
    *,
    calling_ae: str,
    called_ae: str,
    max_pdu: int = DEFAULT_MAX_PDU,
    timeout: float | None = 30.0,
    ssl_context: ssl.SSLContext | None = None,
    on_outcome: Callable[[FileOutcome], None] | None = None,
) -> list[FileOutcome]:
    """C-STORE every file, each in its own transfer syntax, over as few associations as the
    128-context limit allows. A file lost to an aborted association fails and a new association
    carries on with the rest; a refused connection or a rejection fails the files it was for."""
    outcomes: list[FileOutcome] = []

    def record(outcome: FileOutcome) -> None:
        outcomes.append(outcome)
        if on_outcome is not None:
            on_outcome(outcome)

    for contexts, group in plan_associations(files):
        pending = deque(group)
        while pending:
            scu = Requestor()
            try:
                scu.connect(
                    host,
                    port,
                    calling_ae,
                    called_ae,
                    contexts,
                    max_pdu=max_pdu,
                    timeout=timeout,
                    ssl_context=ssl_context,
                )
            except SCUError as exc:
                while pending:
                    record(FileOutcome(pending.popleft(), LOCAL_FAILURE, str(exc)))
                break
            try:
                while pending:
                    f = pending[0]
                    if f.dataset_size % 2 and not is_deflated(f.transfer_syntax_uid):
                        reason = (
                            f"the data set has an odd length ({f.dataset_size} bytes): not valid "
                            "DICOM (PS3.5 7.1.1), strict peers abort on it (PS3.8 Annex E)"
                        )
                        record(FileOutcome(pending.popleft(), LOCAL_FAILURE, reason))
                        continue
                    try:
                        fp = open(f.path, "rb", buffering=0)  # noqa: SIM115 (closed below)
                    except OSError as exc:
                        record(FileOutcome(pending.popleft(), LOCAL_FAILURE, str(exc)))
                        continue
                    with fp:
                        fp.seek(f.dataset_offset)
                        result = scu.store(
                            f.sop_class_uid, f.sop_instance_uid, f.transfer_syntax_uid, fp
                        )
                    pending.popleft()
                    record(FileOutcome(f, result.status, result.error_comment))
            except SCUError as exc:
                # The association is gone; the file being sent is lost with it.
                scu.abort()
                if pending:
                    record(FileOutcome(pending.popleft(), LOCAL_FAILURE, str(exc)))
                continue
            except BaseException:  # KeyboardInterrupt, a failing callback: abort, then raise
                scu.abort()
                raise
            with contextlib.suppress(SCUError):
                scu.release()  # every object already has its response; nothing is lost
    return outcomes


@dataclass(slots=True)
class ScanResult:
    """What `scan_paths` found: files to send, files skipped (not DICOM Part 10, DICOMDIR,
    directories without `recursive`) and files that look like Part 10 but cannot be sent."""

    files: list[FileToSend] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    invalid: list[tuple[Path, str]] = field(default_factory=list)


def scan_paths(paths: Iterable[str | os.PathLike[str]], recursive: bool) -> ScanResult:
    """Read the file meta of every file named by `paths`; directories are walked (in sorted
    order, symbolic links to directories not followed) only when `recursive`."""
    result = ScanResult()
    for path in _iter_paths(paths, recursive, result):
        try:
            f = FileToSend.from_path(path)
        except NotPart10Error:
            result.skipped.append((path, "not a DICOM Part 10 file"))
            continue
        except InvalidPart10Error as exc:
            result.invalid.append((path, str(exc)))
            continue
        except OSError as exc:
            result.invalid.append((path, str(exc.strerror or exc)))
            continue
        if f.sop_class_uid == MEDIA_STORAGE_DIRECTORY:
            result.skipped.append((path, "DICOMDIR (a media directory, not sent)"))
            continue
        result.files.append(f)
    return result


def _iter_paths(
    paths: Iterable[str | os.PathLike[str]], recursive: bool, result: ScanResult
) -> Iterator[Path]:
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            if not recursive:
                result.skipped.append((path, "a directory (use --recursive)"))
                continue
            for root, dirs, names in os.walk(path):
                dirs.sort()
                for name in sorted(names):
                    yield Path(root) / name
        else:
            yield path
