"""DIMSE command sets: our codec against hand-built bytes and against pydicom's encoder."""

from __future__ import annotations

import struct
from io import BytesIO
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pydicom.filewriter import write_dataset

from store_scp.dicom import dimse

VERIFICATION = "1.2.840.10008.1.1"
CT = "1.2.840.10008.5.1.4.1.1.2"
SOP_INSTANCE = "1.2.826.0.1.3680043.8.498.12345678901234567890123456789"  # odd length


def element(group: int, elem: int, value: bytes) -> bytes:
    """Implicit VR little endian: tag (2+2), length (4), value."""
    return struct.pack("<HHI", group, elem, len(value)) + value


def with_group_length(*elements: bytes) -> bytes:
    body = b"".join(elements)
    return element(0, 0, struct.pack("<I", len(body))) + body


def pydicom_encode(ds: Dataset) -> bytes:
    fp = DicomBytesIO()
    fp.is_little_endian = True
    fp.is_implicit_VR = True
    write_dataset(fp, ds)
    return fp.getvalue()


def pydicom_decode(raw: bytes) -> Dataset:
    return read_dataset(BytesIO(raw), is_implicit_VR=True, is_little_endian=True)


def elements_after_group_length(raw: bytes) -> list[tuple[int, bytes]]:
    out, pos = [], 0
    while pos < len(raw):
        group, elem, length = struct.unpack_from("<HHI", raw, pos)
        out.append(((group << 16) | elem, raw[pos + 8 : pos + 8 + length]))
        pos += 8 + length
    assert pos == len(raw)
    return out


# --- round trips and layout ------------------------------------------------------------------


def test_c_echo_rq_bytes_by_hand() -> None:
    expected = with_group_length(
        element(0x0000, 0x0002, b"1.2.840.10008.1.1\x00"),
        element(0x0000, 0x0100, struct.pack("<H", 0x0030)),
        element(0x0000, 0x0110, struct.pack("<H", 7)),
        element(0x0000, 0x0800, struct.pack("<H", 0x0101)),
    )
    assert dimse.c_echo_rq(7) == expected


def test_c_store_rq_round_trip() -> None:
    raw = dimse.c_store_rq(65535, CT, SOP_INSTANCE, priority=2)
    cmd = dimse.decode_command(raw)
    assert cmd.command_field == dimse.C_STORE_RQ
    assert cmd.message_id == 65535
    assert cmd.has_dataset
    assert cmd.elements == {
        dimse.COMMAND_GROUP_LENGTH: len(raw) - 12,
        dimse.AFFECTED_SOP_CLASS_UID: CT,
        dimse.COMMAND_FIELD: dimse.C_STORE_RQ,
        dimse.MESSAGE_ID: 65535,
        dimse.PRIORITY: 2,
        dimse.COMMAND_DATA_SET_TYPE: 0,
        dimse.AFFECTED_SOP_INSTANCE_UID: SOP_INSTANCE,
    }


def test_c_echo_round_trip_and_response() -> None:
    rq = dimse.decode_command(dimse.c_echo_rq(12))
    assert rq.command_field == dimse.C_ECHO_RQ
    assert not rq.has_dataset
    rsp = dimse.decode_command(dimse.c_echo_rsp(rq))
    assert rsp.elements == {
        dimse.COMMAND_GROUP_LENGTH: rsp.get(dimse.COMMAND_GROUP_LENGTH),
        dimse.AFFECTED_SOP_CLASS_UID: VERIFICATION,
        dimse.COMMAND_FIELD: dimse.C_ECHO_RSP,
        dimse.MESSAGE_ID_BEING_RESPONDED_TO: 12,
        dimse.COMMAND_DATA_SET_TYPE: dimse.NO_DATASET,
        dimse.STATUS: dimse.SUCCESS,
    }
    assert dimse.decode_command(dimse.c_echo_rsp(rq, 0x0211)).get(dimse.STATUS) == 0x0211


@pytest.mark.parametrize(
    "raw",
    [
        dimse.c_echo_rq(1),
        dimse.c_store_rq(3, CT, SOP_INSTANCE),
        dimse.c_store_rsp(
            dimse.decode_command(dimse.c_store_rq(3, CT, "1.2")), 0xA700, "disk full"
        ),
    ],
)
def test_group_length_is_exact_and_elements_ascend(raw: bytes) -> None:
    group, elem, length = struct.unpack_from("<HHI", raw, 0)
    assert (group, elem, length) == (0, 0, 4)
    (group_length,) = struct.unpack_from("<I", raw, 8)
    assert group_length == len(raw) - 12
    tags = [tag for tag, _ in elements_after_group_length(raw[12:])]
    assert tags == sorted(tags)
    assert all(tag >> 16 == 0 for tag in tags)
    for _, value in elements_after_group_length(raw[12:]):
        assert len(value) % 2 == 0


def test_odd_length_ui_is_padded_with_nul_and_text_with_space() -> None:
    raw = dimse.encode_command(
        {
            dimse.AFFECTED_SOP_CLASS_UID: "1.2.3",
            dimse.COMMAND_FIELD: dimse.C_STORE_RSP,
            dimse.ERROR_COMMENT: "odd",
            dimse.MOVE_DESTINATION: "AE1",
        }
    )
    values = dict(elements_after_group_length(raw[12:]))
    assert values[dimse.AFFECTED_SOP_CLASS_UID] == b"1.2.3\x00"
    assert values[dimse.ERROR_COMMENT] == b"odd "
    assert values[dimse.MOVE_DESTINATION] == b"AE1 "
    cmd = dimse.decode_command(raw)
    assert cmd.get(dimse.AFFECTED_SOP_CLASS_UID) == "1.2.3"
    assert cmd.get(dimse.ERROR_COMMENT) == "odd"


def test_at_and_unknown_elements() -> None:
    raw = dimse.encode_command(
        {
            dimse.COMMAND_FIELD: 0x8001,
            dimse.OFFENDING_ELEMENT: 0x00100010,
            0x00005000: b"\x01\x02",  # unknown group 0000 element: raw bytes
        }
    )
    values = dict(elements_after_group_length(raw[12:]))
    assert values[dimse.OFFENDING_ELEMENT] == struct.pack("<HH", 0x0010, 0x0010)
    cmd = dimse.decode_command(raw)
    assert cmd.get(dimse.OFFENDING_ELEMENT) == 0x00100010
    assert cmd.get(0x00005000) == b"\x01\x02"


def test_group_length_given_by_the_caller_is_recomputed() -> None:
    raw = dimse.encode_command({dimse.COMMAND_GROUP_LENGTH: 999, dimse.COMMAND_FIELD: 0x30})
    assert dimse.decode_command(raw).get(dimse.COMMAND_GROUP_LENGTH) == 10


def test_decode_without_group_length_is_accepted() -> None:
    raw = element(0, 0x0100, struct.pack("<H", 0x0030)) + element(0, 0x0110, struct.pack("<H", 5))
    cmd = dimse.decode_command(raw)
    assert (cmd.command_field, cmd.message_id) == (0x30, 5)


# --- decode errors ---------------------------------------------------------------------------


@pytest.mark.parametrize("cut", [1, 4, 7, 8, 11, 19, 29])
def test_truncated_command_is_an_error(cut: int) -> None:
    raw = dimse.c_echo_rq(1)
    truncated = raw[: len(raw) - cut]
    if not truncated:
        pytest.fail("cut too large")
    with pytest.raises(dimse.DimseError):
        dimse.decode_command(truncated)


def test_element_outside_group_0000_is_an_error() -> None:
    raw = dimse.c_echo_rq(1) + element(0x0008, 0x0016, b"1.2\x00")
    with pytest.raises(dimse.DimseError, match="0008"):
        dimse.decode_command(raw)


def test_over_max_command_length_is_an_error() -> None:
    filler = element(0, 0x5000, bytes(dimse.MAX_COMMAND_LENGTH))
    with pytest.raises(dimse.DimseError):
        dimse.decode_command(dimse.c_echo_rq(1) + filler)
    # exactly at the maximum is still decoded
    head = dimse.c_echo_rq(1)
    fits = head + element(0, 0x5000, bytes(dimse.MAX_COMMAND_LENGTH - len(head) - 8))
    assert len(fits) == dimse.MAX_COMMAND_LENGTH
    assert dimse.decode_command(fits).command_field == dimse.C_ECHO_RQ


def test_missing_command_field_is_an_error() -> None:
    raw = with_group_length(element(0, 0x0110, struct.pack("<H", 1)))
    with pytest.raises(dimse.DimseError, match="Command Field"):
        dimse.decode_command(raw)
    with pytest.raises(dimse.DimseError):
        dimse.decode_command(b"")


@pytest.mark.parametrize(
    ("tag", "value"),
    [
        (0x0100, b"\x30"),
        (0x0110, b"\x01\x00\x00\x00"),
        (0x0000, b"\x00\x00"),
        (0x0901, b"\x10\x00"),
    ],
)
def test_wrong_value_sizes_are_errors(tag: int, value: bytes) -> None:
    raw = element(0, tag, value) + element(0, 0x0100, struct.pack("<H", 0x30))
    if tag == 0x0100:
        raw = element(0, tag, value)
    with pytest.raises(dimse.DimseError):
        dimse.decode_command(raw)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_decode_raises_only_dimse_error(data: bytes) -> None:
    try:
        cmd = dimse.decode_command(data)
    except dimse.DimseError:
        return
    assert dimse.COMMAND_FIELD in cmd.elements


# --- C-STORE responses -----------------------------------------------------------------------


def store_request() -> dimse.Command:
    return dimse.decode_command(dimse.c_store_rq(42, CT, SOP_INSTANCE))


def test_c_store_rsp_success_never_carries_an_error_comment() -> None:
    rsp = dimse.decode_command(dimse.c_store_rsp(store_request(), dimse.SUCCESS, "all good"))
    assert dimse.ERROR_COMMENT not in rsp.elements
    assert rsp.elements == {
        dimse.COMMAND_GROUP_LENGTH: rsp.get(dimse.COMMAND_GROUP_LENGTH),
        dimse.AFFECTED_SOP_CLASS_UID: CT,
        dimse.COMMAND_FIELD: dimse.C_STORE_RSP,
        dimse.MESSAGE_ID_BEING_RESPONDED_TO: 42,
        dimse.COMMAND_DATA_SET_TYPE: dimse.NO_DATASET,
        dimse.STATUS: dimse.SUCCESS,
        dimse.AFFECTED_SOP_INSTANCE_UID: SOP_INSTANCE,
    }


@pytest.mark.parametrize("status", [0xA700, 0xA900, 0xC000, 0x0122, 0xB000])
def test_c_store_rsp_failure_comment_is_truncated_to_64(status: int) -> None:
    comment = "x" * 63 + "\\" + "y" * 100
    rsp = dimse.decode_command(dimse.c_store_rsp(store_request(), status, comment))
    assert rsp.get(dimse.STATUS) == status
    got = rsp.get(dimse.ERROR_COMMENT)
    assert got == "x" * 63 + "/"
    assert len(got) == 64


def test_c_store_rsp_without_comment() -> None:
    rsp = dimse.decode_command(dimse.c_store_rsp(store_request(), 0xA700))
    assert dimse.ERROR_COMMENT not in rsp.elements


def test_c_store_rsp_with_a_non_ascii_comment_still_encodes() -> None:
    raw = dimse.c_store_rsp(store_request(), 0xA700, "Speicher voll: Datei gelöscht")
    rsp = dimse.decode_command(raw)
    assert rsp.get(dimse.STATUS) == 0xA700
    assert rsp.get(dimse.ERROR_COMMENT)


def test_failure_rsp_sets_the_response_bit() -> None:
    find = dimse.decode_command(
        dimse.encode_command(
            {
                dimse.AFFECTED_SOP_CLASS_UID: "1.2.840.10008.5.1.4.1.2.1.1",
                dimse.COMMAND_FIELD: dimse.C_FIND_RQ,
                dimse.MESSAGE_ID: 9,
            }
        )
    )
    rsp = dimse.decode_command(
        dimse.failure_rsp(find, dimse.UNRECOGNIZED_OPERATION, "no C-FIND here")
    )
    assert rsp.command_field == 0x8020
    assert rsp.get(dimse.MESSAGE_ID_BEING_RESPONDED_TO) == 9
    assert rsp.get(dimse.STATUS) == 0x0211
    assert rsp.get(dimse.AFFECTED_SOP_CLASS_UID) == "1.2.840.10008.5.1.4.1.2.1.1"
    assert rsp.get(dimse.ERROR_COMMENT) == "no C-FIND here"
    assert not rsp.has_dataset


@pytest.mark.parametrize(
    ("status", "category"),
    [(0x0000, "success"), (0xB000, "warning"), (0xB006, "warning"), (0xFE00, "cancel"),
     (0xFF00, "pending"), (0xFF01, "pending"), (0xA700, "failure"), (0xC000, "failure"),
     (0x0122, "failure")],
)  # fmt: skip
def test_status_category(status: int, category: str) -> None:
    assert dimse.status_category(status) == category


# --- against pydicom -------------------------------------------------------------------------


def command_dataset(**values: Any) -> Dataset:
    ds = Dataset()
    ds.CommandGroupLength = 0
    for keyword, value in values.items():
        setattr(ds, keyword, value)
    body = pydicom_encode(ds)
    ds.CommandGroupLength = len(body) - 12
    return ds


def test_our_c_echo_rq_equals_pydicoms_encoding() -> None:
    ds = command_dataset(
        AffectedSOPClassUID=VERIFICATION,
        CommandField=0x0030,
        MessageID=7,
        CommandDataSetType=0x0101,
    )
    assert dimse.c_echo_rq(7) == pydicom_encode(ds)


@pytest.mark.parametrize("sop_instance", [SOP_INSTANCE, SOP_INSTANCE + "1"])
def test_our_c_store_rq_equals_pydicoms_encoding(sop_instance: str) -> None:
    ds = command_dataset(
        AffectedSOPClassUID=CT,
        CommandField=0x0001,
        MessageID=3,
        Priority=0,
        CommandDataSetType=0x0000,
        AffectedSOPInstanceUID=sop_instance,
    )
    assert dimse.c_store_rq(3, CT, sop_instance) == pydicom_encode(ds)


def test_our_c_store_rsp_equals_pydicoms_encoding() -> None:
    ds = command_dataset(
        AffectedSOPClassUID=CT,
        CommandField=0x8001,
        MessageIDBeingRespondedTo=42,
        CommandDataSetType=0x0101,
        Status=0xA900,
        ErrorComment="SOP class mismatch",
        AffectedSOPInstanceUID=SOP_INSTANCE,
    )
    assert dimse.c_store_rsp(store_request(), 0xA900, "SOP class mismatch") == pydicom_encode(ds)


def test_pydicom_reads_our_commands() -> None:
    ds = pydicom_decode(dimse.c_store_rsp(store_request(), 0xA700, "out of space"))
    assert ds.CommandField == 0x8001
    assert ds.MessageIDBeingRespondedTo == 42
    assert ds.Status == 0xA700
    assert ds.ErrorComment == "out of space"
    assert ds.AffectedSOPInstanceUID == SOP_INSTANCE
    assert ds.CommandGroupLength == len(pydicom_encode(ds)) - 12


def test_we_decode_pydicom_encoded_commands() -> None:
    ds = command_dataset(
        AffectedSOPClassUID=CT,
        CommandField=0x0001,
        MessageID=1234,
        Priority=1,
        CommandDataSetType=0x0102,
        AffectedSOPInstanceUID=SOP_INSTANCE,
        MoveOriginatorApplicationEntityTitle="MOVER",
        MoveOriginatorMessageID=77,
    )
    cmd = dimse.decode_command(pydicom_encode(ds))
    assert cmd.command_field == dimse.C_STORE_RQ
    assert cmd.message_id == 1234
    assert cmd.has_dataset
    assert cmd.get(dimse.PRIORITY) == 1
    assert cmd.get(dimse.AFFECTED_SOP_CLASS_UID) == CT
    assert cmd.get(dimse.AFFECTED_SOP_INSTANCE_UID) == SOP_INSTANCE
    assert cmd.get(dimse.MOVE_ORIGINATOR_AE_TITLE) == "MOVER"
    assert cmd.get(dimse.MOVE_ORIGINATOR_MESSAGE_ID) == 77
    assert cmd.get(dimse.COMMAND_GROUP_LENGTH) == ds.CommandGroupLength


@settings(max_examples=100, deadline=None)
@given(
    message_id=st.integers(0, 0xFFFF),
    uid=st.from_regex(r"[1-9][0-9]{0,3}(\.[1-9][0-9]{0,8}){1,6}", fullmatch=True),
    priority=st.sampled_from([0, 1, 2]),
)
def test_c_store_rq_matches_pydicom_for_many_values(
    message_id: int, uid: str, priority: int
) -> None:
    ds = command_dataset(
        AffectedSOPClassUID=CT,
        CommandField=0x0001,
        MessageID=message_id,
        Priority=priority,
        CommandDataSetType=0x0000,
        AffectedSOPInstanceUID=uid,
    )
    ours = dimse.c_store_rq(message_id, CT, uid, priority)
    assert ours == pydicom_encode(ds)
    assert dimse.decode_command(ours).get(dimse.AFFECTED_SOP_INSTANCE_UID) == uid
