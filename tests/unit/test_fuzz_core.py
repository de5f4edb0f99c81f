"""Property-based fuzzing of the sans-IO core, and real association requests that must pass.

Random and mutated PDU streams go to `PDUReader` and to an acceptor `Association` in random
chunkings; mutated datasets go to `HeaderScanner`. Allowed outcomes: `PDUError` from the
reader, nothing at all from `Association.receive_data` (errors become aborts), `HeaderError`
from the scanner. Bounded so the whole file runs in a few seconds; `fuzz/fuzz_pdu.py` is the
long-running atheris target.

`captures/` holds A-ASSOCIATE-RQ PDUs sent by DCMTK and pynetdicom (see its README.md).
"""

from __future__ import annotations

import random
import struct
import zlib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from tests.pdu_tokens import tokens

from store_scp.dicom import association as A
from store_scp.dicom import dimse, uids
from store_scp.dicom import pdu as P
from store_scp.dicom.header import HeaderError, HeaderScanner
from store_scp.dicom.negotiation import Policy, negotiate

MAX_PDATA = 1024
MAX_ASSOCIATE = 16384
BUFFER_BOUND = max(MAX_PDATA, MAX_ASSOCIATE) + 6
POLICY = Policy(ae_title="STORE_SCP", max_pdu_length=MAX_PDATA)
CAPTURES = Path(__file__).parent / "captures"

FUZZ = settings(
    max_examples=250,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

CT = "1.2.840.10008.5.1.4.1.1.2"


def _rq() -> P.AssociateRQ:
    return P.AssociateRQ(
        called_ae="STORE_SCP",
        calling_ae="FUZZER",
        application_context=uids.APPLICATION_CONTEXT_NAME,
        presentation_contexts=[
            P.PresentationContextRQ(
                1, uids.VERIFICATION_SOP_CLASS, [uids.IMPLICIT_VR_LITTLE_ENDIAN]
            ),
            P.PresentationContextRQ(
                3, CT, ["1.2.840.10008.1.2.4.70", uids.EXPLICIT_VR_LITTLE_ENDIAN]
            ),
        ],
        user_info=P.UserInformation(
            max_length=MAX_PDATA,
            implementation_class_uid="1.2.3.4",
            implementation_version_name="FUZZ",
            async_ops_window=(2, 2),
            roles=[P.RoleSelection(CT, True, True)],
            sop_class_extended=[(CT, b"\x01")],
            sop_class_common_extended=[P.SOPClassCommonExtended(CT, "1.2.840.10008.4.2", ["1.2"])],
            user_identity_rq=P.UserIdentityRQ(2, True, b"user", b"pass"),
        ),
    )


def _valid_streams() -> list[bytes]:
    rq = P.encode(_rq())
    echo = b"".join(P.fragment(1, dimse.c_echo_rq(1), True, MAX_PDATA))
    store = b"".join(P.fragment(3, dimse.c_store_rq(2, CT, "1.2.3.4.5"), True, 40)) + b"".join(
        P.fragment(3, bytes(range(256)) * 3, False, 200)
    )
    release = P.encode(P.ReleaseRQ())
    ac = P.encode(
        P.AssociateAC(
            "STORE_SCP",
            "FUZZER",
            uids.APPLICATION_CONTEXT_NAME,
            [P.PresentationContextAC(1, 0, uids.IMPLICIT_VR_LITTLE_ENDIAN)],
            P.UserInformation(16384, "1.2", user_identity_ac=b"ok"),
        )
    )
    return [
        rq + echo + store + release,
        rq + store + P.encode(P.Abort(0, 0)),
        rq,
        ac + P.encode(P.AssociateRJ(1, 1, 1)) + P.encode(P.ReleaseRP()),
        echo + release,
        echo + store + echo + release + P.encode(P.ReleaseRP()),
        *(p.read_bytes() for p in sorted(CAPTURES.glob("*.bin"))[:2]),
    ]


VALID_STREAMS = _valid_streams()
RQ_BYTES = P.encode(_rq())
#: What may follow a good A-ASSOCIATE-RQ: mutated to reach the data-transfer states.
AFTER_RQ = [s for s in VALID_STREAMS if not s.startswith(b"\x01")]


@st.composite
def mutated(draw: st.DrawFn, bases: list[bytes]) -> bytes:
    data = bytearray(draw(st.sampled_from(bases)))
    for _ in range(draw(st.integers(1, 6))):
        if not data:
            break
        kind = draw(st.integers(0, 5))
        at = draw(st.integers(0, len(data) - 1))
        if kind == 0:  # flip bits in one byte
            data[at] ^= draw(st.integers(1, 255))
        elif kind == 1:  # truncate
            del data[at:]
        elif kind == 2:  # overwrite a 2- or 4-byte big-endian length with a chosen value
            width = draw(st.sampled_from([2, 4]))
            value = draw(st.sampled_from([0, 1, 2, 3, 4, 5, 6, 0x7F, 0xFF, 0xFFFF, 0xFFFFFFFF]))
            value &= (1 << (8 * width)) - 1
            data[at : at + width] = value.to_bytes(width, "big")
        elif kind == 3:  # insert garbage
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        elif kind == 4:  # delete a range
            del data[at : at + draw(st.integers(1, 16))]
        else:  # change a PDU header's length field at the start
            data[2:6] = draw(st.integers(0, 1 << 20)).to_bytes(4, "big")
    return bytes(data)


def chunked(data: bytes, sizes: list[int]) -> list[bytes]:
    out, pos, i = [], 0, 0
    while pos < len(data):
        n = sizes[i % len(sizes)]
        out.append(data[pos : pos + n])
        pos += n
        i += 1
    return out


pdu_inputs = st.one_of(
    st.binary(max_size=600),
    mutated(VALID_STREAMS),
    mutated(AFTER_RQ).map(lambda tail: RQ_BYTES + tail),
)
chunk_sizes = st.lists(st.integers(1, 300), min_size=1, max_size=8)


# --- PDUReader ---------------------------------------------------------------------------------


def check_reader(data: bytes, sizes: list[int]) -> None:
    reader = P.PDUReader(MAX_PDATA, MAX_ASSOCIATE)
    for part in chunked(data, sizes):
        try:
            pdus = reader.feed(part)
        except P.PDUError as exc:
            assert exc.reason in (1, 2, 4, 5, 6)
            return
        assert all(
            isinstance(
                p,
                P.AssociateRQ
                | P.AssociateAC
                | P.AssociateRJ
                | P.PDataTF
                | P.ReleaseRQ
                | P.ReleaseRP
                | P.Abort,
            )
            for p in pdus
        )
        assert reader.buffered <= BUFFER_BOUND


@FUZZ
@given(data=pdu_inputs, sizes=chunk_sizes)
def test_reader_raises_only_pdu_error_and_stays_bounded(data: bytes, sizes: list[int]) -> None:
    check_reader(data, sizes)


@FUZZ
@given(data=mutated(VALID_STREAMS), sizes=chunk_sizes)
def test_reader_result_does_not_depend_on_chunking(data: bytes, sizes: list[int]) -> None:
    def run(parts: list[bytes]) -> tuple[list[P.PDU], bool]:
        reader = P.PDUReader(MAX_PDATA, MAX_ASSOCIATE)
        out: list[P.PDU] = []
        for part in parts:
            try:
                out += reader.feed(part)
            except P.PDUError:
                return out, True
        return out, False

    whole, whole_failed = run([data])
    pieces, pieces_failed = run(chunked(data, sizes))
    assert whole_failed == pieces_failed
    if not whole_failed:
        assert pieces == whole
    else:
        # the PDUs before the bad one are the same; a whole-buffer error drops them all
        assert whole == [] or pieces[: len(whole)] == whole


def test_reader_on_valid_streams_in_any_chunking() -> None:
    for stream in VALID_STREAMS:
        expected = P.PDUReader(MAX_PDATA, MAX_ASSOCIATE).feed(stream)
        assert expected
        for seed in range(5):
            rng = random.Random(seed)
            reader = P.PDUReader(MAX_PDATA, MAX_ASSOCIATE)
            pdus: list[P.PDU] = []
            pos = 0
            while pos < len(stream):
                n = rng.randint(1, 97)
                pdus += reader.feed(stream[pos : pos + n])
                pos += n
            assert reader.buffered == 0
            assert pdus == expected
    for stream in VALID_STREAMS[:5]:  # ours: re-encoding gives the same bytes
        pdus = P.PDUReader(MAX_PDATA, MAX_ASSOCIATE).feed(stream)
        assert b"".join(P.encode(p) for p in pdus) == stream


# --- PDUStreamReader (what the Association uses) -------------------------------------------------


def run_stream_reader(data: bytes, sizes: list[int]) -> tuple[list[tuple[object, ...]], int | None]:
    reader = P.PDUStreamReader(MAX_PDATA, MAX_ASSOCIATE)
    items: list[P.PDU | P.PDV] = []
    for part in chunked(data, sizes):
        items += reader.feed(bytearray(part))  # never raises
        assert reader.buffered <= BUFFER_BOUND
        if reader.error is not None:
            assert isinstance(reader.error, P.PDUError)
    return tokens(items), None if reader.error is None else reader.error.reason


@FUZZ
@given(data=pdu_inputs, sizes=chunk_sizes)
def test_stream_reader_never_raises_and_ignores_chunking(data: bytes, sizes: list[int]) -> None:
    whole = run_stream_reader(data, [len(data) or 1])
    assert run_stream_reader(data, sizes) == whole
    assert run_stream_reader(data, [1]) == whole
    try:
        pdus = P.PDUReader(MAX_PDATA, MAX_ASSOCIATE).feed(data)
    except P.PDUError as exc:
        assert whole[1] == exc.reason
        return
    if whole[1] is None:
        # the same PDUs, up to a possibly incomplete last one
        assert whole[0][: len(tokens(list(pdus)))] == tokens(list(pdus))


# --- Association (acceptor) ---------------------------------------------------------------------


def answer(assoc: A.Association, request: P.AssociateRQ) -> None:
    outcome = negotiate(request, POLICY)
    if outcome.accept is not None:
        assoc.send_accept(outcome.accept)
    else:
        assert outcome.reject is not None
        assoc.send_reject(outcome.reject)


def drive_acceptor(data: bytes, sizes: list[int]) -> A.Association:
    assoc = A.Association(
        A.Role.ACCEPTOR, max_pdata_length=MAX_PDATA, max_associate_length=MAX_ASSOCIATE
    )
    assoc.connection_made()
    sent = bytearray()
    for part in chunked(data, sizes):
        if assoc.state is A.State.STA1:
            break
        events = assoc.receive_data(part)  # must never raise
        for event in events:
            assert isinstance(
                event,
                A.AssociationRequested
                | A.DataReceived
                | A.ReleaseRequested
                | A.ReleaseConfirmed
                | A.Aborted,
            )
            if isinstance(event, A.AssociationRequested) and assoc.state is A.State.STA3:
                answer(assoc, event.request)
            elif isinstance(event, A.ReleaseRequested) and assoc.state is A.State.STA8:
                assoc.send_release_response()
            elif isinstance(event, A.Aborted):
                assert assoc.state in (A.State.STA1, A.State.STA13)
        assert assoc._reader.buffered <= BUFFER_BOUND
        sent += assoc.data_to_send()
    if assoc.state is not A.State.STA1:
        assoc.receive_data(b"")  # the peer closes
    assert assoc.state is A.State.STA1
    assert assoc.should_close
    # Everything we sent decodes: an AC or RJ, P-DATA never, release RP, A-ABORT.
    ours = P.PDUReader(1 << 20).feed(bytes(sent + assoc.data_to_send()))
    assert all(isinstance(p, P.AssociateAC | P.AssociateRJ | P.ReleaseRP | P.Abort) for p in ours)
    return assoc


@FUZZ
@given(data=pdu_inputs, sizes=chunk_sizes)
def test_acceptor_turns_every_error_into_an_abort(data: bytes, sizes: list[int]) -> None:
    drive_acceptor(data, sizes)


def test_acceptor_on_valid_streams() -> None:
    assoc = drive_acceptor(VALID_STREAMS[0], [7, 100, 3])
    assert assoc.state is A.State.STA1


# --- HeaderScanner ------------------------------------------------------------------------------


def _dataset() -> Dataset:
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = CT
    ds.SOPInstanceUID = "1.2.3.4"
    ds.PatientName = "Doe^John"
    ds.StudyInstanceUID = "1.2.3.5"
    ds.SeriesInstanceUID = "1.2.3.6"
    ref = Dataset()
    ref.ReferencedSOPClassUID = CT
    ref.ReferencedSOPInstanceUID = "1.2.3.7"
    ds.ReferencedImageSequence = [ref]
    return ds


def _encode(implicit: bool, little: bool) -> bytes:
    fp = DicomBytesIO()
    fp.is_little_endian = little
    fp.is_implicit_VR = implicit
    write_dataset(fp, _dataset())
    return fp.getvalue()


def _deflate(raw: bytes) -> bytes:
    c = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
    return c.compress(raw) + c.flush()


def _undefined_length_sequence() -> bytes:
    """Explicit VR LE with nested undefined-length SQ and a UN sequence, before the UIDs."""

    def ex(tag: int, vr: bytes, value: bytes, length: int | None = None) -> bytes:
        n = len(value) if length is None else length
        if vr in (b"SQ", b"UN", b"OB"):
            return struct.pack("<HH2s2xI", tag >> 16, tag & 0xFFFF, vr, n) + value
        return struct.pack("<HH2sH", tag >> 16, tag & 0xFFFF, vr, n) + value

    item_start = struct.pack("<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF)
    item_end = struct.pack("<HHI", 0xFFFE, 0xE00D, 0)
    seq_end = struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)
    implicit_inside = struct.pack("<HHI", 0x0008, 0x1150, 4) + b"1.2\x00"
    return (
        ex(0x00080016, b"UI", b"1.2.840.10008.5.1.4.1.1.2\x00")
        + ex(0x00080018, b"UI", b"1.2.3.4\x00")
        + ex(0x00081115, b"SQ", b"", 0xFFFFFFFF)
        + item_start
        + ex(0x00081140, b"SQ", b"", 0xFFFFFFFF)
        + item_start
        + ex(0x00081150, b"UI", b"1.2\x00")
        + item_end
        + seq_end
        + item_end
        + seq_end
        + ex(0x00081199, b"UN", b"", 0xFFFFFFFF)
        + item_start
        + implicit_inside
        + item_end
        + seq_end
        + ex(0x0020000D, b"UI", b"1.2.3.5\x00")
        + ex(0x0020000E, b"UI", b"1.2.3.6\x00")
    )


# (explicit, little, deflated, bytes)
DATASETS = [
    (True, True, False, _encode(False, True)),
    (False, True, False, _encode(True, True)),
    (True, False, False, _encode(False, False)),
    (True, True, True, _deflate(_encode(False, True))),
    (True, True, False, _undefined_length_sequence()),
]


@FUZZ
@given(
    which=st.integers(0, len(DATASETS) - 1),
    mutation_seed=st.integers(0, 2**32 - 1),
    mutations=st.integers(1, 6),
    sizes=chunk_sizes,
)
def test_header_scanner_raises_only_header_error(
    which: int, mutation_seed: int, mutations: int, sizes: list[int]
) -> None:
    explicit, little, deflated, base = DATASETS[which]
    rng = random.Random(mutation_seed)
    data = bytearray(base)
    for _ in range(mutations):
        if not data:
            break
        at = rng.randrange(len(data))
        kind = rng.randrange(5)
        if kind == 0:
            data[at] ^= rng.randrange(1, 256)
        elif kind == 1:
            del data[at:]
        elif kind == 2:
            data[at : at + 4] = rng.choice(
                [
                    b"\xff\xff\xff\xff",
                    b"\xfe\xff\x00\xe0",
                    b"\xfe\xff\xdd\xe0",
                    b"UN\x00\x00",
                    b"SQ\x00\x00",
                    b"\x00\x00\x00\x00",
                ]
            )
        elif kind == 3:
            data[at:at] = rng.randbytes(rng.randrange(1, 16))
        else:
            del data[at : at + rng.randrange(1, 16)]
    scanner = HeaderScanner(explicit, little, deflated)
    try:
        for part in chunked(bytes(data), sizes):
            scanner.feed(part)
        info = scanner.finish()
    except HeaderError:
        return
    assert isinstance(info.sop_class_uid, str)
    assert all(isinstance(v, int) for v in info.over_limits.values())


@FUZZ
@given(
    data=st.binary(max_size=400),
    explicit=st.booleans(),
    little=st.booleans(),
    deflated=st.booleans(),
)
def test_header_scanner_on_random_bytes(
    data: bytes, explicit: bool, little: bool, deflated: bool
) -> None:
    scanner = HeaderScanner(explicit, little, deflated)
    try:
        scanner.feed(data)
        scanner.finish()
    except HeaderError:
        pass


def test_header_scanner_reads_the_unmutated_datasets() -> None:
    for explicit, little, deflated, data in DATASETS:
        scanner = HeaderScanner(explicit, little, deflated)
        for part in chunked(data, [3, 11]):
            scanner.feed(part)
        info = scanner.finish()
        assert (info.sop_class_uid, info.sop_instance_uid) == (CT, "1.2.3.4")
        assert (info.study_instance_uid, info.series_instance_uid) == ("1.2.3.5", "1.2.3.6")


# --- real association requests --------------------------------------------------------------


CAPTURE_FILES = sorted(CAPTURES.glob("*.bin"))


def test_captures_are_present() -> None:
    names = {p.name for p in CAPTURE_FILES}
    assert any(n.startswith("dcmtk-echoscu") for n in names)
    assert any(n.startswith("dcmtk-storescu") for n in names)
    assert any(n.startswith("pynetdicom") for n in names)
    readme = (CAPTURES / "README.md").read_text()
    for name in names:
        assert name in readme


@pytest.mark.parametrize("path", CAPTURE_FILES, ids=[p.name for p in CAPTURE_FILES])
def test_real_association_request_is_accepted(path: Path) -> None:
    raw = path.read_bytes()
    assert 0 < len(raw) < 64 * 1024
    [rq] = P.PDUReader(16384).feed(raw)  # under the default A-ASSOCIATE cap, whatever P-DATA max
    assert isinstance(rq, P.AssociateRQ)
    assert rq.called_ae == "STORE_SCP"
    assert rq.application_context == uids.APPLICATION_CONTEXT_NAME
    assert rq.user_info.implementation_class_uid
    outcome = negotiate(rq, Policy(ae_title="STORE_SCP"))
    assert outcome.reject is None, outcome.reason
    assert outcome.accept is not None
    by_id = {pc.id: pc for pc in outcome.accept.presentation_contexts}
    assert len(by_id) == len({pc.id for pc in rq.presentation_contexts})
    storage_or_echo = 0
    for pc in rq.presentation_contexts:
        if (
            pc.abstract_syntax in uids.STORAGE_SOP_CLASSES
            or pc.abstract_syntax == uids.VERIFICATION_SOP_CLASS
        ):
            storage_or_echo += 1
            answer_pc = by_id[pc.id]
            assert answer_pc.result == 0, pc.abstract_syntax
            assert answer_pc.transfer_syntax in pc.transfer_syntaxes
            assert outcome.contexts[pc.id] == (pc.abstract_syntax, answer_pc.transfer_syntax)
    assert storage_or_echo == len(rq.presentation_contexts)
    assert outcome.peer_max_pdu == rq.user_info.max_length
    # The answer goes through an acceptor Association and decodes again.
    assoc = A.Association(A.Role.ACCEPTOR, max_pdata_length=16384)
    assoc.connection_made()
    for cut in (1, 7, 100):
        assoc = A.Association(A.Role.ACCEPTOR, max_pdata_length=16384)
        assoc.connection_made()
        events: list[A.Event] = []
        for part in chunked(raw, [cut]):
            events += assoc.receive_data(part)
        assert events == [A.AssociationRequested(rq)]
    assoc.send_accept(outcome.accept)
    [ac] = P.PDUReader(1 << 20).feed(assoc.data_to_send())
    assert ac == outcome.accept
    assert assoc.state is A.State.STA6


def test_capture_roles_and_identity_are_decoded() -> None:
    [rq] = P.PDUReader(16384).feed(
        (CAPTURES / "pynetdicom-echo-storage-user-roles.bin").read_bytes()
    )
    assert isinstance(rq, P.AssociateRQ)
    assert rq.user_info.user_identity_rq == P.UserIdentityRQ(2, True, b"alice", b"secret")
    assert {(r.sop_class_uid, r.scu_role, r.scp_role) for r in rq.user_info.roles} == {
        (CT, True, False),
        ("1.2.840.10008.5.1.4.1.1.4", True, True),
    }
    outcome = negotiate(rq, Policy(ae_title="STORE_SCP"))
    assert outcome.accept is not None
    assert {(r.sop_class_uid, r.scu_role, r.scp_role) for r in outcome.accept.user_info.roles} == {
        (CT, True, False),
        ("1.2.840.10008.5.1.4.1.1.4", True, False),
    }
    [rq] = P.PDUReader(16384).feed((CAPTURES / "pynetdicom-htj2k-jpegxl-extneg.bin").read_bytes())
    assert isinstance(rq, P.AssociateRQ)
    assert rq.user_info.async_ops_window == (5, 5)
    outcome = negotiate(rq, Policy(ae_title="STORE_SCP"))
    assert outcome.accept is not None
    assert outcome.accept.user_info.async_ops_window == (1, 1)
    assert outcome.contexts[3] == (CT, "1.2.840.10008.1.2.4.201")  # HTJ2K lossless, kept
    # JPEG Baseline offered before Explicit VR LE: the sender holds it that way
    assert outcome.contexts[5] == ("1.2.840.10008.5.1.4.1.1.7", "1.2.840.10008.1.2.4.50")
