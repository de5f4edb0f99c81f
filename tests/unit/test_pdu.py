"""The PDU codec (PS3.8 section 9.3): round trips, hand-built bytes, lengths, leniency, streaming.

Hand-built PDUs use the small builders below, written from PS3.8 Tables 9-11 to 9-26 and
PS3.7 Annex D.3.3, not from `store_scp.dicom.pdu`, so the decoder is checked against the
standard rather than against our own encoder.
"""

from __future__ import annotations

import struct

import pytest
from tests.pdu_tokens import tokens

from store_scp.dicom import pdu as P

VERIFICATION = "1.2.840.10008.1.1"
CT_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
IMPLICIT = "1.2.840.10008.1.2"
EXPLICIT = "1.2.840.10008.1.2.1"
APP_CONTEXT = "1.2.840.10008.3.1.1.1"
STORAGE_SERVICE = "1.2.840.10008.4.2"

# ---------------------------------------------------------------------------------------------
# Independent builders, straight from the tables of PS3.8 9.3 and PS3.7 D.3.3


def pdu_bytes(pdu_type: int, body: bytes, reserved: int = 0) -> bytes:
    """PDU type (1), reserved (1), PDU length (4, big endian), then the body."""
    return bytes((pdu_type, reserved)) + struct.pack(">I", len(body)) + body


def item(item_type: int, value: bytes, reserved: int = 0) -> bytes:
    """Item type (1), reserved (1), item length (2, big endian), then the value."""
    return bytes((item_type, reserved)) + struct.pack(">H", len(value)) + value


def u16(raw: bytes) -> bytes:
    return struct.pack(">H", len(raw)) + raw


def assoc_fixed(
    called: bytes,
    calling: bytes,
    version: int = 1,
    reserved: bytes = b"\x00\x00",
    reserved32: bytes = bytes(32),
) -> bytes:
    """Protocol version (2), reserved (2), called AE (16), calling AE (16), reserved (32)."""
    return (
        struct.pack(">H", version)
        + reserved
        + called.ljust(16, b" ")
        + calling.ljust(16, b" ")
        + reserved32
    )


def pc_rq(
    ctx_id: int, abstract: str, syntaxes: list[str], reserved: bytes = b"\x00\x00\x00"
) -> bytes:
    subs = item(0x30, abstract.encode()) + b"".join(item(0x40, ts.encode()) for ts in syntaxes)
    return item(0x20, bytes((ctx_id,)) + reserved + subs)


def pc_ac(ctx_id: int, result: int, syntax: str) -> bytes:
    return item(0x21, bytes((ctx_id, 0, result, 0)) + item(0x40, syntax.encode()))


def user_info(*subs: bytes) -> bytes:
    return item(0x50, b"".join(subs))


def max_length(n: int) -> bytes:
    return item(0x51, struct.pack(">I", n))


def impl_uid(uid: str) -> bytes:
    return item(0x52, uid.encode())


def impl_version(name: str) -> bytes:
    return item(0x55, name.encode())


def async_window(invoked: int, performed: int) -> bytes:
    return item(0x53, struct.pack(">HH", invoked, performed))


def role(uid: str, scu: int, scp: int) -> bytes:
    return item(0x54, u16(uid.encode()) + bytes((scu, scp)))


def sop_ext(uid: str, info: bytes) -> bytes:
    return item(0x56, u16(uid.encode()) + info)


def sop_common_ext(uid: str, service: str, related: list[str]) -> bytes:
    rel = b"".join(u16(r.encode()) for r in related)
    return item(0x57, u16(uid.encode()) + u16(service.encode()) + u16(rel))


def user_identity_rq(kind: int, positive: int, primary: bytes, secondary: bytes) -> bytes:
    return item(0x58, bytes((kind, positive)) + u16(primary) + u16(secondary))


def user_identity_ac(response: bytes) -> bytes:
    return item(0x59, u16(response))


def pdv(ctx_id: int, control: int, data: bytes) -> bytes:
    """PDV item length (4) counts the context id and the message control header."""
    return struct.pack(">IBB", len(data) + 2, ctx_id, control) + data


def decode_one(data: bytes, max_pdata: int = 1 << 20) -> P.PDU:
    reader = P.PDUReader(max_pdata)
    pdus = reader.feed(data)
    assert len(pdus) == 1
    assert reader.buffered == 0
    return pdus[0]


def minimal_rq_body(*extra_items: bytes, version: int = 1) -> bytes:
    return (
        assoc_fixed(b"STORE_SCP", b"MODALITY", version=version)
        + item(0x10, APP_CONTEXT.encode())
        + pc_rq(1, VERIFICATION, [IMPLICIT])
        + b"".join(extra_items)
        + user_info(max_length(16384), impl_uid("1.2.3.4"))
    )


# ---------------------------------------------------------------------------------------------
# Round trips of every PDU type and every item


def full_user_info() -> P.UserInformation:
    return P.UserInformation(
        max_length=16384,
        implementation_class_uid="1.2.826.0.1.3680043.2.1",
        implementation_version_name="SOME_SCU_1",
        async_ops_window=(5, 3),
        roles=[
            P.RoleSelection(CT_STORAGE, scu_role=True, scp_role=False),
            P.RoleSelection(MR_STORAGE, scu_role=False, scp_role=True),
        ],
        sop_class_extended=[(CT_STORAGE, b"\x01\x00\x01"), (MR_STORAGE, b"")],
        sop_class_common_extended=[
            P.SOPClassCommonExtended(CT_STORAGE, STORAGE_SERVICE, [CT_STORAGE + ".1", "1.2.3"]),
            P.SOPClassCommonExtended(MR_STORAGE, STORAGE_SERVICE, []),
        ],
        user_identity_rq=P.UserIdentityRQ(2, True, b"alice", b"s3cret"),
    )


def test_associate_rq_round_trip_with_every_user_information_sub_item() -> None:
    rq = P.AssociateRQ(
        called_ae="STORE_SCP",
        calling_ae="CT_SCANNER_01",
        application_context=APP_CONTEXT,
        presentation_contexts=[
            P.PresentationContextRQ(1, VERIFICATION, [IMPLICIT]),
            P.PresentationContextRQ(3, CT_STORAGE, ["1.2.840.10008.1.2.4.70", EXPLICIT, IMPLICIT]),
            P.PresentationContextRQ(255, MR_STORAGE, [EXPLICIT]),
        ],
        user_info=full_user_info(),
    )
    encoded = P.encode(rq)
    assert encoded[0] == P.A_ASSOCIATE_RQ
    assert struct.unpack(">I", encoded[2:6])[0] == len(encoded) - 6
    assert decode_one(encoded) == rq


def test_associate_ac_round_trip_with_user_identity_response() -> None:
    ac = P.AssociateAC(
        called_ae="STORE_SCP",
        calling_ae="CT_SCANNER_01",
        application_context=APP_CONTEXT,
        presentation_contexts=[
            P.PresentationContextAC(1, P.PCResult.ACCEPTANCE, IMPLICIT),
            P.PresentationContextAC(3, P.PCResult.ACCEPTANCE, "1.2.840.10008.1.2.4.70"),
            P.PresentationContextAC(5, P.PCResult.ABSTRACT_SYNTAX_NOT_SUPPORTED, ""),
            P.PresentationContextAC(7, P.PCResult.TRANSFER_SYNTAXES_NOT_SUPPORTED, ""),
            P.PresentationContextAC(9, P.PCResult.USER_REJECTION, ""),
        ],
        user_info=P.UserInformation(
            max_length=0,
            implementation_class_uid="2.25.1",
            implementation_version_name="STORE_SCP_010",
            async_ops_window=(1, 1),
            roles=[P.RoleSelection(CT_STORAGE, scu_role=True, scp_role=False)],
            user_identity_ac=b"server-token",
        ),
    )
    assert decode_one(P.encode(ac)) == ac


def test_user_identity_ac_empty_response_round_trips() -> None:
    ac = P.AssociateAC(
        "A", "B", APP_CONTEXT, [], P.UserInformation(16384, "1.2", user_identity_ac=b"")
    )
    decoded = decode_one(P.encode(ac))
    assert isinstance(decoded, P.AssociateAC)
    assert decoded.user_info.user_identity_ac == b""


@pytest.mark.parametrize(
    "pdu",
    [
        P.AssociateRJ(1, 1, 1),
        P.AssociateRJ(1, 1, 7),
        P.AssociateRJ(2, 3, 2),
        P.AssociateRJ(1, 2, 2),
        P.ReleaseRQ(),
        P.ReleaseRP(),
        P.Abort(0, 0),
        P.Abort(2, 6),
        P.PDataTF([P.PDV(1, True, True, b"\x01\x02")]),
        P.PDataTF(
            [
                P.PDV(1, True, False, b"cmd"),
                P.PDV(1, True, True, b""),
                P.PDV(3, False, False, b"x" * 1000),
                P.PDV(3, False, True, b"end"),
            ]
        ),
    ],
    ids=lambda p: type(p).__name__,
)
def test_round_trip_of_the_other_pdu_types(pdu: P.PDU) -> None:
    assert decode_one(P.encode(pdu)) == pdu


@pytest.mark.parametrize(
    ("pdu", "expected"),
    [
        (P.AssociateRJ(1, 2, 3), "03 00 00000004 00 01 02 03"),
        (P.ReleaseRQ(), "05 00 00000004 00000000"),
        (P.ReleaseRP(), "06 00 00000004 00000000"),
        (P.Abort(2, 6), "07 00 00000004 00 00 02 06"),
        (P.PDataTF([P.PDV(7, False, True, b"\xaa")]), "04 00 00000007 00000003 07 02 aa"),
        (P.PDataTF([P.PDV(1, True, False, b"")]), "04 00 00000006 00000002 01 01"),
    ],
)
def test_encoded_bytes_match_ps3_8(pdu: P.PDU, expected: str) -> None:
    assert P.encode(pdu) == bytes.fromhex(expected.replace(" ", ""))


def test_associate_rq_encoding_is_byte_exact() -> None:
    rq = P.AssociateRQ(
        called_ae="STORE_SCP",
        calling_ae="MODALITY",
        application_context=APP_CONTEXT,
        presentation_contexts=[P.PresentationContextRQ(1, VERIFICATION, [IMPLICIT])],
        user_info=P.UserInformation(max_length=16384, implementation_class_uid="1.2.3.4"),
    )
    assert P.encode(rq) == pdu_bytes(0x01, minimal_rq_body())


# ---------------------------------------------------------------------------------------------
# Decoding hand-built PDUs


def test_decode_hand_built_associate_rq() -> None:
    body = (
        assoc_fixed(b"STORE_SCP", b"MODALITY")
        + item(0x10, APP_CONTEXT.encode())
        + pc_rq(1, VERIFICATION, [IMPLICIT])
        + pc_rq(3, CT_STORAGE, ["1.2.840.10008.1.2.4.90", EXPLICIT])
        + user_info(
            max_length(32768),
            impl_uid("1.2.276.0.7230010.3.0.3.6.7"),
            async_window(0, 1),
            role(CT_STORAGE, 1, 0),
            role(MR_STORAGE, 1, 1),
            impl_version("OFFIS_DCMTK_367"),
            sop_ext(CT_STORAGE, b"\x01\x01"),
            sop_common_ext(CT_STORAGE, STORAGE_SERVICE, ["1.2.3.4.5", "1.2.3.4.6"]),
            user_identity_rq(1, 0, b"bob", b""),
        )
    )
    rq = decode_one(pdu_bytes(0x01, body))
    assert rq == P.AssociateRQ(
        called_ae="STORE_SCP",
        calling_ae="MODALITY",
        application_context=APP_CONTEXT,
        presentation_contexts=[
            P.PresentationContextRQ(1, VERIFICATION, [IMPLICIT]),
            P.PresentationContextRQ(3, CT_STORAGE, ["1.2.840.10008.1.2.4.90", EXPLICIT]),
        ],
        user_info=P.UserInformation(
            max_length=32768,
            implementation_class_uid="1.2.276.0.7230010.3.0.3.6.7",
            implementation_version_name="OFFIS_DCMTK_367",
            async_ops_window=(0, 1),
            roles=[
                P.RoleSelection(CT_STORAGE, True, False),
                P.RoleSelection(MR_STORAGE, True, True),
            ],
            sop_class_extended=[(CT_STORAGE, b"\x01\x01")],
            sop_class_common_extended=[
                P.SOPClassCommonExtended(CT_STORAGE, STORAGE_SERVICE, ["1.2.3.4.5", "1.2.3.4.6"])
            ],
            user_identity_rq=P.UserIdentityRQ(1, False, b"bob", b""),
        ),
        protocol_version=1,
    )


def test_decode_hand_built_associate_ac() -> None:
    body = (
        assoc_fixed(b"STORE_SCP", b"MODALITY")
        + item(0x10, APP_CONTEXT.encode())
        + pc_ac(1, 0, IMPLICIT)
        + pc_ac(3, 4, "")
        + user_info(max_length(0), impl_uid("2.25.9"), user_identity_ac(b"\x00\x01tok"))
    )
    ac = decode_one(pdu_bytes(0x02, body))
    assert ac == P.AssociateAC(
        "STORE_SCP",
        "MODALITY",
        APP_CONTEXT,
        [P.PresentationContextAC(1, 0, IMPLICIT), P.PresentationContextAC(3, 4, "")],
        P.UserInformation(
            max_length=0, implementation_class_uid="2.25.9", user_identity_ac=b"\x00\x01tok"
        ),
    )


def test_uid_padding_and_ae_padding_are_stripped() -> None:
    body = (
        assoc_fixed(b"  STORE_SCP", b"MOD\x00\x00")
        + item(0x10, APP_CONTEXT.encode() + b"\x00")
        + item(
            0x20,
            b"\x01\x00\x00\x00"
            + item(0x30, b"1.2.840.10008.1.1\x00")
            + item(0x40, b"1.2.840.10008.1.2\x00"),
        )
        + user_info(max_length(0), impl_uid("1.2.3\x00"))
    )
    rq = decode_one(pdu_bytes(0x01, body))
    assert isinstance(rq, P.AssociateRQ)
    assert (rq.called_ae, rq.calling_ae) == ("STORE_SCP", "MOD")
    assert rq.application_context == APP_CONTEXT
    assert rq.presentation_contexts == [P.PresentationContextRQ(1, VERIFICATION, [IMPLICIT])]
    assert rq.user_info.implementation_class_uid == "1.2.3"


def test_decode_hand_built_fixed_pdus() -> None:
    assert decode_one(bytes.fromhex("03000000000400010107")) == P.AssociateRJ(1, 1, 7)
    assert decode_one(bytes.fromhex("05000000000400000000")) == P.ReleaseRQ()
    assert decode_one(bytes.fromhex("06000000000400000000")) == P.ReleaseRP()
    assert decode_one(bytes.fromhex("07000000000400000201")) == P.Abort(2, 1)


def test_decode_hand_built_pdata_with_several_pdvs() -> None:
    raw = pdu_bytes(
        0x04,
        pdv(1, 0b01, b"\x08\x00") + pdv(1, 0b11, b"") + pdv(3, 0b00, b"abc") + pdv(3, 0b10, b"d"),
    )
    decoded = decode_one(raw)
    assert isinstance(decoded, P.PDataTF)
    assert [(p.context_id, p.is_command, p.is_last, bytes(p.data)) for p in decoded.pdvs] == [
        (1, True, False, b"\x08\x00"),
        (1, True, True, b""),
        (3, False, False, b"abc"),
        (3, False, True, b"d"),
    ]


def test_large_associate_rq_with_128_contexts_and_big_user_identity_fits_the_cap() -> None:
    syntaxes = [IMPLICIT, EXPLICIT, "1.2.840.10008.1.2.4.70", "1.2.840.10008.1.2.4.90"] * 3
    contexts = b"".join(
        pc_rq(2 * i + 1, f"1.2.840.10008.5.1.4.1.1.{i}", syntaxes) for i in range(128)
    )
    primary = b"J" * 60_000
    body = (
        assoc_fixed(b"STORE_SCP", b"MODALITY")
        + item(0x10, APP_CONTEXT.encode())
        + contexts
        + user_info(max_length(16384), impl_uid("1.2"), user_identity_rq(3, 1, primary, b""))
    )
    rq = decode_one(pdu_bytes(0x01, body))
    assert isinstance(rq, P.AssociateRQ)
    assert len(rq.presentation_contexts) == 128
    assert rq.presentation_contexts[127].id == 255
    assert rq.presentation_contexts[5].transfer_syntaxes == syntaxes
    assert rq.user_info.user_identity_rq is not None
    assert rq.user_info.user_identity_rq.primary == primary


# ---------------------------------------------------------------------------------------------
# Length checks


def reason_of(
    data: bytes, max_pdata: int = 1 << 20, max_assoc: int = P.DEFAULT_MAX_ASSOCIATE_LENGTH
) -> int:
    with pytest.raises(P.PDUError) as info:
        P.PDUReader(max_pdata, max_assoc).feed(data)
    return info.value.reason


def test_item_overrunning_the_pdu_is_rejected() -> None:
    body = assoc_fixed(b"A", b"B") + b"\x10\x00\x00\x30" + APP_CONTEXT.encode()  # claims 48
    assert reason_of(pdu_bytes(0x01, body)) == 6


def test_sub_item_overrunning_its_item_is_rejected() -> None:
    # The abstract syntax sub-item claims more than its presentation context item holds.
    bad_pc = item(0x20, b"\x01\x00\x00\x00" + b"\x30\x00\x00\x40" + VERIFICATION.encode())
    body = (
        assoc_fixed(b"A", b"B")
        + item(0x10, APP_CONTEXT.encode())
        + bad_pc
        + user_info(max_length(0), impl_uid("1.2"))
    )
    reason_of(pdu_bytes(0x01, body))


def test_user_info_sub_item_overrunning_the_user_info_item_is_rejected() -> None:
    bad_ui = item(0x50, b"\x51\x00\x00\x04" + b"\x00\x00" + b"\x52\x00\x00\x10" + b"1.2")
    body = assoc_fixed(b"A", b"B") + item(0x10, APP_CONTEXT.encode()) + bad_ui
    reason_of(pdu_bytes(0x01, body))


@pytest.mark.parametrize(
    "sub",
    [
        item(0x51, b"\x00\x00\x40"),  # maximum length of 3 bytes
        item(0x53, b"\x00\x01\x00"),  # async window of 3 bytes
        item(0x54, u16(b"1.2.3") + b"\x01"),  # role selection missing the SCP byte
        item(0x54, u16(b"1.2.3") + b"\x01\x00\x00"),  # one byte too many
        item(0x54, b"\x00\x20" + b"1.2.3" + b"\x01\x00"),  # UID length past the item
        item(0x56, b"\x00\x20" + b"1.2"),  # SOP class extended UID past the item
        item(0x57, u16(b"1.2") + b"\x00\x09" + b"1.2"),  # service class UID past the item
        item(0x57, u16(b"1.2") + u16(b"1.3") + b"\x00\x10" + u16(b"1.4")),  # related list too long
        item(0x57, u16(b"1.2") + u16(b"1.3") + b"\x00"),  # truncated related list length
        item(
            0x57, u16(b"1.2") + u16(b"1.3") + b"\x00\x05" + b"\x00\x09" + b"1.4"
        ),  # related UID past its list
        item(0x58, b"\x01\x00\x00"),  # user identity shorter than its fixed part
        item(0x58, b"\x01\x00\x00\x09abc"),  # primary field past the item
        item(0x58, b"\x02\x00" + u16(b"u") + b"\x00\x09pw"),  # secondary field past the item
        item(0x59, b"\x00\x05ab"),  # server response past the item
    ],
)
def test_malformed_user_information_sub_items_are_rejected(sub: bytes) -> None:
    body = (
        assoc_fixed(b"A", b"B") + item(0x10, APP_CONTEXT.encode()) + user_info(max_length(0), sub)
    )
    assert reason_of(pdu_bytes(0x01, body)) == 6


def test_associate_shorter_than_its_fixed_fields_is_rejected() -> None:
    reason_of(pdu_bytes(0x01, b"\x00\x01" + bytes(40)))


def test_associate_without_application_context_or_user_info_is_rejected() -> None:
    no_ctx = assoc_fixed(b"A", b"B") + pc_rq(1, VERIFICATION, [IMPLICIT]) + user_info(max_length(0))
    reason_of(pdu_bytes(0x01, no_ctx))
    no_ui = (
        assoc_fixed(b"A", b"B")
        + item(0x10, APP_CONTEXT.encode())
        + pc_rq(1, VERIFICATION, [IMPLICIT])
    )
    reason_of(pdu_bytes(0x01, no_ui))


def test_truncated_item_header_is_rejected() -> None:
    body = (
        assoc_fixed(b"A", b"B")
        + item(0x10, APP_CONTEXT.encode())
        + user_info(max_length(0))
        + b"\x99\x00"
    )
    reason_of(pdu_bytes(0x01, body))


@pytest.mark.parametrize("length", [0, 1])
def test_pdv_length_too_small_is_rejected(length: int) -> None:
    assert reason_of(pdu_bytes(0x04, struct.pack(">IBB", length, 1, 3) + b"ab")) == 6


def test_pdv_length_too_large_is_rejected() -> None:
    assert reason_of(pdu_bytes(0x04, struct.pack(">IBB", 6, 1, 3) + b"abc")) == 6
    # the second PDV overruns
    assert reason_of(pdu_bytes(0x04, pdv(1, 3, b"ok") + struct.pack(">IBB", 100, 1, 3) + b"x")) == 6


def test_pdata_without_pdv_or_with_truncated_pdv_header_is_rejected() -> None:
    reason_of(pdu_bytes(0x04, b""))
    reason_of(pdu_bytes(0x04, pdv(1, 3, b"ok") + b"\x00\x00\x00"))


def test_pdata_over_the_announced_maximum_is_rejected_from_the_header_alone() -> None:
    reader = P.PDUReader(max_pdata_length=1000)
    header = b"\x04\x00" + struct.pack(">I", 1001)
    with pytest.raises(P.PDUError) as info:
        reader.feed(header)  # no body byte has arrived yet
    assert info.value.reason == 6
    # exactly at the maximum is fine
    body = pdv(1, 2, b"x" * 994)
    assert len(body) == 1000
    assert P.PDUReader(1000).feed(pdu_bytes(0x04, body)) == [
        P.PDataTF([P.PDV(1, False, True, b"x" * 994)])
    ]


def test_pdata_over_the_maximum_is_rejected_when_the_header_arrives_in_pieces() -> None:
    reader = P.PDUReader(max_pdata_length=1000)
    header = b"\x04\x00" + struct.pack(">I", 5000)
    assert reader.feed(header[:3]) == []
    with pytest.raises(P.PDUError):
        reader.feed(header[3:])


def test_associate_over_its_cap_is_rejected_from_the_header_alone() -> None:
    reader = P.PDUReader(max_pdata_length=16384, max_associate_length=4096)
    for pdu_type in (0x01, 0x02):
        with pytest.raises(P.PDUError) as info:
            reader.feed(bytes((pdu_type, 0)) + struct.pack(">I", 4097))
        assert info.value.reason == 6
        reader = P.PDUReader(max_pdata_length=16384, max_associate_length=4096)
    # an A-ASSOCIATE longer than the P-DATA maximum but under its own cap is fine
    big = pdu_bytes(0x01, minimal_rq_body())
    assert len(big) - 6 > 100
    assert len(P.PDUReader(100, 4096).feed(big)) == 1
    with pytest.raises(P.PDUError):
        P.PDUReader(100, len(big) - 7).feed(big)


@pytest.mark.parametrize("pdu_type", [0x03, 0x05, 0x06, 0x07])
@pytest.mark.parametrize("length", [0, 3, 5, 1 << 30])
def test_fixed_size_pdus_with_a_wrong_length_are_rejected(pdu_type: int, length: int) -> None:
    header = bytes((pdu_type, 0)) + struct.pack(">I", length)
    assert reason_of(header) == 6


@pytest.mark.parametrize("pdu_type", [0x03, 0x05, 0x06, 0x07])
@pytest.mark.parametrize("size", [0, 3, 5])
def test_decode_body_checks_fixed_size_bodies(pdu_type: int, size: int) -> None:
    with pytest.raises(P.PDUError):
        P.decode_body(pdu_type, memoryview(bytes(size)))


@pytest.mark.parametrize("pdu_type", [0x00, 0x08, 0x09, 0x10, 0x7F, 0xFF])
def test_unknown_pdu_type_is_reason_1(pdu_type: int) -> None:
    # Decided from the header: 4 bytes of body or 100 MB claimed, the answer is the same.
    assert reason_of(bytes((pdu_type, 0)) + struct.pack(">I", 4)) == 1
    assert reason_of(bytes((pdu_type, 0)) + struct.pack(">I", 100_000_000)) == 1
    with pytest.raises(P.PDUError) as info:
        P.decode_body(pdu_type, memoryview(bytes(4)))
    assert info.value.reason == 1


def sample_stream() -> tuple[bytes, list[P.PDU]]:
    """Several PDUs of every kind back to back, and what they decode to."""
    rq = P.AssociateRQ(
        "STORE_SCP",
        "SCU",
        APP_CONTEXT,
        [P.PresentationContextRQ(1, VERIFICATION, [IMPLICIT])],
        P.UserInformation(16384, "1.2.3", "V1"),
    )
    pdus: list[P.PDU] = [
        rq,
        P.PDataTF([P.PDV(1, True, True, b"cmd!")]),
        P.PDataTF([P.PDV(1, False, False, b"ab" * 50), P.PDV(1, False, True, b"zz")]),
        P.ReleaseRQ(),
        P.ReleaseRP(),
        P.Abort(2, 6),
    ]
    return b"".join(P.encode(x) for x in pdus), pdus


def _plain(pdu: P.PDU) -> P.PDU:
    """A PDU with its PDV data as bytes, for comparison."""
    if isinstance(pdu, P.PDataTF):
        return P.PDataTF(
            [P.PDV(v.context_id, v.is_command, v.is_last, bytes(v.data)) for v in pdu.pdvs]
        )
    return pdu


def test_reader_split_at_every_byte_boundary_gives_the_same_pdus() -> None:
    data, expected = sample_stream()
    for cut in range(len(data) + 1):
        reader = P.PDUReader(4096)
        got = reader.feed(data[:cut]) + reader.feed(data[cut:])
        assert [_plain(x) for x in got] == expected, cut
        assert reader.buffered == 0


def test_reader_byte_by_byte_gives_the_same_pdus() -> None:
    data, expected = sample_stream()
    reader = P.PDUReader(4096)
    got: list[P.PDU] = []
    for i in range(len(data)):
        got += reader.feed(data[i : i + 1])
    assert [_plain(x) for x in got] == expected


def test_reader_buffer_stays_bounded_after_an_error() -> None:
    reader = P.PDUReader(max_pdata_length=1024)
    reader.feed(b"\x04\x00")  # a partial header is buffered
    for _ in range(10):
        with pytest.raises(P.PDUError):
            reader.feed(b"\x00\x01\x00\x00" + bytes(4096))  # P-DATA of 65536 bytes: over max
    assert reader.buffered <= 1024 + 6


# ---------------------------------------------------------------------------------------------
# PDUStreamReader: P-DATA as PDV chunks, never buffered

Token = tuple[object, ...]


def normalize_pdus(pdus: list[P.PDU]) -> list[Token]:
    """PDUs as tokens; the PDVs of a P-DATA-TF merged where they continue one another."""
    items: list[P.PDU | P.PDV] = []
    for pdu in pdus:
        if isinstance(pdu, P.PDataTF):
            items.append(P.PDataTF([]))
            items.extend(pdu.pdvs)
        else:
            items.append(pdu)
    return normalize_items(items)


def normalize_items(items: list[P.PDU | P.PDV]) -> list[Token]:
    """Stream reader output as tokens: chunks of one PDV (and consecutive PDVs of one message
    stream in one PDU) merged, so that only what DIMSE sees is compared."""
    for it in items:
        if isinstance(it, P.PDataTF):
            assert it.pdvs == []  # a marker
    return tokens(items)


def stream_feed(
    data: bytes, cuts: list[int], max_pdata: int = 4096
) -> tuple[list[Token], P.PDUStreamReader]:
    reader = P.PDUStreamReader(max_pdata)
    items: list[P.PDU | P.PDV] = []
    prev = 0
    for cut in [*cuts, len(data)]:
        items += reader.feed(data[prev:cut])
        prev = cut
        assert reader.buffered <= max(max_pdata, 1 << 20) + 6
    return normalize_items(items), reader


def test_stream_reader_split_at_every_byte_boundary_gives_the_same_pdus() -> None:
    data, expected = sample_stream()
    want = normalize_pdus(expected)
    for cut in range(len(data) + 1):
        got, reader = stream_feed(data, [cut])
        assert reader.error is None
        assert got == want, cut
        assert reader.buffered == 0


def test_stream_reader_byte_by_byte_never_buffers_pdata() -> None:
    data = P.encode(
        P.PDataTF([P.PDV(1, False, False, b"a" * 301), P.PDV(1, False, True, b"b" * 7)])
    )
    reader = P.PDUStreamReader(4096)
    items: list[P.PDU | P.PDV] = []
    for i in range(len(data)):
        items += reader.feed(data[i : i + 1])
        assert reader.buffered <= 6  # a PDU or PDV header at most
    assert normalize_items(items) == [
        ("P-DATA-TF",),
        ("pdv", 1, False, b"a" * 301 + b"b" * 7, True),
    ]
    assert [p.is_last for p in items if isinstance(p, P.PDV)].count(True) == 1


def test_stream_reader_chunks_are_views_and_only_the_final_chunk_is_last() -> None:
    payload = bytes(range(256)) * 64  # 16 KiB
    data = P.encode(P.PDataTF([P.PDV(3, False, True, payload)]))
    reader = P.PDUStreamReader(1 << 20)
    chunks: list[P.PDV] = []
    for start in range(0, len(data), 1000):
        part = bytearray(data[start : start + 1000])
        got = reader.feed(part)
        for it in got:
            if isinstance(it, P.PDV):
                assert isinstance(it.data, memoryview)
                assert it.data.obj is part  # zero copy
                chunks.append(P.PDV(it.context_id, it.is_command, it.is_last, bytes(it.data)))
        assert reader.buffered <= 6
    assert b"".join(bytes(c.data) for c in chunks) == payload
    assert [c.is_last for c in chunks] == [False] * (len(chunks) - 1) + [True]
    assert len(chunks) > 10


def test_stream_reader_zero_length_pdv() -> None:
    data = P.encode(P.PDataTF([P.PDV(1, True, True, b"")])) + P.encode(P.ReleaseRQ())
    for cut in range(len(data) + 1):
        got, reader = stream_feed(data, [cut])
        assert reader.error is None
        assert got == [("P-DATA-TF",), ("pdv", 1, True, b"", True), ("pdu", P.ReleaseRQ())]


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (pdu_bytes(0x04, struct.pack(">IBB", 1, 1, 3) + b"ab"), 6),  # PDV length too small
        (pdu_bytes(0x04, struct.pack(">IBB", 6, 1, 3) + b"abc"), 6),  # PDV past its PDU
        (pdu_bytes(0x04, pdv(1, 3, b"ok") + b"\x00\x00\x00"), 6),  # PDU ends in a PDV header
        (pdu_bytes(0x04, b""), 6),  # no PDV
        (b"\x04\x00" + struct.pack(">I", 4097), 6),  # over the announced maximum
        (b"\x01\x00" + struct.pack(">I", (1 << 20) + 1), 6),  # A-ASSOCIATE over its cap
        (b"\x05\x00\x00\x00\x00\x05", 6),  # fixed-size PDU, wrong length
        (b"\x09\x00\x00\x00\x00\x04", 1),  # unknown type
        (b"\x01\x00\x00\x00\x00\x00", 6),  # A-ASSOCIATE without a body
        (pdu_bytes(0x01, assoc_fixed(b"A", b"B") + b"\x10\x00\x00\x30"), 6),  # item overrun
    ],
)
def test_stream_reader_length_checks_match_the_pdu_reader(data: bytes, reason: int) -> None:
    assert reason_of(data, max_pdata=4096) == reason
    good = P.encode(P.ReleaseRP())
    for cut in range(len(good + data) + 1):
        reader = P.PDUStreamReader(4096)
        stream = good + data + b"\x05\x00\x00\x00\x00\x04\x00\x00\x00\x00"
        items = reader.feed(stream[:cut]) + reader.feed(stream[cut:])
        assert reader.error is not None
        assert reader.error.reason == reason
        assert items[0] == P.ReleaseRP()  # what came before the error is returned
        assert P.ReleaseRQ() not in items  # nothing after it
        before = reader.buffered
        assert reader.feed(b"\x05\x00\x00\x00\x00\x04" * 100) == []  # the stream is dead
        assert reader.buffered == before


def test_stream_reader_rejects_oversized_pdata_from_the_header_alone() -> None:
    reader = P.PDUStreamReader(1000)
    assert reader.feed(b"\x04\x00" + struct.pack(">I", 1001)) == []
    assert reader.error is not None
    assert reader.buffered <= 6


# ---------------------------------------------------------------------------------------------
# fragment()


@pytest.mark.parametrize("max_pdu", [8, 9, 16, 101, 4096, 16383, 16384])
@pytest.mark.parametrize("size", [0, 1, 10, 1000, 50_000])
def test_fragment_respects_the_peer_maximum_and_reassembles(max_pdu: int, size: int) -> None:
    data = bytes(i % 251 for i in range(size))
    encoded = list(P.fragment(3, data, False, max_pdu))
    assert encoded
    reader = P.PDUReader(max_pdu)
    pdvs: list[P.PDV] = []
    for raw in encoded:
        length = struct.unpack(">I", raw[2:6])[0]
        assert raw[0] == 0x04
        assert length == len(raw) - 6
        assert length <= max_pdu
        [pdu] = reader.feed(raw)
        assert isinstance(pdu, P.PDataTF)
        assert len(pdu.pdvs) == 1
        pdvs.append(pdu.pdvs[0])
    assert b"".join(bytes(p.data) for p in pdvs) == data
    assert [p.is_last for p in pdvs] == [False] * (len(pdvs) - 1) + [True]
    assert all(p.context_id == 3 and not p.is_command for p in pdvs)
    if size:
        # as few PDUs as the maximum allows with even-length PDV values (PS3.8 E.2)
        assert len(pdvs) == -(-size // ((max_pdu - 6) & ~1))
        assert all(len(p.data) % 2 == 0 for p in pdvs[:-1])


def test_fragment_command_flag_and_unlimited_peer() -> None:
    data = b"c" * (3 << 20)
    encoded = list(P.fragment(1, memoryview(data), True, 0))
    # 0 means unlimited; we still cut so that each PDU is at most 1 MiB long
    assert len(encoded) == 4
    lengths = [struct.unpack(">I", raw[2:6])[0] for raw in encoded]
    assert max(lengths) <= 1 << 20
    reader = P.PDUReader(1 << 20)
    pdvs = [pdv for raw in encoded for p in reader.feed(raw) for pdv in p.pdvs]  # type: ignore[union-attr]
    assert all(p.is_command for p in pdvs)
    assert b"".join(bytes(p.data) for p in pdvs) == data


@pytest.mark.parametrize("max_pdu", [1, 5, 6, 7])
def test_fragment_refuses_a_maximum_too_small_for_any_data(max_pdu: int) -> None:
    with pytest.raises(P.PDUError):
        list(P.fragment(1, b"abc", False, max_pdu))


def test_encode_refuses_what_cannot_be_encoded() -> None:
    with pytest.raises(P.PDUError):
        P.encode(P.AssociateRQ("", "B", APP_CONTEXT, [], P.UserInformation(0, "1.2")))
    with pytest.raises(P.PDUError):
        P.encode(P.AssociateRQ("A" * 17, "B", APP_CONTEXT, [], P.UserInformation(0, "1.2")))
    big = P.UserInformation(0, "1.2", user_identity_rq=P.UserIdentityRQ(1, False, b"x" * 70_000))
    with pytest.raises((P.PDUError, struct.error)):
        P.encode(P.AssociateRQ("A", "B", APP_CONTEXT, [], big))
    with pytest.raises(TypeError):
        P.encode("not a pdu")  # type: ignore[arg-type]
