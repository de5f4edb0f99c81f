"""DIMSE command sets (PS3.7 section 9 and Annex E): implicit VR little endian codec, command
fields and status codes. Pure code, no I/O."""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any

# Command Field values (PS3.7 E.1)
C_STORE_RQ = 0x0001
C_STORE_RSP = 0x8001
C_GET_RQ = 0x0010
C_FIND_RQ = 0x0020
C_MOVE_RQ = 0x0021
C_ECHO_RQ = 0x0030
C_ECHO_RSP = 0x8030
N_EVENT_REPORT_RQ = 0x0100
N_GET_RQ = 0x0110
N_SET_RQ = 0x0120
N_ACTION_RQ = 0x0130
N_CREATE_RQ = 0x0140
N_DELETE_RQ = 0x0150
C_CANCEL_RQ = 0x0FFF

COMMAND_NAMES = {
    C_STORE_RQ: "C-STORE-RQ",
    C_STORE_RSP: "C-STORE-RSP",
    C_GET_RQ: "C-GET-RQ",
    C_FIND_RQ: "C-FIND-RQ",
    C_MOVE_RQ: "C-MOVE-RQ",
    C_ECHO_RQ: "C-ECHO-RQ",
    C_ECHO_RSP: "C-ECHO-RSP",
    N_EVENT_REPORT_RQ: "N-EVENT-REPORT-RQ",
    N_GET_RQ: "N-GET-RQ",
    N_SET_RQ: "N-SET-RQ",
    N_ACTION_RQ: "N-ACTION-RQ",
    N_CREATE_RQ: "N-CREATE-RQ",
    N_DELETE_RQ: "N-DELETE-RQ",
    C_CANCEL_RQ: "C-CANCEL-RQ",
}

NO_DATASET = 0x0101  # Command Data Set Type: no data set follows

# Status codes (PS3.7 Annex C, PS3.4 B.2.3)
SUCCESS = 0x0000
WARNING_COERCION = 0xB000
WARNING_ELEMENTS_DISCARDED = 0xB006
REFUSED_SOP_CLASS_NOT_SUPPORTED = 0x0122
UNRECOGNIZED_OPERATION = 0x0211
OUT_OF_RESOURCES = 0xA700
DATASET_DOES_NOT_MATCH_SOP_CLASS = 0xA900
CANNOT_UNDERSTAND = 0xC000
CANNOT_UNDERSTAND_FILE_META_IN_DATASET = 0xC002

# Command elements (group 0000), with how their values are encoded
_UI, _US, _UL, _AE, _LO, _AT = "UI", "US", "UL", "AE", "LO", "AT"
COMMAND_GROUP_LENGTH = 0x00000000
AFFECTED_SOP_CLASS_UID = 0x00000002
REQUESTED_SOP_CLASS_UID = 0x00000003
COMMAND_FIELD = 0x00000100
MESSAGE_ID = 0x00000110
MESSAGE_ID_BEING_RESPONDED_TO = 0x00000120
MOVE_DESTINATION = 0x00000600
PRIORITY = 0x00000700
COMMAND_DATA_SET_TYPE = 0x00000800
STATUS = 0x00000900
OFFENDING_ELEMENT = 0x00000901
ERROR_COMMENT = 0x00000902
ERROR_ID = 0x00000903
AFFECTED_SOP_INSTANCE_UID = 0x00001000
REQUESTED_SOP_INSTANCE_UID = 0x00001001
MOVE_ORIGINATOR_AE_TITLE = 0x00001030
MOVE_ORIGINATOR_MESSAGE_ID = 0x00001031

_VR: dict[int, str] = {
    COMMAND_GROUP_LENGTH: _UL,
    AFFECTED_SOP_CLASS_UID: _UI,
    REQUESTED_SOP_CLASS_UID: _UI,
    COMMAND_FIELD: _US,
    MESSAGE_ID: _US,
    MESSAGE_ID_BEING_RESPONDED_TO: _US,
    MOVE_DESTINATION: _AE,
    PRIORITY: _US,
    COMMAND_DATA_SET_TYPE: _US,
    STATUS: _US,
    OFFENDING_ELEMENT: _AT,
    ERROR_COMMENT: _LO,
    ERROR_ID: _US,
    AFFECTED_SOP_INSTANCE_UID: _UI,
    REQUESTED_SOP_INSTANCE_UID: _UI,
    MOVE_ORIGINATOR_AE_TITLE: _AE,
    MOVE_ORIGINATOR_MESSAGE_ID: _US,
}

_ELEMENT_HEADER = struct.Struct("<HHL")
#: A command set is small; anything larger is hostile. PS3.7 sets no limit; 64 KiB is generous.
MAX_COMMAND_LENGTH = 64 * 1024


class DimseError(Exception):
    """A command set that cannot be decoded."""


@dataclass(slots=True)
class Command:
    """A decoded command set: known elements by tag, unknown ones kept as raw bytes."""

    elements: dict[int, Any] = field(default_factory=dict)

    def get(self, tag: int, default: Any = None) -> Any:
        return self.elements.get(tag, default)

    @property
    def command_field(self) -> int:
        return int(self.elements.get(COMMAND_FIELD, -1))

    @property
    def message_id(self) -> int:
        return int(self.elements.get(MESSAGE_ID, 0))

    @property
    def has_dataset(self) -> bool:
        return self.elements.get(COMMAND_DATA_SET_TYPE, NO_DATASET) != NO_DATASET


def _decode_value(vr: str, raw: bytes) -> Any:
    if vr == _US:
        if len(raw) != 2:
            raise DimseError(f"US value of {len(raw)} bytes")
        return struct.unpack("<H", raw)[0]
    if vr == _UL:
        if len(raw) != 4:
            raise DimseError(f"UL value of {len(raw)} bytes")
        return struct.unpack("<L", raw)[0]
    if vr == _AT:
        if len(raw) != 4:
            raise DimseError(f"AT value of {len(raw)} bytes")
        group, elem = struct.unpack("<HH", raw)
        return (group << 16) | elem
    return raw.decode("latin-1").strip(" \x00")


def decode_command(data: bytes | memoryview) -> Command:
    """Decode an implicit VR little endian command set."""
    if len(data) > MAX_COMMAND_LENGTH:
        raise DimseError(f"command set of {len(data)} bytes")
    view = memoryview(data)
    elements: dict[int, Any] = {}
    pos, end = 0, len(view)
    while pos < end:
        if end - pos < _ELEMENT_HEADER.size:
            raise DimseError("truncated command element header")
        group, elem, length = _ELEMENT_HEADER.unpack_from(view, pos)
        pos += _ELEMENT_HEADER.size
        if length > end - pos:
            raise DimseError(f"command element ({group:04X},{elem:04X}) overruns the command set")
        if group != 0x0000:
            raise DimseError(f"element ({group:04X},{elem:04X}) in a command set")
        tag = (group << 16) | elem
        raw = bytes(view[pos : pos + length])
        pos += length
        vr = _VR.get(tag)
        elements[tag] = _decode_value(vr, raw) if vr else raw
    if COMMAND_FIELD not in elements:
        raise DimseError("command set without a Command Field")
    return Command(elements)


def _encode_value(vr: str, value: Any) -> bytes:
    if vr == _US:
        return struct.pack("<H", value)
    if vr == _UL:
        return struct.pack("<L", value)
    if vr == _AT:
        return struct.pack("<HH", value >> 16, value & 0xFFFF)
    # Command strings are ASCII (UIDs, AE titles, our own comments); never fail a response
    # over a stray character.
    raw = value.encode("ascii", "replace") if isinstance(value, str) else bytes(value)
    if len(raw) % 2:
        raw += b"\x00" if vr == _UI else b" "
    return raw


def encode_command(elements: dict[int, Any]) -> bytes:
    """Encode a command set; the group length is computed here."""
    body = []
    for tag in sorted(elements):
        if tag == COMMAND_GROUP_LENGTH:
            continue
        value = elements[tag]
        raw = _encode_value(_VR[tag], value) if tag in _VR else bytes(value)
        body.append(_ELEMENT_HEADER.pack(tag >> 16, tag & 0xFFFF, len(raw)) + raw)
    payload = b"".join(body)
    return _ELEMENT_HEADER.pack(0, 0, 4) + struct.pack("<L", len(payload)) + payload


def c_echo_rq(message_id: int) -> bytes:
    return encode_command(
        {
            AFFECTED_SOP_CLASS_UID: "1.2.840.10008.1.1",
            COMMAND_FIELD: C_ECHO_RQ,
            MESSAGE_ID: message_id,
            COMMAND_DATA_SET_TYPE: NO_DATASET,
        }
    )


def c_echo_rsp(request: Command, status: int = SUCCESS) -> bytes:
    return encode_command(
        {
            AFFECTED_SOP_CLASS_UID: request.get(AFFECTED_SOP_CLASS_UID, "1.2.840.10008.1.1"),
            COMMAND_FIELD: C_ECHO_RSP,
            MESSAGE_ID_BEING_RESPONDED_TO: request.message_id,
            COMMAND_DATA_SET_TYPE: NO_DATASET,
            STATUS: status,
        }
    )


def c_store_rq(
    message_id: int, sop_class_uid: str, sop_instance_uid: str, priority: int = 0
) -> bytes:
    return encode_command(
        {
            AFFECTED_SOP_CLASS_UID: sop_class_uid,
            COMMAND_FIELD: C_STORE_RQ,
            MESSAGE_ID: message_id,
            PRIORITY: priority,
            COMMAND_DATA_SET_TYPE: 0x0000,
            AFFECTED_SOP_INSTANCE_UID: sop_instance_uid,
        }
    )


def c_store_rsp(request: Command, status: int, error_comment: str = "") -> bytes:
    elements: dict[int, Any] = {
        AFFECTED_SOP_CLASS_UID: request.get(AFFECTED_SOP_CLASS_UID, ""),
        COMMAND_FIELD: C_STORE_RSP,
        MESSAGE_ID_BEING_RESPONDED_TO: request.message_id,
        COMMAND_DATA_SET_TYPE: NO_DATASET,
        STATUS: status,
        AFFECTED_SOP_INSTANCE_UID: request.get(AFFECTED_SOP_INSTANCE_UID, ""),
    }
    if error_comment and status != SUCCESS:
        # LO: at most 64 characters, no backslash; never patient data (callers make sure).
        elements[ERROR_COMMENT] = error_comment.replace("\\", "/")[:64]
    return encode_command(elements)


def failure_rsp(request: Command, status: int, error_comment: str = "") -> bytes:
    """A response to a request we do not perform: same command with the response bit set."""
    elements: dict[int, Any] = {
        COMMAND_FIELD: request.command_field | 0x8000,
        MESSAGE_ID_BEING_RESPONDED_TO: request.message_id,
        COMMAND_DATA_SET_TYPE: NO_DATASET,
        STATUS: status,
    }
    for tag in (AFFECTED_SOP_CLASS_UID, AFFECTED_SOP_INSTANCE_UID):
        if tag in request.elements:
            elements[tag] = request.elements[tag]
    if error_comment:
        elements[ERROR_COMMENT] = error_comment.replace("\\", "/")[:64]
    return encode_command(elements)


def status_category(status: int) -> str:
    if status == SUCCESS:
        return "success"
    if status in (WARNING_COERCION, WARNING_ELEMENTS_DISCARDED, 0x0107, 0x0116):
        return "warning"
    if status == 0xFE00:
        return "cancel"
    if status in (0xFF00, 0xFF01):
        return "pending"
    return "failure"
