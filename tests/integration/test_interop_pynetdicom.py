"""Interoperability with pynetdicom as the SCU: an implementation independent of ours and of DCMTK.

pynetdicom sends each file in its own transfer syntax (one presentation context per SOP class and
syntax of the corpus, HTJ2K and JPEG XL included, which DCMTK 3.6.7 does not know) and, with
`STORE_SEND_CHUNKED_DATASET`, sends the file's data set bytes exactly as they are in the file:
the stored data set must be byte-identical to the source file's.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path
from typing import Any

import pytest
from pydicom import uid as U
from pydicom.dataset import Dataset, FileMetaDataset

from store_scp.dicom.uids import IMPLEMENTATION_CLASS_UID
from tests.integration.interop_data import (
    CT_IMAGE,
    Corpus,
    CorpusFile,
    batch_of,
    check_stored,
    corpus_file,
    encode_explicit_le,
    log_records,
    make_ct12,
    planned_files,
    shared_corpus,
    split_part10,
    write_part10,
)
from tests.serverproc import ServerProcess, start_server

pynetdicom = pytest.importorskip("pynetdicom")
from pynetdicom import AE, _config, build_role  # noqa: E402
from pynetdicom.dimse_primitives import C_FIND, C_STORE  # noqa: E402
from pynetdicom.pdu_primitives import AsynchronousOperationsWindowNegotiation  # noqa: E402

CALLED_AE = "STORE_SCP"
CALLING_AE = "PYNETDICOM"
VERIFICATION = "1.2.840.10008.1.1"
MR_IMAGE = "1.2.840.10008.5.1.4.1.1.4"
STUDY_ROOT_FIND = "1.2.840.10008.5.1.4.1.2.2.1"
#: A private SOP Class UID (UUID-derived, PS3.5 B.2): no standard table holds it.
PRIVATE_SOP_CLASS = "2.25.271918398162412309276372349180347213859"

#: corpus key -> reason, for server bugs found by these tests.
KNOWN_BUGS: dict[str, str] = {}


# --------------------------------------------------------------------------------------------
# fixtures and helpers


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Corpus:
    return shared_corpus(tmp_path_factory)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    srv = start_server(tmp_path_factory.mktemp("pynetdicom-peer") / "srv")
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def chunked_send() -> Iterator[None]:
    """Make pynetdicom send a file's data set bytes as they are, not decoded and re-encoded."""
    saved = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True
    try:
        yield
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = saved


def new_ae(contexts: list[tuple[str, list[str]]], ae_title: str = CALLING_AE) -> Any:
    ae = AE(ae_title=ae_title)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 15
    for abstract, syntaxes in contexts:
        ae.add_requested_context(abstract, syntaxes)
    return ae


def associate(ae: Any, server: ServerProcess, **kwargs: Any) -> Any:
    assoc = ae.associate("127.0.0.1", server.port, ae_title=CALLED_AE, **kwargs)
    assert assoc.is_established, "association not established"
    return assoc


def write_generated(path: Path, ds: Dataset) -> CorpusFile:
    """A generated data set as an Explicit VR Little Endian Part 10 file, described."""
    write_part10(
        path,
        encode_explicit_le(ds),
        sop_class_uid=str(ds.SOPClassUID),
        sop_instance_uid=str(ds.SOPInstanceUID),
        transfer_syntax=U.ExplicitVRLittleEndian,
    )
    return CorpusFile(
        key=path.stem,
        path=path,
        transfer_syntax=U.ExplicitVRLittleEndian,
        sop_class_uid=str(ds.SOPClassUID),
        sop_instance_uid=str(ds.SOPInstanceUID),
        origin="generated",
    )


def send_raw(assoc: Any, primitive: Any, context_id: int) -> Any:
    """Send a DIMSE request on a chosen presentation context and return the response.

    pynetdicom's send_c_*() always pick the context that matches the request; this sends on any
    context, the way send_c_store() itself does it (pause the reactor so it does not take the
    response off the queue, send, wait, resume).
    """
    assoc._reactor_checkpoint.clear()
    while not assoc._is_paused:
        time.sleep(0.0001)
    try:
        assoc.dimse.send_msg(primitive, context_id)
        _, rsp = assoc.dimse.get_msg(block=True)
    finally:
        assoc._reactor_checkpoint.set()
    return rsp


def new_objects(server: ServerProcess, before: set[Path]) -> list[Path]:
    return [p for p in server.stored_files() if p not in before]


def wait_for_log(server: ServerProcess, predicate: Any, timeout: float = 5) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        found = [r for r in log_records(server.log()) if predicate(r)]
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


# --------------------------------------------------------------------------------------------
# C-ECHO


def test_c_echo(server: ServerProcess) -> None:
    assoc = associate(new_ae([(VERIFICATION, [U.ImplicitVRLittleEndian])]), server)
    try:
        status = assoc.send_c_echo()
        assert status.Status == 0x0000
    finally:
        assoc.release()


# --------------------------------------------------------------------------------------------
# C-STORE of the corpus, each file in its own syntax


@dataclass
class StoreRun:
    statuses: dict[str, int] = field(default_factory=dict)  # corpus key -> status
    errors: dict[str, str] = field(default_factory=dict)  # corpus key -> exception
    stored: dict[str, Path] = field(default_factory=dict)  # SOP Instance UID -> object
    accepted: dict[tuple[str, str], bool] = field(default_factory=dict)


@pytest.fixture(scope="module")
def store_run(corpus: Corpus, server: ServerProcess) -> StoreRun:
    """The whole corpus over one association, one context per (SOP class, syntax)."""
    pairs = sorted({(f.sop_class_uid, f.transfer_syntax) for f in corpus.files})
    assert len(pairs) <= 128
    ae = new_ae([(sop, [ts]) for sop, ts in pairs])
    run = StoreRun()
    before = set(server.stored_files())
    saved = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True
    try:
        assoc = associate(ae, server)
        try:
            accepted = {
                (cx.abstract_syntax, cx.transfer_syntax[0]) for cx in assoc.accepted_contexts
            }
            run.accepted = {pair: pair in accepted for pair in pairs}
            for f in corpus.files:
                try:
                    run.statuses[f.key] = int(assoc.send_c_store(f.path).Status)
                except Exception as exc:  # recorded, reported by the per-file test
                    run.errors[f.key] = f"{type(exc).__name__}: {exc}"
        finally:
            assoc.release()
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = saved
    run.stored = {p.stem: p for p in new_objects(server, before)}
    return run


def _store_params() -> list[object]:
    return [
        pytest.param(
            key,
            id=key,
            marks=[pytest.mark.xfail(strict=True, reason=KNOWN_BUGS[key])]
            if key in KNOWN_BUGS
            else [],
        )
        for key, _ in planned_files()
    ]


@pytest.mark.parametrize("key", _store_params())
def test_pynetdicom_store(key: str, corpus: Corpus, store_run: StoreRun) -> None:
    source = corpus_file(corpus, key)
    pair = (source.sop_class_uid, source.transfer_syntax)
    assert store_run.accepted.get(pair), f"context {pair} was not accepted"
    assert key not in store_run.errors, store_run.errors.get(key)
    assert store_run.statuses[key] == 0x0000, f"status 0x{store_run.statuses[key]:04X}"
    assert source.sop_instance_uid in store_run.stored, f"{key} was not stored"
    check_stored(
        store_run.stored[source.sop_instance_uid],
        source=source,
        calling_ae=CALLING_AE,
        wire_syntax=source.transfer_syntax,
        wire_dataset=source.dataset_bytes(),
        implementation_class_uid=IMPLEMENTATION_CLASS_UID,
    )


def test_pynetdicom_covers_htj2k_and_jpeg_xl(corpus: Corpus, store_run: StoreRun) -> None:
    wanted = {
        "1.2.840.10008.1.2.4.201",
        "1.2.840.10008.1.2.4.202",
        "1.2.840.10008.1.2.4.203",
        "1.2.840.10008.1.2.4.110",
        "1.2.840.10008.1.2.4.111",
        "1.2.840.10008.1.2.4.112",
    }
    sent = {f.transfer_syntax for f in corpus.files if store_run.statuses.get(f.key) == 0}
    assert wanted <= sent, f"not stored: {sorted(wanted - sent)}"


# --------------------------------------------------------------------------------------------
# failures: UID mismatch, SOP class not the context's, unsupported operation


def test_sop_instance_uid_mismatch_is_refused(
    server: ServerProcess, tmp_path: Path, chunked_send: None
) -> None:
    """Command says one SOP Instance UID, the data set another: 0xA900, nothing stored."""
    ds, _ = make_ct12()
    command_uid = U.generate_uid()
    path = tmp_path / "mismatch.dcm"
    write_part10(
        path,
        encode_explicit_le(ds),
        sop_class_uid=CT_IMAGE,
        sop_instance_uid=command_uid,  # pynetdicom takes the command's UIDs from the file meta
        transfer_syntax=U.ExplicitVRLittleEndian,
    )
    ae = new_ae([(CT_IMAGE, [U.ExplicitVRLittleEndian])])
    before = set(server.stored_files())
    assoc = associate(ae, server)
    try:
        status = assoc.send_c_store(path)
        assert status.Status == 0xA900
        comment = str(status.get("ErrorComment", ""))
        assert comment, "a failure must carry an Error Comment"
        assert "Interop" not in comment and "INTEROP-0001" not in comment, "PHI in the comment"
        # The association goes on: a good object right after is stored.
        good = write_generated(tmp_path / "good.dcm", make_ct12()[0])
        assert assoc.send_c_store(good.path).Status == 0x0000
    finally:
        assoc.release()
    stored = new_objects(server, before)
    assert [p.stem for p in stored] == [good.sop_instance_uid], "the refused object was stored"
    assert {command_uid, str(ds.SOPInstanceUID)}.isdisjoint(p.stem for p in stored)
    assert server.staging_files() == []


def test_sop_class_uid_mismatch_is_refused(
    server: ServerProcess, tmp_path: Path, chunked_send: None
) -> None:
    """Command and context say CT, the data set says MR: 0xA900, nothing stored."""
    ds, _ = make_ct12()
    ds.SOPClassUID = MR_IMAGE
    ds.Modality = "MR"
    path = tmp_path / "class-mismatch.dcm"
    write_part10(
        path,
        encode_explicit_le(ds),
        sop_class_uid=CT_IMAGE,
        sop_instance_uid=str(ds.SOPInstanceUID),
        transfer_syntax=U.ExplicitVRLittleEndian,
    )
    before = set(server.stored_files())
    assoc = associate(new_ae([(CT_IMAGE, [U.ExplicitVRLittleEndian])]), server)
    try:
        assert assoc.send_c_store(path).Status == 0xA900
    finally:
        assoc.release()
    assert new_objects(server, before) == []


def test_store_on_a_context_of_another_sop_class_gets_0122(
    server: ServerProcess, tmp_path: Path
) -> None:
    """An MR C-STORE (command and data set agree) sent on the CT context: 0x0122."""
    ds, _ = make_ct12()
    ds.SOPClassUID = MR_IMAGE
    ds.Modality = "MR"
    ae = new_ae([(CT_IMAGE, [U.ExplicitVRLittleEndian]), (MR_IMAGE, [U.ExplicitVRLittleEndian])])
    before = set(server.stored_files())
    assoc = associate(ae, server)
    try:
        ct_context = next(cx for cx in assoc.accepted_contexts if cx.abstract_syntax == CT_IMAGE)
        req = C_STORE()
        req.MessageID = 7
        req.AffectedSOPClassUID = MR_IMAGE
        req.AffectedSOPInstanceUID = ds.SOPInstanceUID
        req.Priority = 2
        req.DataSet = BytesIO(encode_explicit_le(ds))
        rsp = send_raw(assoc, req, ct_context.context_id)
        assert rsp is not None, "no response"
        assert rsp.Status == 0x0122
        assert rsp.MessageIDBeingRespondedTo == 7
        assert rsp.ErrorComment, "a failure must carry an Error Comment"
        # The same object on its own context is stored.
        mr = write_generated(tmp_path / "mr.dcm", ds)
        assert assoc.send_c_store(mr.path).Status == 0x0000
    finally:
        assoc.release()
    assert [p.stem for p in new_objects(server, before)] == [str(ds.SOPInstanceUID)]


def test_c_find_on_a_storage_context_is_unrecognized(server: ServerProcess) -> None:
    """A DIMSE operation the server does not perform: 0x0211, and the association goes on."""
    ae = new_ae(
        [(CT_IMAGE, [U.ExplicitVRLittleEndian]), (VERIFICATION, [U.ImplicitVRLittleEndian])]
    )
    assoc = associate(ae, server)
    try:
        ct_context = next(cx for cx in assoc.accepted_contexts if cx.abstract_syntax == CT_IMAGE)
        identifier = Dataset()
        identifier.QueryRetrieveLevel = "STUDY"
        identifier.StudyInstanceUID = ""
        req = C_FIND()
        req.MessageID = 11
        req.AffectedSOPClassUID = STUDY_ROOT_FIND
        req.Priority = 2
        req.Identifier = BytesIO(encode_explicit_le(identifier))
        rsp = send_raw(assoc, req, ct_context.context_id)
        assert rsp is not None, "no response"
        assert rsp.Status == 0x0211
        assert rsp.MessageIDBeingRespondedTo == 11
        assert rsp.ErrorComment, "a failure must carry an Error Comment"
        assert assoc.send_c_echo().Status == 0x0000
    finally:
        assoc.release()


# --------------------------------------------------------------------------------------------
# negotiation: private SOP classes, asynchronous operations window, role selection


def _private_object(path: Path) -> CorpusFile:
    ds, _ = make_ct12(description="private SOP class")
    ds.SOPClassUID = PRIVATE_SOP_CLASS
    return write_generated(path, ds)


def test_private_sop_class_is_refused_by_default(server: ServerProcess, tmp_path: Path) -> None:
    private = _private_object(tmp_path / "private.dcm")
    ae = new_ae(
        [
            (PRIVATE_SOP_CLASS, [U.ExplicitVRLittleEndian]),
            (VERIFICATION, [U.ImplicitVRLittleEndian]),
        ]
    )
    before = set(server.stored_files())
    assoc = associate(ae, server)
    try:
        accepted = {cx.abstract_syntax for cx in assoc.accepted_contexts}
        assert accepted == {VERIFICATION}
        rejected = [cx for cx in assoc.rejected_contexts if cx.abstract_syntax == PRIVATE_SOP_CLASS]
        assert rejected and rejected[0].result == 0x03  # abstract syntax not supported
        with pytest.raises(ValueError):
            assoc.send_c_store(private.path)
    finally:
        assoc.release()
    assert new_objects(server, before) == []


def test_private_sop_class_accepted_when_configured(tmp_path: Path, chunked_send: None) -> None:
    private = _private_object(tmp_path / "private.dcm")
    srv = start_server(tmp_path / "srv", env={"STORE_SCP_PRIVATE_SOP_CLASSES": PRIVATE_SOP_CLASS})
    try:
        assoc = associate(new_ae([(PRIVATE_SOP_CLASS, [U.ExplicitVRLittleEndian])]), srv)
        try:
            assert [cx.abstract_syntax for cx in assoc.accepted_contexts] == [PRIVATE_SOP_CLASS]
            assert assoc.send_c_store(private.path).Status == 0x0000
        finally:
            assoc.release()
        stored = srv.stored_files()
        assert [p.stem for p in stored] == [private.sop_instance_uid]
        check_stored(
            stored[0],
            source=private,
            calling_ae=CALLING_AE,
            wire_syntax=U.ExplicitVRLittleEndian,
            wire_dataset=private.dataset_bytes(),
            implementation_class_uid=IMPLEMENTATION_CLASS_UID,
        )
    finally:
        srv.stop()


def test_async_window_and_scu_role_are_answered(
    server: ServerProcess, tmp_path: Path, chunked_send: None
) -> None:
    """Asynchronous Operations Window 5/5 -> 1/1; SCU+SCP roles proposed -> SCU yes, SCP no."""
    window = AsynchronousOperationsWindowNegotiation()
    window.maximum_number_operations_invoked = 5
    window.maximum_number_operations_performed = 5
    role = build_role(CT_IMAGE, scu_role=True, scp_role=True)
    ae = new_ae([(CT_IMAGE, [U.ExplicitVRLittleEndian])])
    obj = write_generated(tmp_path / "ct.dcm", make_ct12()[0])
    assoc = associate(ae, server, ext_neg=[window, role])
    try:
        replies = assoc.acceptor.user_information
        windows = [i for i in replies if isinstance(i, AsynchronousOperationsWindowNegotiation)]
        assert len(windows) == 1, "no Asynchronous Operations Window reply"
        assert assoc.acceptor.asynchronous_operations == (1, 1)
        reply = assoc.acceptor.role_selection[CT_IMAGE]
        assert (reply.scu_role, reply.scp_role) == (True, False)
        (context,) = assoc.accepted_contexts
        assert context.as_scu and not context.as_scp
        assert assoc.send_c_store(obj.path).Status == 0x0000
    finally:
        assoc.release()


def test_scp_only_role_leaves_the_context_unusable(server: ServerProcess) -> None:
    """The requestor offers only to be the SCP of CT storage: that context is rejected."""
    role = build_role(CT_IMAGE, scu_role=False, scp_role=True)
    ae = new_ae(
        [(CT_IMAGE, [U.ExplicitVRLittleEndian]), (VERIFICATION, [U.ImplicitVRLittleEndian])]
    )
    assoc = associate(ae, server, ext_neg=[role])
    try:
        assert {cx.abstract_syntax for cx in assoc.accepted_contexts} == {VERIFICATION}
        rejected = [cx for cx in assoc.rejected_contexts if cx.abstract_syntax == CT_IMAGE]
        assert rejected and rejected[0].result == 0x01  # user rejection
        assert assoc.send_c_echo().Status == 0x0000
    finally:
        assoc.release()


# --------------------------------------------------------------------------------------------
# duplicates


def test_duplicate_sop_instance_gets_two_receipts_in_two_batches(
    server: ServerProcess, tmp_path: Path, chunked_send: None
) -> None:
    obj = write_generated(tmp_path / "dup.dcm", make_ct12(description="duplicate")[0])
    before = set(server.stored_files())
    assoc = associate(new_ae([(CT_IMAGE, [U.ExplicitVRLittleEndian])]), server)
    try:
        assert assoc.send_c_store(obj.path).Status == 0x0000
        assert assoc.send_c_store(obj.path).Status == 0x0000
    finally:
        assoc.release()
    stored = new_objects(server, before)
    assert len(stored) == 2, stored
    assert {p.stem for p in stored} == {obj.sop_instance_uid}
    batches = {batch_of(p, server.objects_dir) for p in stored}
    assert len(batches) == 2, "both receipts landed in one batch"
    for p in stored:
        assert split_part10(p.read_bytes())[1] == obj.dataset_bytes()
    records = wait_for_log(
        server,
        lambda r: r.get("msg") == "stored" and r.get("sop_instance_uid") == obj.sop_instance_uid,
    )
    assert len(records) == 2


def test_dataset_encoded_by_pynetdicom(server: ServerProcess, tmp_path: Path) -> None:
    """A data set pynetdicom encodes itself (no chunked send) is stored as pynetdicom sent it."""
    ds, _ = make_ct12(description="encoded by pynetdicom")
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = U.ExplicitVRLittleEndian
    before = set(server.stored_files())
    assoc = associate(new_ae([(CT_IMAGE, [U.ExplicitVRLittleEndian])]), server)
    try:
        assert assoc.send_c_store(ds).Status == 0x0000
    finally:
        assoc.release()
    (stored,) = new_objects(server, before)
    expected = encode_explicit_le(ds)
    assert split_part10(stored.read_bytes())[1] == expected
