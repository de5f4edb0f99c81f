"""Association negotiation: the transfer syntax preference order, policy checks, replies."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from store_scp.dicom import pdu as P
from store_scp.dicom import uids
from store_scp.dicom.negotiation import (
    Policy,
    check_request,
    choose_transfer_syntax,
    negotiate,
)

VERIFICATION = "1.2.840.10008.1.1"
CT = "1.2.840.10008.5.1.4.1.1.2"
MR = "1.2.840.10008.5.1.4.1.1.4"
SC = "1.2.840.10008.5.1.4.1.1.7"
APP_CONTEXT = "1.2.840.10008.3.1.1.1"
PRIVATE = "1.3.6.1.4.1.9590.100.1.2.999"

IMPLICIT = "1.2.840.10008.1.2"
EXPLICIT = "1.2.840.10008.1.2.1"
BIG = "1.2.840.10008.1.2.2"
DEFLATE = "1.2.840.10008.1.2.1.99"
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
JPEG_EXTENDED = "1.2.840.10008.1.2.4.51"
JPEG_LOSSLESS_14 = "1.2.840.10008.1.2.4.57"
JPEG_LOSSLESS_SV1 = "1.2.840.10008.1.2.4.70"
JLS_LOSSLESS = "1.2.840.10008.1.2.4.80"
JLS_NEAR = "1.2.840.10008.1.2.4.81"
J2K_LOSSLESS = "1.2.840.10008.1.2.4.90"
J2K = "1.2.840.10008.1.2.4.91"
MPEG2 = "1.2.840.10008.1.2.4.100"
H264 = "1.2.840.10008.1.2.4.102"
HEVC = "1.2.840.10008.1.2.4.107"
JXL_LOSSLESS = "1.2.840.10008.1.2.4.110"
JXL_RECOMPRESSION = "1.2.840.10008.1.2.4.111"
JXL = "1.2.840.10008.1.2.4.112"
HTJ2K_LOSSLESS = "1.2.840.10008.1.2.4.201"
HTJ2K_RPCL = "1.2.840.10008.1.2.4.202"
HTJ2K = "1.2.840.10008.1.2.4.203"
RLE = "1.2.840.10008.1.2.5"
JPIP = "1.2.840.10008.1.2.4.94"
UNKNOWN_TS = "1.2.3.4.5.6"

# Classified here from PS3.6 Annex A's names, independently of uids.TRANSFER_SYNTAXES.
LOSSLESS_COMPRESSED = [
    JPEG_LOSSLESS_14,
    JPEG_LOSSLESS_SV1,
    JLS_LOSSLESS,
    J2K_LOSSLESS,
    JXL_LOSSLESS,
    HTJ2K_LOSSLESS,
    HTJ2K_RPCL,
    RLE,
]
LOSSY_ENCAPSULATED = [
    JPEG_BASELINE,
    JPEG_EXTENDED,
    JLS_NEAR,
    J2K,
    MPEG2,
    H264,
    HEVC,
    JXL_RECOMPRESSION,
    JXL,
    HTJ2K,
]
LAST_RESORT = [BIG, DEFLATE]
UNUSABLE = [JPIP, UNKNOWN_TS, ""]
ALL = [*LOSSLESS_COMPRESSED, EXPLICIT, IMPLICIT, *LOSSY_ENCAPSULATED, *LAST_RESORT, *UNUSABLE]


KNOWN = {*LOSSLESS_COMPRESSED, *LOSSY_ENCAPSULATED, EXPLICIT, IMPLICIT, *LAST_RESORT}


def expected_choice(offered: list[str], verification: bool) -> str | None:
    """The documented order, as an oracle. "Offered first" is read as the first syntax of the
    list that we recognise (an unknown or refused UID in front does not count)."""
    if not verification:
        for ts in offered:
            if ts in LOSSLESS_COMPRESSED:
                return ts
        recognised = [ts for ts in offered if ts in KNOWN]
        if recognised and recognised[0] in LOSSY_ENCAPSULATED:
            return recognised[0]
    for ts in (EXPLICIT, IMPLICIT):
        if ts in offered:
            return ts
    if not verification:
        for ts in offered:
            if ts in LOSSY_ENCAPSULATED:
                return ts
    for ts in offered:
        if ts in LAST_RESORT:
            return ts
    return None


@pytest.mark.parametrize(
    ("offered", "expected"),
    [
        ([IMPLICIT], IMPLICIT),
        ([EXPLICIT], EXPLICIT),
        ([IMPLICIT, EXPLICIT], EXPLICIT),
        ([EXPLICIT, IMPLICIT], EXPLICIT),
        ([IMPLICIT, JPEG_LOSSLESS_SV1], JPEG_LOSSLESS_SV1),
        ([EXPLICIT, J2K_LOSSLESS, RLE], J2K_LOSSLESS),
        ([RLE, J2K_LOSSLESS, EXPLICIT], RLE),
        ([HTJ2K_LOSSLESS, JXL_LOSSLESS, EXPLICIT, IMPLICIT], HTJ2K_LOSSLESS),
        ([JPEG_BASELINE, EXPLICIT], JPEG_BASELINE),  # offered first: the sender holds it so
        ([JPEG_BASELINE, IMPLICIT], JPEG_BASELINE),
        ([EXPLICIT, JPEG_BASELINE], EXPLICIT),  # behind uncompressed otherwise
        ([IMPLICIT, J2K, EXPLICIT], EXPLICIT),
        ([H264, EXPLICIT, IMPLICIT], H264),
        ([UNKNOWN_TS, JPEG_BASELINE, EXPLICIT], JPEG_BASELINE),
        ([DEFLATE, JPEG_BASELINE, EXPLICIT], EXPLICIT),
        ([JPEG_BASELINE, J2K_LOSSLESS, EXPLICIT], J2K_LOSSLESS),
        ([JPEG_BASELINE, J2K, JPEG_LOSSLESS_14], JPEG_LOSSLESS_14),
        ([JPEG_BASELINE, J2K], JPEG_BASELINE),
        ([J2K, JPEG_BASELINE], J2K),
        ([HTJ2K, JXL], HTJ2K),
        ([H264, MPEG2], H264),
        ([BIG, IMPLICIT], IMPLICIT),
        ([DEFLATE, EXPLICIT], EXPLICIT),
        ([BIG, JPEG_BASELINE], JPEG_BASELINE),
        ([DEFLATE, BIG], DEFLATE),
        ([BIG, DEFLATE], BIG),
        ([BIG], BIG),
        ([DEFLATE], DEFLATE),
        ([JPIP], None),
        ([UNKNOWN_TS, JPIP], None),
        ([], None),
        ([UNKNOWN_TS, IMPLICIT], IMPLICIT),
        ([JPIP, JPEG_BASELINE], JPEG_BASELINE),
    ],
)
def test_preference_order_examples(offered: list[str], expected: str | None) -> None:
    assert choose_transfer_syntax(offered) == expected


@pytest.mark.parametrize(
    ("offered", "expected"),
    [
        ([JPEG_LOSSLESS_SV1, IMPLICIT], IMPLICIT),
        ([RLE, EXPLICIT, IMPLICIT], EXPLICIT),
        ([JPEG_BASELINE, J2K_LOSSLESS], None),
        ([JPEG_BASELINE, DEFLATE], DEFLATE),
        ([HTJ2K_LOSSLESS, BIG], BIG),
    ],
)
def test_verification_never_gets_an_encapsulated_syntax(
    offered: list[str], expected: str | None
) -> None:
    assert choose_transfer_syntax(offered, encapsulated_ok=False) == expected


@settings(max_examples=300, deadline=None)
@given(
    offered=st.lists(st.sampled_from(ALL), max_size=10),
    verification=st.booleans(),
)
def test_preference_order_for_many_combinations(offered: list[str], verification: bool) -> None:
    got = choose_transfer_syntax(offered, encapsulated_ok=not verification)
    assert got == expected_choice(offered, verification)
    if got is not None:
        assert got in offered
        assert got in uids.TRANSFER_SYNTAXES
        if verification:
            assert not uids.TRANSFER_SYNTAXES[got].encapsulated


def test_the_oracle_classification_agrees_with_the_table() -> None:
    for ts in LOSSLESS_COMPRESSED:
        assert uids.TRANSFER_SYNTAXES[ts].encapsulated and uids.TRANSFER_SYNTAXES[ts].lossless
    for ts in LOSSY_ENCAPSULATED:
        assert uids.TRANSFER_SYNTAXES[ts].encapsulated and not uids.TRANSFER_SYNTAXES[ts].lossless
    assert JPIP not in uids.TRANSFER_SYNTAXES


# --- negotiate() -----------------------------------------------------------------------------


def rq(
    contexts: list[P.PresentationContextRQ],
    *,
    called: str = "STORE_SCP",
    calling: str = "MODALITY",
    app_context: str = APP_CONTEXT,
    version: int = 1,
    roles: list[P.RoleSelection] | None = None,
    async_window: tuple[int, int] | None = None,
    max_length: int | None = 16384,
) -> P.AssociateRQ:
    return P.AssociateRQ(
        called_ae=called,
        calling_ae=calling,
        application_context=app_context,
        presentation_contexts=contexts,
        user_info=P.UserInformation(
            max_length=max_length,
            implementation_class_uid="1.2.3",
            roles=roles or [],
            async_ops_window=async_window,
        ),
        protocol_version=version,
    )


POLICY = Policy(ae_title="STORE_SCP")
BASIC = [P.PresentationContextRQ(1, VERIFICATION, [IMPLICIT])]


def results(outcome_accept: P.AssociateAC | None) -> dict[int, tuple[int, str]]:
    assert outcome_accept is not None
    return {pc.id: (pc.result, pc.transfer_syntax) for pc in outcome_accept.presentation_contexts}


def test_accepts_verification_and_storage() -> None:
    out = negotiate(
        rq(
            [
                P.PresentationContextRQ(1, VERIFICATION, [IMPLICIT]),
                P.PresentationContextRQ(3, CT, [JPEG_LOSSLESS_SV1, EXPLICIT]),
                P.PresentationContextRQ(5, MR, [IMPLICIT, EXPLICIT]),
            ]
        ),
        POLICY,
    )
    assert out.reject is None
    assert out.accept is not None
    assert results(out.accept) == {1: (0, IMPLICIT), 3: (0, JPEG_LOSSLESS_SV1), 5: (0, EXPLICIT)}
    assert out.contexts == {
        1: (VERIFICATION, IMPLICIT),
        3: (CT, JPEG_LOSSLESS_SV1),
        5: (MR, EXPLICIT),
    }
    assert out.accept.application_context == APP_CONTEXT
    assert out.accept.user_info.implementation_class_uid == uids.IMPLEMENTATION_CLASS_UID
    assert out.accept.user_info.implementation_version_name == uids.IMPLEMENTATION_VERSION_NAME
    assert (out.accept.called_ae, out.accept.calling_ae) == ("STORE_SCP", "MODALITY")
    # the AC encodes and decodes
    decoded = P.PDUReader(1 << 20).feed(P.encode(out.accept))
    assert decoded == [out.accept]


def test_unknown_abstract_syntax_is_result_3() -> None:
    out = negotiate(
        rq(
            [
                P.PresentationContextRQ(
                    1, "1.2.840.10008.5.1.4.1.2.1.1", [IMPLICIT]
                ),  # a Q/R class
                P.PresentationContextRQ(
                    3, "1.2.840.10008.1.20.1", [IMPLICIT]
                ),  # Storage Commitment
                P.PresentationContextRQ(5, "1.2.840.10008.1.3.10", [EXPLICIT]),  # Media Storage DIR
                P.PresentationContextRQ(7, PRIVATE, [IMPLICIT]),
            ]
        ),
        POLICY,
    )
    assert results(out.accept) == {1: (3, ""), 3: (3, ""), 5: (3, ""), 7: (3, "")}
    assert out.contexts == {}


def test_no_known_transfer_syntax_is_result_4() -> None:
    out = negotiate(
        rq(
            [
                P.PresentationContextRQ(1, CT, [JPIP, UNKNOWN_TS]),
                P.PresentationContextRQ(3, VERIFICATION, [JPEG_LOSSLESS_SV1]),
                P.PresentationContextRQ(5, MR, []),
            ]
        ),
        POLICY,
    )
    assert results(out.accept) == {1: (4, ""), 3: (4, ""), 5: (4, "")}
    assert out.contexts == {}


def test_private_sop_class_only_when_configured() -> None:
    contexts = [P.PresentationContextRQ(1, PRIVATE, [EXPLICIT])]
    assert results(negotiate(rq(contexts), POLICY).accept) == {1: (3, "")}
    policy = Policy(ae_title="STORE_SCP", private_sop_classes=frozenset({PRIVATE}))
    out = negotiate(rq(contexts), policy)
    assert results(out.accept) == {1: (0, EXPLICIT)}
    assert out.contexts == {1: (PRIVATE, EXPLICIT)}


@pytest.mark.parametrize(
    ("request_kwargs", "policy", "expected"),
    [
        ({"called": "SOMEONE_ELSE"}, POLICY, (1, 1, 7)),
        (
            {"calling": "INTRUDER"},
            Policy("STORE_SCP", allowed_calling_aes=frozenset({"CT1"})),
            (1, 1, 3),
        ),
        ({"app_context": "1.2.3.4"}, POLICY, (1, 1, 2)),
        ({"version": 0}, POLICY, (1, 2, 2)),
        ({"version": 2}, POLICY, (1, 2, 2)),
        ({"version": 0xFFFE}, POLICY, (1, 2, 2)),
    ],
)
def test_rejections(request_kwargs: dict, policy: Policy, expected: tuple[int, int, int]) -> None:  # type: ignore[type-arg]
    request = rq(BASIC, **request_kwargs)
    assert check_request(request, policy) == expected
    out = negotiate(request, policy)
    assert out.accept is None
    assert out.reject == P.AssociateRJ(*expected)
    assert out.reason
    assert P.PDUReader(64).feed(P.encode(out.reject)) == [out.reject]


@pytest.mark.parametrize("version", [1, 3, 0x8001, 0xFFFF])
def test_protocol_version_with_bit_0_set_is_accepted(version: int) -> None:
    assert negotiate(rq(BASIC, version=version), POLICY).accept is not None


def test_called_ae_not_required_and_calling_ae_allowed() -> None:
    policy = Policy("STORE_SCP", require_called_ae=False, allowed_calling_aes=frozenset({"CT1"}))
    out = negotiate(rq(BASIC, called="ANY_NAME", calling="CT1"), policy)
    assert out.accept is not None
    assert out.accept.called_ae == "ANY_NAME"


def test_role_selection_reply_only_for_accepted_contexts() -> None:
    roles = [
        P.RoleSelection(CT, scu_role=True, scp_role=True),
        P.RoleSelection(MR, scu_role=True, scp_role=False),
        P.RoleSelection(
            "1.2.840.10008.5.1.4.1.2.1.1", scu_role=True, scp_role=True
        ),  # rejected (3)
        P.RoleSelection(SC, scu_role=True, scp_role=False),  # rejected (4)
        P.RoleSelection("1.2.840.10008.5.1.4.1.1.1", scu_role=True, scp_role=False),  # not proposed
    ]
    out = negotiate(
        rq(
            [
                P.PresentationContextRQ(1, CT, [EXPLICIT]),
                P.PresentationContextRQ(3, MR, [EXPLICIT]),
                P.PresentationContextRQ(5, "1.2.840.10008.5.1.4.1.2.1.1", [EXPLICIT]),
                P.PresentationContextRQ(7, SC, [JPIP]),
                P.PresentationContextRQ(9, VERIFICATION, [IMPLICIT]),
            ],
            roles=roles,
        ),
        POLICY,
    )
    assert out.accept is not None
    assert results(out.accept) == {
        1: (0, EXPLICIT),
        3: (0, EXPLICIT),
        5: (3, ""),
        7: (4, ""),
        9: (0, IMPLICIT),
    }
    assert sorted(
        (r.sop_class_uid, r.scu_role, r.scp_role) for r in out.accept.user_info.roles
    ) == sorted([(CT, True, False), (MR, True, False)])


def test_no_role_reply_without_role_proposal() -> None:
    out = negotiate(rq([P.PresentationContextRQ(1, CT, [EXPLICIT])]), POLICY)
    assert out.accept is not None
    assert out.accept.user_info.roles == []


def test_context_rejected_when_only_the_scp_role_is_proposed() -> None:
    out = negotiate(
        rq(
            [
                P.PresentationContextRQ(1, CT, [EXPLICIT]),
                P.PresentationContextRQ(3, MR, [EXPLICIT]),
            ],
            roles=[P.RoleSelection(CT, scu_role=False, scp_role=True)],
        ),
        POLICY,
    )
    assert out.accept is not None
    assert results(out.accept) == {1: (1, ""), 3: (0, EXPLICIT)}
    assert out.contexts == {3: (MR, EXPLICIT)}
    assert out.accept.user_info.roles == []


def test_role_reply_never_grants_a_role_that_was_not_proposed() -> None:
    out = negotiate(
        rq(BASIC, roles=[P.RoleSelection(VERIFICATION, scu_role=False, scp_role=True)]),
        POLICY,
    )
    assert out.accept is not None
    for reply in out.accept.user_info.roles:
        assert not reply.scu_role  # the requestor proposed SCU = 0
        assert not reply.scp_role  # we never act as SCU


def test_async_window_answered_only_when_proposed() -> None:
    out = negotiate(rq(BASIC, async_window=(10, 5)), POLICY)
    assert out.accept is not None
    assert out.accept.user_info.async_ops_window == (1, 1)
    out = negotiate(rq(BASIC, async_window=(0, 0)), POLICY)
    assert out.accept is not None
    assert out.accept.user_info.async_ops_window == (1, 1)
    out = negotiate(rq(BASIC), POLICY)
    assert out.accept is not None
    assert out.accept.user_info.async_ops_window is None
    encoded = P.encode(out.accept)
    assert b"\x53\x00\x00\x04" not in encoded


@pytest.mark.parametrize("ours", [4096, 16384, 1 << 20, 0])
@pytest.mark.parametrize("theirs", [None, 0, 16382])
def test_max_length_is_the_policys_and_peer_max_is_recorded(ours: int, theirs: int | None) -> None:
    out = negotiate(rq(BASIC, max_length=theirs), Policy("STORE_SCP", max_pdu_length=ours))
    assert out.accept is not None
    assert out.accept.user_info.max_length == ours
    assert out.peer_max_pdu == (theirs or 0)


def test_repeated_context_ids_are_answered_once() -> None:
    out = negotiate(
        rq(
            [
                P.PresentationContextRQ(1, CT, [EXPLICIT]),
                P.PresentationContextRQ(1, MR, [IMPLICIT]),
                P.PresentationContextRQ(3, "1.2.3", [IMPLICIT]),
                P.PresentationContextRQ(3, MR, [IMPLICIT]),
                P.PresentationContextRQ(5, MR, [IMPLICIT]),
            ]
        ),
        POLICY,
    )
    assert out.accept is not None
    ids = [pc.id for pc in out.accept.presentation_contexts]
    assert ids == [1, 3, 5]
    assert results(out.accept) == {1: (0, EXPLICIT), 3: (3, ""), 5: (0, IMPLICIT)}
    assert out.contexts == {1: (CT, EXPLICIT), 5: (MR, IMPLICIT)}


def test_every_storage_sop_class_is_accepted() -> None:
    contexts = [
        P.PresentationContextRQ(2 * (i % 128) + 1, uid, [IMPLICIT])
        for i, uid in enumerate(sorted(uids.STORAGE_SOP_CLASSES))
    ]
    for start in range(0, len(contexts), 128):
        out = negotiate(rq(contexts[start : start + 128]), POLICY)
        assert out.accept is not None
        assert all(pc.result == 0 for pc in out.accept.presentation_contexts)


def test_blank_calling_ae_gets_a_placeholder_in_the_ac() -> None:
    out = negotiate(rq(BASIC, calling=""), POLICY)
    assert out.accept is not None
    assert out.accept.calling_ae
    P.encode(out.accept)


def test_non_ascii_calling_ae_gets_an_answer_that_encodes() -> None:
    raw = P.encode(rq(BASIC, calling="CT"))
    raw = raw.replace(b"CT              ", b"CT\xe9             ", 1)  # a byte outside ASCII
    [request] = P.PDUReader(1 << 20).feed(raw)
    assert isinstance(request, P.AssociateRQ)
    out = negotiate(request, POLICY)
    answer = out.accept if out.accept is not None else out.reject
    assert answer is not None
    P.encode(answer)
