"""DICOM Upper Layer PDUs (PS3.8 section 9.3): pure encode and decode, no I/O.

Every length is checked against its buffer before it is used. Leniency follows PS3.8: reserved
fields are never tested, only bit 0 of the protocol version matters (checked by negotiation),
unknown items and user-information sub-items are skipped. Anything else that does not add up
raises `PDUError`, the one protocol error of this layer.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from enum import IntEnum

# PDU types
A_ASSOCIATE_RQ = 0x01
A_ASSOCIATE_AC = 0x02
A_ASSOCIATE_RJ = 0x03
P_DATA_TF = 0x04
A_RELEASE_RQ = 0x05
A_RELEASE_RP = 0x06
A_ABORT = 0x07

# Item types
ITEM_APPLICATION_CONTEXT = 0x10
ITEM_PRESENTATION_CONTEXT_RQ = 0x20
ITEM_PRESENTATION_CONTEXT_AC = 0x21
ITEM_ABSTRACT_SYNTAX = 0x30
ITEM_TRANSFER_SYNTAX = 0x40
ITEM_USER_INFORMATION = 0x50
SUB_MAXIMUM_LENGTH = 0x51
SUB_IMPLEMENTATION_CLASS_UID = 0x52
SUB_ASYNC_OPERATIONS_WINDOW = 0x53
SUB_ROLE_SELECTION = 0x54
SUB_IMPLEMENTATION_VERSION_NAME = 0x55
SUB_SOP_CLASS_EXTENDED = 0x56
SUB_SOP_CLASS_COMMON_EXTENDED = 0x57
SUB_USER_IDENTITY_RQ = 0x58
SUB_USER_IDENTITY_AC = 0x59

PDU_HEADER = struct.Struct(">BxL")
ITEM_HEADER = struct.Struct(">BxH")
_ASSOC_FIXED = struct.Struct(">H2x16s16s32x")  # version, reserved, called, calling, reserved
_PDV_HEADER = struct.Struct(">LBB")

#: Largest A-ASSOCIATE-RQ/AC we decode: 128 presentation contexts with many transfer syntaxes
#: each, plus a 64 KiB user identity, fit well below this.
DEFAULT_MAX_ASSOCIATE_LENGTH = 1 << 20
#: Largest A-ASSOCIATE-RJ, A-RELEASE and A-ABORT PDU (all have a 4-byte body).
_FIXED_BODY = 4


class PDUError(Exception):
    """A PDU that cannot be decoded, or is too long. `reason` is an A-ABORT reason (PS3.8
    Table 9-26): 1 unrecognized PDU, 2 unexpected PDU, 4 unrecognized parameter,
    5 unexpected parameter, 6 invalid parameter value."""

    def __init__(self, message: str, reason: int = 6) -> None:
        super().__init__(message)
        self.reason = reason


class PCResult(IntEnum):
    """Presentation context result/reason in the A-ASSOCIATE-AC (PS3.8 Table 9-18)."""

    ACCEPTANCE = 0
    USER_REJECTION = 1
    NO_REASON = 2
    ABSTRACT_SYNTAX_NOT_SUPPORTED = 3
    TRANSFER_SYNTAXES_NOT_SUPPORTED = 4


@dataclass(slots=True)
class PresentationContextRQ:
    id: int
    abstract_syntax: str
    transfer_syntaxes: list[str]


@dataclass(slots=True)
class PresentationContextAC:
    id: int
    result: int
    transfer_syntax: str = ""


@dataclass(slots=True)
class RoleSelection:
    sop_class_uid: str
    scu_role: bool
    scp_role: bool


@dataclass(slots=True)
class SOPClassCommonExtended:
    sop_class_uid: str
    service_class_uid: str
    related_general_sop_classes: list[str] = field(default_factory=list)


@dataclass(slots=True)
class UserIdentityRQ:
    identity_type: int
    positive_response_requested: bool
    primary: bytes
    secondary: bytes = b""


@dataclass(slots=True)
class UserInformation:
    max_length: int | None = None
    implementation_class_uid: str = ""
    implementation_version_name: str | None = None
    async_ops_window: tuple[int, int] | None = None  # (invoked, performed)
    roles: list[RoleSelection] = field(default_factory=list)
    sop_class_extended: list[tuple[str, bytes]] = field(default_factory=list)
    sop_class_common_extended: list[SOPClassCommonExtended] = field(default_factory=list)
    user_identity_rq: UserIdentityRQ | None = None
    user_identity_ac: bytes | None = None  # server response


@dataclass(slots=True)
class AssociateRQ:
    called_ae: str
    calling_ae: str
    application_context: str
    presentation_contexts: list[PresentationContextRQ]
    user_info: UserInformation
    protocol_version: int = 1


@dataclass(slots=True)
class AssociateAC:
    called_ae: str
    calling_ae: str
    application_context: str
    presentation_contexts: list[PresentationContextAC]
    user_info: UserInformation
    protocol_version: int = 1


@dataclass(slots=True)
class AssociateRJ:
    result: int  # 1 permanent, 2 transient
    source: int  # 1 service-user, 2 provider (ACSE), 3 provider (presentation)
    reason: int


@dataclass(slots=True)
class PDV:
    context_id: int
    is_command: bool
    is_last: bool
    data: bytes | memoryview


@dataclass(slots=True)
class PDataTF:
    pdvs: list[PDV]


@dataclass(slots=True)
class ReleaseRQ:
    pass


@dataclass(slots=True)
class ReleaseRP:
    pass


@dataclass(slots=True)
class Abort:
    source: int  # 0 service-user, 2 service-provider
    reason: int = 0


PDU = AssociateRQ | AssociateAC | AssociateRJ | PDataTF | ReleaseRQ | ReleaseRP | Abort


# ---------------------------------------------------------------------------------------------
# Decoding


def _text(raw: bytes | memoryview) -> str:
    """AE titles and UIDs: ASCII in practice; latin-1 never fails, NUL and space padding go."""
    return bytes(raw).decode("latin-1").strip(" \x00")


def _items(buf: memoryview, what: str) -> Iterator[tuple[int, memoryview]]:
    """Walk (type, 2-byte length, value) items that must exactly fill `buf`."""
    pos, end = 0, len(buf)
    while pos < end:
        if end - pos < ITEM_HEADER.size:
            raise PDUError(f"truncated item header in {what}")
        item_type, length = ITEM_HEADER.unpack_from(buf, pos)
        pos += ITEM_HEADER.size
        if length > end - pos:
            raise PDUError(f"item 0x{item_type:02X} in {what} overruns its container")
        yield item_type, buf[pos : pos + length]
        pos += length


def _uid_field(buf: memoryview, pos: int, what: str) -> tuple[str, int]:
    """A 2-byte length followed by a UID, as in role selection and extended negotiation."""
    if len(buf) - pos < 2:
        raise PDUError(f"truncated {what}")
    (n,) = struct.unpack_from(">H", buf, pos)
    pos += 2
    if n > len(buf) - pos:
        raise PDUError(f"{what} claims {n} bytes, has {len(buf) - pos}")
    return _text(buf[pos : pos + n]), pos + n


def _decode_user_info(buf: memoryview) -> UserInformation:
    info = UserInformation()
    for sub_type, value in _items(buf, "user information"):
        if sub_type == SUB_MAXIMUM_LENGTH:
            if len(value) != 4:
                raise PDUError("maximum length sub-item must hold 4 bytes")
            (info.max_length,) = struct.unpack(">L", value)
        elif sub_type == SUB_IMPLEMENTATION_CLASS_UID:
            info.implementation_class_uid = _text(value)
        elif sub_type == SUB_IMPLEMENTATION_VERSION_NAME:
            info.implementation_version_name = _text(value)
        elif sub_type == SUB_ASYNC_OPERATIONS_WINDOW:
            if len(value) != 4:
                raise PDUError("asynchronous operations window sub-item must hold 4 bytes")
            invoked, performed = struct.unpack(">HH", value)
            info.async_ops_window = (invoked, performed)
        elif sub_type == SUB_ROLE_SELECTION:
            uid, pos = _uid_field(value, 0, "role selection")
            if len(value) - pos != 2:
                raise PDUError("role selection sub-item must end with two role bytes")
            info.roles.append(RoleSelection(uid, value[pos] == 1, value[pos + 1] == 1))
        elif sub_type == SUB_SOP_CLASS_EXTENDED:
            uid, pos = _uid_field(value, 0, "SOP class extended negotiation")
            info.sop_class_extended.append((uid, bytes(value[pos:])))
        elif sub_type == SUB_SOP_CLASS_COMMON_EXTENDED:
            sop, pos = _uid_field(value, 0, "common extended negotiation")
            service, pos = _uid_field(value, pos, "common extended negotiation")
            related: list[str] = []
            if pos < len(value):  # the related list is optional in version 0 of this item
                if len(value) - pos < 2:
                    raise PDUError("truncated related general SOP class list")
                (n,) = struct.unpack_from(">H", value, pos)
                pos += 2
                if n > len(value) - pos:
                    raise PDUError("related general SOP class list is longer than its item")
                end = pos + n
                while pos < end:
                    uid, pos = _uid_field(value[:end], pos, "related general SOP class")
                    related.append(uid)
            info.sop_class_common_extended.append(SOPClassCommonExtended(sop, service, related))
        elif sub_type == SUB_USER_IDENTITY_RQ:
            if len(value) < 4:
                raise PDUError("truncated user identity")
            id_type, positive = value[0], value[1] == 1
            primary_raw, pos = _length_prefixed(value, 2, "user identity primary field")
            secondary = b""
            if pos < len(value):
                secondary, pos = _length_prefixed(value, pos, "user identity secondary field")
            info.user_identity_rq = UserIdentityRQ(id_type, positive, primary_raw, secondary)
        elif sub_type == SUB_USER_IDENTITY_AC:
            info.user_identity_ac, _ = _length_prefixed(value, 0, "user identity response")
        # Unknown sub-items are ignored (PS3.7 D.3.3).
    return info


def _length_prefixed(buf: memoryview, pos: int, what: str) -> tuple[bytes, int]:
    if len(buf) - pos < 2:
        raise PDUError(f"truncated {what}")
    (n,) = struct.unpack_from(">H", buf, pos)
    pos += 2
    if n > len(buf) - pos:
        raise PDUError(f"{what} claims {n} bytes, has {len(buf) - pos}")
    return bytes(buf[pos : pos + n]), pos + n


def _decode_associate(pdu_type: int, body: memoryview) -> AssociateRQ | AssociateAC:
    if len(body) < _ASSOC_FIXED.size:
        raise PDUError("A-ASSOCIATE PDU shorter than its fixed fields")
    version, called, calling = _ASSOC_FIXED.unpack_from(body, 0)
    app_context = ""
    rq_contexts: list[PresentationContextRQ] = []
    ac_contexts: list[PresentationContextAC] = []
    user_info: UserInformation | None = None
    for item_type, value in _items(body[_ASSOC_FIXED.size :], "A-ASSOCIATE"):
        if item_type == ITEM_APPLICATION_CONTEXT:
            app_context = _text(value)
        elif item_type == ITEM_PRESENTATION_CONTEXT_RQ and pdu_type == A_ASSOCIATE_RQ:
            if len(value) < 4:
                raise PDUError("truncated presentation context item")
            abstract, syntaxes = "", []
            for sub_type, sub in _items(value[4:], "presentation context"):
                if sub_type == ITEM_ABSTRACT_SYNTAX:
                    abstract = _text(sub)
                elif sub_type == ITEM_TRANSFER_SYNTAX:
                    syntaxes.append(_text(sub))
            rq_contexts.append(PresentationContextRQ(value[0], abstract, syntaxes))
        elif item_type == ITEM_PRESENTATION_CONTEXT_AC and pdu_type == A_ASSOCIATE_AC:
            if len(value) < 4:
                raise PDUError("truncated presentation context item")
            syntax = ""
            for sub_type, sub in _items(value[4:], "presentation context"):
                if sub_type == ITEM_TRANSFER_SYNTAX:
                    syntax = _text(sub)
            ac_contexts.append(PresentationContextAC(value[0], value[2], syntax))
        elif item_type == ITEM_USER_INFORMATION:
            user_info = _decode_user_info(value)
        # Unknown items are skipped.
    if not app_context:
        raise PDUError("A-ASSOCIATE PDU without an application context", reason=6)
    if user_info is None:
        raise PDUError("A-ASSOCIATE PDU without a user information item", reason=6)
    if pdu_type == A_ASSOCIATE_RQ:
        return AssociateRQ(
            _text(called), _text(calling), app_context, rq_contexts, user_info, version
        )
    return AssociateAC(_text(called), _text(calling), app_context, ac_contexts, user_info, version)


def decode_pdata(body: memoryview) -> PDataTF:
    pdvs: list[PDV] = []
    pos, end = 0, len(body)
    if end == 0:
        raise PDUError("P-DATA-TF without a PDV")
    while pos < end:
        if end - pos < _PDV_HEADER.size:
            raise PDUError("truncated PDV header")
        length, ctx, control = _PDV_HEADER.unpack_from(body, pos)
        if length < 2 or length - 2 > end - pos - _PDV_HEADER.size:
            raise PDUError(f"PDV length {length} does not fit its P-DATA-TF PDU")
        start = pos + _PDV_HEADER.size
        stop = pos + 4 + length
        pdvs.append(PDV(ctx, bool(control & 1), bool(control & 2), body[start:stop]))
        pos = stop
    return PDataTF(pdvs)


def decode_body(pdu_type: int, body: memoryview) -> PDU:
    """Decode the variable part of a PDU whose header has already been read."""
    if pdu_type == P_DATA_TF:
        return decode_pdata(body)
    if pdu_type in (A_ASSOCIATE_RQ, A_ASSOCIATE_AC):
        return _decode_associate(pdu_type, body)
    if pdu_type not in (A_ASSOCIATE_RJ, A_RELEASE_RQ, A_RELEASE_RP, A_ABORT):
        raise PDUError(f"unrecognized PDU type 0x{pdu_type:02X}", reason=1)
    if len(body) != _FIXED_BODY:
        raise PDUError(f"PDU type 0x{pdu_type:02X} must have a 4-byte body, has {len(body)}")
    if pdu_type == A_ASSOCIATE_RJ:
        return AssociateRJ(body[1], body[2], body[3])
    if pdu_type == A_RELEASE_RQ:
        return ReleaseRQ()
    if pdu_type == A_RELEASE_RP:
        return ReleaseRP()
    return Abort(body[2], body[3])


class PDUReader:
    """Splits a byte stream into PDUs.

    `max_pdata_length` is the maximum length we announced: a longer P-DATA-TF is a protocol
    error, so a peer can never make us buffer more than that. A-ASSOCIATE PDUs have their own
    cap; the other PDUs have a fixed 4-byte body. The length is checked from the 6-byte header,
    before any body byte is buffered.
    """

    __slots__ = ("_buf", "max_associate_length", "max_pdata_length")

    def __init__(
        self,
        max_pdata_length: int,
        max_associate_length: int = DEFAULT_MAX_ASSOCIATE_LENGTH,
    ) -> None:
        self.max_pdata_length = max_pdata_length
        self.max_associate_length = max_associate_length
        self._buf = bytearray()

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def _check_header(self, pdu_type: int, length: int) -> None:
        if pdu_type == P_DATA_TF:
            if length > self.max_pdata_length:
                raise PDUError(
                    f"P-DATA-TF of {length} bytes exceeds the announced maximum "
                    f"{self.max_pdata_length}",
                    reason=6,
                )
        elif pdu_type in (A_ASSOCIATE_RQ, A_ASSOCIATE_AC):
            if length > self.max_associate_length:
                raise PDUError(f"A-ASSOCIATE PDU of {length} bytes exceeds the cap", reason=6)
        elif pdu_type in (A_ASSOCIATE_RJ, A_RELEASE_RQ, A_RELEASE_RP, A_ABORT):
            if length != _FIXED_BODY:
                raise PDUError(f"PDU type 0x{pdu_type:02X} with length {length}", reason=6)
        else:
            raise PDUError(f"unrecognized PDU type 0x{pdu_type:02X}", reason=1)

    def _needed(self) -> int:
        """Bytes the buffer must hold before its first PDU is complete."""
        if len(self._buf) < PDU_HEADER.size:
            return PDU_HEADER.size
        pdu_type, length = PDU_HEADER.unpack_from(self._buf, 0)
        try:
            self._check_header(pdu_type, length)
        except PDUError:
            self._buf.clear()  # the stream is dead: keep nothing of it
            raise
        return PDU_HEADER.size + length

    def feed(self, data: bytes) -> list[PDU]:
        """Add received bytes; return every PDU now complete (maybe none).

        Fast path: when nothing is buffered, PDUs are decoded straight from `data`, and PDV
        payloads are zero-copy views of it.
        """
        out: list[PDU] = []
        if self._buf:
            if len(self._buf) < PDU_HEADER.size:
                # Complete the header first, so a bad one is refused before its body is kept.
                take = PDU_HEADER.size - len(self._buf)
                self._buf += data[:take]
                data = data[take:]
                if len(self._buf) < PDU_HEADER.size:
                    return out
                self._needed()  # raises on a bad header
            self._buf += data
            if len(self._buf) < self._needed():
                return out  # still inside one PDU: no copy, no decode
            view = memoryview(bytes(self._buf))  # one copy: PDVs may outlive the buffer
            self._buf.clear()
        else:
            view = memoryview(data)
        pos, end = 0, len(view)
        while end - pos >= PDU_HEADER.size:
            pdu_type, length = PDU_HEADER.unpack_from(view, pos)
            self._check_header(pdu_type, length)
            stop = pos + PDU_HEADER.size + length
            if stop > end:
                break
            out.append(decode_body(pdu_type, view[pos + PDU_HEADER.size : stop]))
            pos = stop
        if pos < end:
            self._buf += view[pos:]
        return out


class PDUStreamReader:
    """Splits a byte stream into PDUs without ever buffering a P-DATA-TF PDU.

    Yields, in stream order: whole PDUs of every other type; for each P-DATA-TF PDU a
    `PDataTF([])` marker when its header arrives, then its PDVs as `PDV` chunks, each a view
    of the bytes passed to `feed` (valid until the caller reuses that buffer). A PDV larger
    than what has arrived comes as several chunks; only the final chunk of a PDV carries its
    `is_last` flag. Memory held is bounded by one non-P-DATA PDU, whatever the PDU sizes.
    Length checks are the same as `PDUReader`'s.
    """

    __slots__ = (
        "_body",
        "_body_len",
        "_body_type",
        "_control",
        "_ctx",
        "_head",
        "_pdu_left",
        "_pdv_left",
        "_whole",
        "error",
    )

    def __init__(
        self,
        max_pdata_length: int,
        max_associate_length: int = DEFAULT_MAX_ASSOCIATE_LENGTH,
    ) -> None:
        self._whole = PDUReader(max_pdata_length, max_associate_length)  # for its checks
        self._head = bytearray()  # a partial PDU header or PDV header
        self._pdu_left = 0  # body bytes of the current P-DATA-TF not yet read
        self._pdv_left = -1  # data bytes of the current PDV not yet read; -1: need a header
        self._ctx = 0
        self._control = 0
        self._body: bytearray | None = None  # body of a non-P-DATA PDU being collected
        self._body_type = 0
        self._body_len = 0
        self.error: PDUError | None = None

    @property
    def buffered(self) -> int:
        return len(self._head) + (len(self._body) if self._body is not None else 0)

    def _fill_head(self, view: memoryview, pos: int) -> int:
        take = min(PDU_HEADER.size - len(self._head), len(view) - pos)
        self._head += view[pos : pos + take]
        return pos + take

    def feed(self, data: bytes | bytearray | memoryview) -> list[PDU | PDV]:
        """Everything decodable in `data`. On a protocol error, what came before it is
        returned and the error is kept in `self.error`; the stream is dead from then on."""
        out: list[PDU | PDV] = []
        if self.error is None:
            try:
                self._feed(data, out)
            except PDUError as exc:
                self.error = exc
        return out

    def _feed(self, data: bytes | bytearray | memoryview, out: list[PDU | PDV]) -> None:
        view = memoryview(data)
        pos, end = 0, len(view)
        while pos < end:
            if self._pdu_left:
                if self._pdv_left < 0:  # a PDV header (4-byte length, context, control)
                    if self._pdu_left < _PDV_HEADER.size:
                        raise PDUError("P-DATA-TF ends inside a PDV header")
                    pos = self._fill_head(view, pos)
                    if len(self._head) < _PDV_HEADER.size:
                        break
                    length, self._ctx, self._control = _PDV_HEADER.unpack_from(self._head)
                    self._head.clear()
                    if length < 2 or length + 4 > self._pdu_left:
                        raise PDUError(f"PDV length {length} does not fit its P-DATA-TF PDU")
                    self._pdu_left -= _PDV_HEADER.size
                    self._pdv_left = length - 2
                    if self._pdv_left:
                        continue
                    chunk: memoryview | bytes = b""
                else:
                    take = min(self._pdv_left, end - pos)
                    chunk = view[pos : pos + take]
                    pos += take
                    self._pdv_left -= take
                    self._pdu_left -= take
                done = self._pdv_left == 0
                control = self._control
                out.append(PDV(self._ctx, bool(control & 1), done and bool(control & 2), chunk))
                if done:
                    self._pdv_left = -1
                continue
            if self._body is not None:
                take = min(self._body_len - len(self._body), end - pos)
                self._body += view[pos : pos + take]
                pos += take
                if len(self._body) == self._body_len:
                    out.append(decode_body(self._body_type, memoryview(bytes(self._body))))
                    self._body = None
                continue
            pos = self._fill_head(view, pos)
            if len(self._head) < PDU_HEADER.size:
                break
            pdu_type, length = PDU_HEADER.unpack_from(self._head)
            self._head.clear()
            self._whole._check_header(pdu_type, length)
            if pdu_type == P_DATA_TF:
                if length == 0:
                    raise PDUError("P-DATA-TF without a PDV")
                self._pdu_left = length
                self._pdv_left = -1
                out.append(PDataTF([]))
            elif length == 0:
                out.append(decode_body(pdu_type, memoryview(b"")))
            else:
                self._body_type, self._body_len, self._body = pdu_type, length, bytearray()


# ---------------------------------------------------------------------------------------------
# Encoding


def _item(item_type: int, value: bytes) -> bytes:
    if len(value) > 0xFFFF:
        raise PDUError(f"item 0x{item_type:02X} of {len(value)} bytes cannot be encoded")
    return ITEM_HEADER.pack(item_type, len(value)) + value


def _uid(uid: str) -> bytes:
    return uid.encode("ascii")


def _u16_prefixed(raw: bytes) -> bytes:
    if len(raw) > 0xFFFF:
        raise PDUError(f"field of {len(raw)} bytes cannot be encoded with a 2-byte length")
    return struct.pack(">H", len(raw)) + raw


def _ae(title: str) -> bytes:
    # latin-1: an AE title decoded from a peer's bytes encodes back to the same bytes.
    raw = title.encode("latin-1", "replace")
    if not 0 < len(raw) <= 16:
        raise PDUError(f"AE title must be 1-16 characters, got {len(raw)}")
    return raw.ljust(16)


def _encode_user_info(info: UserInformation) -> bytes:
    parts: list[bytes] = []
    if info.max_length is not None:
        parts.append(_item(SUB_MAXIMUM_LENGTH, struct.pack(">L", info.max_length)))
    parts.append(_item(SUB_IMPLEMENTATION_CLASS_UID, _uid(info.implementation_class_uid)))
    if info.async_ops_window is not None:
        parts.append(_item(SUB_ASYNC_OPERATIONS_WINDOW, struct.pack(">HH", *info.async_ops_window)))
    for role in info.roles:
        body = _u16_prefixed(_uid(role.sop_class_uid)) + bytes((role.scu_role, role.scp_role))
        parts.append(_item(SUB_ROLE_SELECTION, body))
    if info.implementation_version_name:
        parts.append(
            _item(SUB_IMPLEMENTATION_VERSION_NAME, info.implementation_version_name.encode())
        )
    for uid, app_info in info.sop_class_extended:
        parts.append(_item(SUB_SOP_CLASS_EXTENDED, _u16_prefixed(_uid(uid)) + app_info))
    for ext in info.sop_class_common_extended:
        related = b"".join(_u16_prefixed(_uid(u)) for u in ext.related_general_sop_classes)
        body = (
            _u16_prefixed(_uid(ext.sop_class_uid))
            + _u16_prefixed(_uid(ext.service_class_uid))
            + _u16_prefixed(related)
        )
        parts.append(_item(SUB_SOP_CLASS_COMMON_EXTENDED, body))
    if info.user_identity_rq is not None:
        ui = info.user_identity_rq
        body = (
            bytes((ui.identity_type, ui.positive_response_requested))
            + _u16_prefixed(ui.primary)
            + _u16_prefixed(ui.secondary)
        )
        parts.append(_item(SUB_USER_IDENTITY_RQ, body))
    if info.user_identity_ac is not None:
        parts.append(_item(SUB_USER_IDENTITY_AC, _u16_prefixed(info.user_identity_ac)))
    return _item(ITEM_USER_INFORMATION, b"".join(parts))


def _frame(pdu_type: int, body: bytes) -> bytes:
    return PDU_HEADER.pack(pdu_type, len(body)) + body


def encode(pdu: PDU) -> bytes:
    """Encode one PDU. P-DATA-TF is better sent with `encode_pdata` (no intermediate objects)."""
    if isinstance(pdu, PDataTF):
        return encode_pdata(pdu.pdvs)
    if isinstance(pdu, AssociateRQ | AssociateAC):
        head = _ASSOC_FIXED.pack(pdu.protocol_version, _ae(pdu.called_ae), _ae(pdu.calling_ae))
        parts = [head, _item(ITEM_APPLICATION_CONTEXT, _uid(pdu.application_context))]
        if isinstance(pdu, AssociateRQ):
            for pc in pdu.presentation_contexts:
                subs = _item(ITEM_ABSTRACT_SYNTAX, _uid(pc.abstract_syntax)) + b"".join(
                    _item(ITEM_TRANSFER_SYNTAX, _uid(ts)) for ts in pc.transfer_syntaxes
                )
                parts.append(_item(ITEM_PRESENTATION_CONTEXT_RQ, bytes((pc.id, 0, 0, 0)) + subs))
            pdu_type = A_ASSOCIATE_RQ
        else:
            for ac in pdu.presentation_contexts:
                # PS3.8 9.3.3.2: the transfer syntax sub-item is present but not significant
                # when the context is rejected.
                sub = _item(ITEM_TRANSFER_SYNTAX, _uid(ac.transfer_syntax))
                parts.append(
                    _item(ITEM_PRESENTATION_CONTEXT_AC, bytes((ac.id, 0, ac.result, 0)) + sub)
                )
            pdu_type = A_ASSOCIATE_AC
        parts.append(_encode_user_info(pdu.user_info))
        return _frame(pdu_type, b"".join(parts))
    if isinstance(pdu, AssociateRJ):
        return _frame(A_ASSOCIATE_RJ, bytes((0, pdu.result, pdu.source, pdu.reason)))
    if isinstance(pdu, ReleaseRQ):
        return _frame(A_RELEASE_RQ, bytes(4))
    if isinstance(pdu, ReleaseRP):
        return _frame(A_RELEASE_RP, bytes(4))
    if isinstance(pdu, Abort):
        return _frame(A_ABORT, bytes((0, 0, pdu.source, pdu.reason)))
    raise TypeError(f"not a PDU: {pdu!r}")


def encode_pdata(pdvs: Iterable[PDV]) -> bytes:
    parts: list[bytes | memoryview] = []
    total = 0
    for pdv in pdvs:
        control = (1 if pdv.is_command else 0) | (2 if pdv.is_last else 0)
        parts.append(_PDV_HEADER.pack(len(pdv.data) + 2, pdv.context_id, control))
        parts.append(pdv.data)
        total += _PDV_HEADER.size + len(pdv.data)
    return PDU_HEADER.pack(P_DATA_TF, total) + b"".join(parts)


def fragment(
    context_id: int, data: bytes | memoryview, is_command: bool, max_pdu_length: int
) -> Iterator[bytes]:
    """Encoded P-DATA-TF PDUs, one PDV each, that carry `data` within the peer's maximum.

    A peer maximum of 0 means unlimited (PS3.8 D.1); we still cut at 1 MiB to bound buffers.
    """
    limit = max_pdu_length if max_pdu_length > 0 else 1 << 20
    # The PDU length counts the PDV header too; PDV values have even length (PS3.8 E.2), so a
    # peer that announces an odd maximum still gets even fragments.
    chunk = (limit - _PDV_HEADER.size) & ~1
    if chunk <= 0:
        raise PDUError(f"peer maximum PDU length {max_pdu_length} is too small")
    view = memoryview(data)
    n = len(view)
    if n == 0:
        yield encode_pdata([PDV(context_id, is_command, True, b"")])
        return
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        yield encode_pdata([PDV(context_id, is_command, stop == n, view[start:stop])])
