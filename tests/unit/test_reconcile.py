"""The start-up reconciler, on a real local object store and a real SQLite tracker."""

from __future__ import annotations

import hashlib
import io
import logging
import os
import tempfile
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import BinaryIO

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filewriter import dcmwrite
from pydicom.uid import (
    UID,
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

import store_scp.tracking.reconcile as reconcile_module
from store_scp.storage.base import CommittedObject, ObjectStore
from store_scp.storage.local import LocalObjectStore
from store_scp.tracking.base import Receipt, State
from store_scp.tracking.reconcile import reconcile
from store_scp.tracking.sqlite import SqliteTracker

# Patient data that must never reach a log line.
PATIENT_NAME = "Doe^Jane"
PATIENT_ID = "PID-0042-SECRET"
BIRTH_DATE = "19450607"

BUNDLED = [
    "CT_small.dcm",  # explicit VR little endian
    "MR_small_implicit.dcm",  # implicit VR little endian
    "MR_small_bigendian.dcm",  # explicit VR big endian
    "image_dfl.dcm",  # deflated dataset
    "JPEG2000.dcm",  # encapsulated pixel data
    "rtplan.dcm",  # no Source AE Title; file meta SOP Instance UID differs from the dataset's
]

MTIME = 1_650_000_000.0


def part10(
    *,
    sop_instance_uid: str,
    study: str = "1.2.826.0.1.3680043.2.1125.1",
    series: str = "1.2.826.0.1.3680043.2.1125.1.1",
    transfer_syntax: str = ExplicitVRLittleEndian,
    source_ae: str | None = "CT_SCANNER",
    pixel_bytes: int = 64,
) -> bytes:
    """A Part 10 file built with pydicom, with patient data in it."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = UID(sop_instance_uid)
    meta.TransferSyntaxUID = UID(transfer_syntax)
    meta.ImplementationClassUID = UID("2.25.1234567890")
    if source_ae is not None:
        meta.SourceApplicationEntityTitle = source_ae
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = sop_instance_uid
    ds.PatientName = PATIENT_NAME
    ds.PatientID = PATIENT_ID
    ds.PatientBirthDate = BIRTH_DATE
    ds.StudyInstanceUID = study
    ds.SeriesInstanceUID = series
    ds.Modality = "CT"
    ds.Rows = 4
    ds.Columns = 8
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.PixelData = bytes(range(256)) * (pixel_bytes // 256) + bytes(pixel_bytes % 256)
    buffer = io.BytesIO()
    dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()


def dataset_sha256(data: bytes) -> str:
    """SHA-256 of what follows the file meta, located through its group length (0002,0000)."""
    assert data[128:132] == b"DICM"
    assert data[132:140] == b"\x02\x00\x00\x00UL\x04\x00"
    group_length = int.from_bytes(data[140:144], "little")
    return hashlib.sha256(data[144 + group_length :]).hexdigest()


def put(store: LocalObjectStore, key: str, data: bytes, *, mtime: float = MTIME) -> None:
    fd, staging = tempfile.mkstemp(dir=store.staging_dir, suffix=".part")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    store.commit(Path(staging), key)
    os.utime(store.objects_dir / key, (mtime, mtime))


def expected_receipt(key: str, data: bytes, *, received_at: float = MTIME) -> Receipt:
    """The receipt, from pydicom's reading of the file (independent of the reconciler)."""
    ds = dcmread(io.BytesIO(data))
    meta = ds.file_meta
    return Receipt(
        key=key,
        batch_id=key.split("/", 1)[0],
        sop_instance_uid=meta.MediaStorageSOPInstanceUID,
        sop_class_uid=meta.MediaStorageSOPClassUID,
        study_instance_uid=ds.StudyInstanceUID,
        series_instance_uid=ds.SeriesInstanceUID,
        transfer_syntax_uid=meta.TransferSyntaxUID,
        size=len(data),
        sha256=dataset_sha256(data),
        calling_ae=str(meta.get("SourceApplicationEntityTitle", "")).strip(),
        peer="",
        received_at=received_at,
    )


def key_for(batch: str, data: bytes) -> str:
    ds = dcmread(io.BytesIO(data))
    return f"{batch}/{ds.StudyInstanceUID}/{ds.SeriesInstanceUID}/{ds.SOPInstanceUID}.dcm"


def bundled(name: str) -> bytes:
    path = get_testdata_file(name, download=False)
    assert isinstance(path, str), f"{name} is bundled with pydicom"
    return Path(path).read_bytes()


@pytest.fixture
def store(tmp_path: Path) -> LocalObjectStore:
    return LocalObjectStore(tmp_path / "data", fsync=False)


@pytest.fixture
def tracker(tmp_path: Path) -> Iterator[SqliteTracker]:
    with SqliteTracker(tmp_path / "data" / "tracker.sqlite3") as t:
        yield t


@pytest.fixture
def objects() -> dict[str, bytes]:
    """Objects of several encodings, by key."""
    generated = [
        part10(sop_instance_uid="1.2.826.0.1.3680043.2.1125.1.1.1"),
        part10(
            sop_instance_uid="1.2.826.0.1.3680043.2.1125.1.1.2",
            transfer_syntax=ImplicitVRLittleEndian,
        ),
        part10(
            sop_instance_uid="1.2.826.0.1.3680043.2.1125.1.1.3",
            transfer_syntax=DeflatedExplicitVRLittleEndian,
            source_ae="DEFLATER",
        ),
    ]
    files = {key_for("batch-a", data): data for data in generated}
    files.update({key_for("batch-b", data): data for data in map(bundled, BUNDLED)})
    return files


def test_registers_exactly_the_objects_without_rows(
    store: LocalObjectStore, tracker: SqliteTracker, objects: dict[str, bytes]
) -> None:
    for key, data in objects.items():
        put(store, key, data)
    # Two objects already have rows, written by the receiver with the peer address.
    already = sorted(objects)[:2]
    for key in already:
        receipt = expected_receipt(key, objects[key], received_at=1.0)
        tracker.record_receipt(replace(receipt, peer="192.0.2.9:5000"))

    assert reconcile(store, tracker) == len(objects) - 2

    for key, data in objects.items():
        expected = expected_receipt(key, data)
        rows = [r for r in tracker.receipts_for_instance(expected.sop_instance_uid) if r.key == key]
        if key in already:
            assert rows[0].peer == "192.0.2.9:5000"  # left as the receiver wrote it
        else:
            assert rows == [expected]
    assert tracker.counts_by_state() == {**_zero_counts(), "RECEIVED": len(objects)}

    # The second run finds nothing to do.
    assert reconcile(store, tracker) == 0
    assert tracker.counts_by_state() == {**_zero_counts(), "RECEIVED": len(objects)}


def test_sop_uids_come_from_the_file_meta(store: LocalObjectStore, tracker: SqliteTracker) -> None:
    data = bundled("rtplan.dcm")
    ds = dcmread(io.BytesIO(data))
    assert ds.file_meta.MediaStorageSOPInstanceUID != ds.SOPInstanceUID
    put(store, "b/rtplan.dcm", data)
    assert reconcile(store, tracker) == 1
    (receipt,) = tracker.receipts_for_instance(ds.file_meta.MediaStorageSOPInstanceUID)
    assert receipt.calling_ae == ""  # no Source AE Title in that file
    assert receipt.sha256 == dataset_sha256(data)


def test_large_object_is_hashed_in_bounded_reads(
    store: LocalObjectStore, tracker: SqliteTracker
) -> None:
    data = part10(sop_instance_uid="1.2.3.999", pixel_bytes=5 * 1024 * 1024 + 6)
    key = key_for("big", data)
    put(store, key, data)
    recording = RecordingStore(store)
    assert reconcile(recording, tracker) == 1
    assert tracker.receipts_for_instance("1.2.3.999") == [expected_receipt(key, data)]
    assert recording.largest_read <= 1 << 20
    assert not recording.unbounded_read


def test_store_without_seekable_streams(
    store: LocalObjectStore, tracker: SqliteTracker, objects: dict[str, bytes]
) -> None:
    for key, data in objects.items():
        put(store, key, data)
    before = time.time()
    assert reconcile(UnseekableStore(store), tracker) == len(objects)
    after = time.time()
    for key, data in objects.items():
        expected = expected_receipt(key, data)
        rows = [r for r in tracker.receipts_for_instance(expected.sop_instance_uid) if r.key == key]
        (row,) = rows
        # No file behind the stream: the time of reconciliation stands in for the mtime.
        assert before <= row.received_at <= after
        assert replace(row, received_at=MTIME) == expected
    assert list(store.staging_dir.iterdir()) == []  # the spool files are gone


def test_prefix_limits_the_scan_and_only_dcm_objects_are_receipts(
    store: LocalObjectStore, tracker: SqliteTracker
) -> None:
    one = part10(sop_instance_uid="1.2.3.1")
    two = part10(sop_instance_uid="1.2.3.2")
    put(store, key_for("b1", one), one)
    put(store, key_for("b2", two), two)
    put(store, "b1/notes/why.json", b'{"reason": "not a receipt"}')
    assert reconcile(store, tracker, prefix="b1/") == 1
    assert tracker.known_keys([key_for("b1", one), key_for("b2", two)]) == {key_for("b1", one)}
    assert tracker.known_keys(["b1/notes/why.json"]) == set()
    assert reconcile(store, tracker) == 1
    assert tracker.counts_by_state()["RECEIVED"] == 2


def test_quarantine_retry_copies_and_job_outputs_are_never_receipts(
    store: LocalObjectStore, tracker: SqliteTracker
) -> None:
    one = part10(sop_instance_uid="1.2.3.1")
    key = key_for("b1", one)
    put(store, f"quarantine/{key}", one)
    put(store, f"quarantine/{key}.json", b"{}")
    put(store, f"retry/r1/{key}", one)
    put(store, "import-output/x-DicomImport-1/SUCCESS/one.dcm", one)
    assert reconcile(store, tracker) == 0
    assert tracker.counts_by_state()["RECEIVED"] == 0
    put(store, key, one)
    assert reconcile(store, tracker) == 1
    assert [r.key for r in tracker.receipts_for_instance("1.2.3.1")] == [key]


def test_unparseable_objects_are_registered_without_phi_in_logs(
    store: LocalObjectStore, tracker: SqliteTracker, caplog: pytest.LogCaptureFixture
) -> None:
    good = part10(sop_instance_uid="1.2.3.10")
    meta_end = len(good) - len(_dataset_bytes(good))
    bad: dict[str, bytes] = {
        # Not DICOM at all, and an empty object.
        "b/s/se/garbage.dcm": f"{PATIENT_NAME} {PATIENT_ID} {BIRTH_DATE}".encode() * 10,
        "b/s/se/empty.dcm": b"",
        # The file meta cut in its middle.
        "b/s/se/cut-meta.dcm": good[: meta_end - 10],
        # A valid file meta, then bytes that are no dataset.
        "b/s/se/no-dataset.dcm": good[:meta_end] + b"\xff" * 300,
        # The dataset cut right after the patient data, before the study UID.
        "b/s/se/cut-dataset.dcm": good[: good.index(BIRTH_DATE.encode()) + 8],
    }
    for key, data in bad.items():
        put(store, key, data)
    caplog.set_level(logging.DEBUG)

    assert reconcile(store, tracker) == len(bad)

    rows = {r.key: r for r in tracker.receipts_for_instance("")}
    rows.update({r.key: r for r in tracker.receipts_for_instance("1.2.3.10")})
    assert set(rows) == set(bad)
    for key, data in bad.items():
        row = rows[key]
        assert row.size == len(data)
        assert row.batch_id == "b"
        assert row.peer == ""
        assert row.received_at == MTIME
    for key in ("b/s/se/garbage.dcm", "b/s/se/empty.dcm", "b/s/se/cut-meta.dcm"):
        assert rows[key].sha256 == ""  # the dataset cannot be located
        assert rows[key].sop_instance_uid == rows[key].transfer_syntax_uid == ""
    for key in ("b/s/se/no-dataset.dcm", "b/s/se/cut-dataset.dcm"):
        row = rows[key]
        assert (row.sop_class_uid, row.sop_instance_uid) == (CTImageStorage, "1.2.3.10")
        assert row.transfer_syntax_uid == ExplicitVRLittleEndian
        assert row.calling_ae == "CT_SCANNER"
        assert row.study_instance_uid == row.series_instance_uid == ""
        assert row.sha256 == hashlib.sha256(bad[key][meta_end:]).hexdigest()

    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    for key in bad:
        assert any(key in r.getMessage() for r in warnings), key
    _assert_no_phi(caplog)
    assert tracker.counts_by_state()["RECEIVED"] == len(bad)
    assert reconcile(store, tracker) == 0


def test_parser_failure_reason_holds_no_element_value(
    store: LocalObjectStore,
    tracker: SqliteTracker,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    data = part10(sop_instance_uid="1.2.3.11")
    put(store, "b/s/se/1.2.3.11.dcm", data)

    def failing_parser(*args: object, **kwargs: object) -> Dataset:
        raise ValueError(f"invalid value {PATIENT_NAME!r}")

    monkeypatch.setattr(reconcile_module, "read_dataset", failing_parser)
    caplog.set_level(logging.DEBUG)
    assert reconcile(store, tracker) == 1
    (row,) = tracker.receipts_for_instance("1.2.3.11")
    assert row.study_instance_uid == ""
    assert row.sha256 == dataset_sha256(data)
    assert any("ValueError" in r.getMessage() for r in caplog.records)
    _assert_no_phi(caplog)


def test_object_that_cannot_be_read_is_retried_next_time(
    store: LocalObjectStore, tracker: SqliteTracker, caplog: pytest.LogCaptureFixture
) -> None:
    one = part10(sop_instance_uid="1.2.3.21")
    two = part10(sop_instance_uid="1.2.3.22")
    put(store, key_for("b", one), one)
    put(store, key_for("b", two), two)
    failing = FailingStore(store, fail_key=key_for("b", two))
    caplog.set_level(logging.INFO)
    assert reconcile(failing, tracker) == 1
    assert tracker.known_keys([key_for("b", two)]) == set()
    assert any(key_for("b", two) in r.getMessage() for r in caplog.records)
    assert reconcile(store, tracker) == 1
    assert tracker.receipts_for_instance("1.2.3.22") == [expected_receipt(key_for("b", two), two)]


def test_one_summary_line(
    store: LocalObjectStore, tracker: SqliteTracker, caplog: pytest.LogCaptureFixture
) -> None:
    data = part10(sop_instance_uid="1.2.3.31")
    put(store, key_for("b", data), data)
    caplog.set_level(logging.INFO, logger="store_scp.tracking.reconcile")
    reconcile(store, tracker)
    records = [r for r in caplog.records if r.name == "store_scp.tracking.reconcile"]
    assert len(records) == 1
    assert "objects=1 registered=1" in records[0].getMessage()
    _assert_no_phi(caplog)


def test_empty_store(store: LocalObjectStore, tracker: SqliteTracker) -> None:
    assert reconcile(store, tracker) == 0
    assert tracker.counts_by_state()[State.RECEIVED] == 0


# -- helpers -------------------------------------------------------------------------------


def _zero_counts() -> dict[str, int]:
    return {state.value: 0 for state in State}


def _dataset_bytes(data: bytes) -> bytes:
    group_length = int.from_bytes(data[140:144], "little")
    return data[144 + group_length :]


def _assert_no_phi(caplog: pytest.LogCaptureFixture) -> None:
    text = "\n".join(r.getMessage() for r in caplog.records)
    for value in (PATIENT_NAME, PATIENT_ID, BIRTH_DATE):
        assert value not in text


class _Delegating:
    """An ObjectStore that forwards to another; subclasses change `open`."""

    def __init__(self, inner: LocalObjectStore) -> None:
        self.inner = inner
        self.staging_dir = inner.staging_dir

    def commit(self, staging: Path, key: str) -> CommittedObject:
        return self.inner.commit(staging, key)

    def discard(self, staging: Path) -> None:
        self.inner.discard(staging)

    def list_keys(self, prefix: str = "") -> Iterator[str]:
        return self.inner.list_keys(prefix)

    def open(self, key: str) -> BinaryIO:
        return self.inner.open(key)

    def delete(self, key: str) -> None:
        self.inner.delete(key)

    def exists(self, key: str) -> bool:
        return self.inner.exists(key)

    def put_bytes(
        self, key: str, data: bytes, *, content_type: str = "application/octet-stream"
    ) -> None:
        self.inner.put_bytes(key, data, content_type=content_type)

    def copy(self, src: str, dst: str) -> None:
        self.inner.copy(src, dst)

    def move(self, src: str, dst: str) -> None:
        self.inner.move(src, dst)

    def uri(self, prefix: str) -> str:
        return self.inner.uri(prefix)


class _Stream(io.RawIOBase):
    """A readable, non-seekable stream with no file behind it (like an S3 body)."""

    def __init__(self, inner: BinaryIO, on_read: RecordingStore | None = None) -> None:
        self.inner = inner
        self.on_read = on_read

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        data = self.inner.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def close(self) -> None:
        self.inner.close()
        super().close()


class UnseekableStore(_Delegating):
    def open(self, key: str) -> BinaryIO:
        return io.BufferedReader(_Stream(self.inner.open(key)))  # type: ignore[return-value]


class _RecordingReader:
    """Wraps a real file and records the size of every read."""

    def __init__(self, inner: BinaryIO, owner: RecordingStore) -> None:
        self._inner = inner
        self._owner = owner

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            self._owner.unbounded_read = True
        else:
            self._owner.largest_read = max(self._owner.largest_read, size)
        return self._inner.read(size)

    def __getattr__(self, name: str) -> object:
        return getattr(self._inner, name)

    def __enter__(self) -> _RecordingReader:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._inner.close()


class RecordingStore(_Delegating):
    def __init__(self, inner: LocalObjectStore) -> None:
        super().__init__(inner)
        self.largest_read = 0
        self.unbounded_read = False

    def open(self, key: str) -> BinaryIO:
        return _RecordingReader(self.inner.open(key), self)  # type: ignore[return-value]


class FailingStore(_Delegating):
    def __init__(self, inner: LocalObjectStore, fail_key: str) -> None:
        super().__init__(inner)
        self.fail_key = fail_key

    def open(self, key: str) -> BinaryIO:
        if key == self.fail_key:
            raise OSError(5, "Input/output error")
        return self.inner.open(key)


def test_helper_stores_satisfy_the_port(store: LocalObjectStore) -> None:
    for wrapper in (UnseekableStore(store), RecordingStore(store), FailingStore(store, "")):
        port: ObjectStore = wrapper
        assert list(port.list_keys()) == []
