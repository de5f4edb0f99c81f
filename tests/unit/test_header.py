"""HeaderScanner against pydicom on every bundled test file, and on hand-built edge cases;
file_meta() read back by pydicom."""

from __future__ import annotations

import random
import struct
import tracemalloc
import warnings
import zlib
from io import BytesIO
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.data.data_manager import DATA_ROOT, external_data_sources
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.uid import UID

from store_scp.dicom.header import (
    LENGTH_LIMITS,
    MAX_PENDING,
    HeaderError,
    HeaderInfo,
    HeaderScanner,
    file_meta,
)

SOP_CLASS = "1.2.840.10008.5.1.4.1.1.2"
SOP_INSTANCE = "1.2.826.0.1.3680043.8.498.1"
STUDY = "1.2.826.0.1.3680043.8.498.2"
SERIES = "1.2.826.0.1.3680043.8.498.33"
UIDS = (SOP_CLASS, SOP_INSTANCE, STUDY, SERIES)
_LONG_VRS = {
    b"OB",
    b"OD",
    b"OF",
    b"OL",
    b"OV",
    b"OW",
    b"SQ",
    b"SV",
    b"UC",
    b"UN",
    b"UR",
    b"UT",
    b"UV",
}
UNDEFINED = 0xFFFFFFFF


# --- hand encoders (PS3.5 7.1) ---------------------------------------------------------------


def ex(
    group: int, elem: int, vr: str, value: bytes, *, length: int | None = None, big: bool = False
) -> bytes:
    """An explicit VR element."""
    e = ">" if big else "<"
    n = len(value) if length is None else length
    if vr.encode() in _LONG_VRS:
        return struct.pack(e + "HH2s2xI", group, elem, vr.encode(), n) + value
    return struct.pack(e + "HH2sH", group, elem, vr.encode(), n) + value


def im(group: int, elem: int, value: bytes, *, length: int | None = None) -> bytes:
    """An implicit VR little endian element."""
    return struct.pack("<HHI", group, elem, len(value) if length is None else length) + value


def item(value: bytes, *, undefined: bool = False, big: bool = False) -> bytes:
    e = ">" if big else "<"
    if undefined:
        return (
            struct.pack(e + "HHI", 0xFFFE, 0xE000, UNDEFINED)
            + value
            + struct.pack(e + "HHI", 0xFFFE, 0xE00D, 0)
        )
    return struct.pack(e + "HHI", 0xFFFE, 0xE000, len(value)) + value


def seq_delim(big: bool = False) -> bytes:
    return struct.pack(">HHI" if big else "<HHI", 0xFFFE, 0xE0DD, 0)


def ui(uid: str) -> bytes:
    raw = uid.encode()
    return raw + b"\x00" if len(raw) % 2 else raw


def text(value: str) -> bytes:
    raw = value.encode()
    return raw + b" " if len(raw) % 2 else raw


def explicit_uids(big: bool = False, uids: tuple[str, ...] = UIDS) -> tuple[bytes, bytes]:
    """(0008,0016)+(0008,0018) and (0020,000D)+(0020,000E), explicit VR."""
    head = ex(0x0008, 0x0016, "UI", ui(uids[0]), big=big) + ex(
        0x0008, 0x0018, "UI", ui(uids[1]), big=big
    )
    tail = ex(0x0020, 0x000D, "UI", ui(uids[2]), big=big) + ex(
        0x0020, 0x000E, "UI", ui(uids[3]), big=big
    )
    return head, tail


def scan(
    data: bytes,
    explicit: bool = True,
    little: bool = True,
    deflated: bool = False,
    chunks: int | list[int] = 0,
    seed: int = 0,
) -> HeaderInfo:
    scanner = HeaderScanner(explicit, little, deflated)
    for part in split(data, chunks, seed):
        scanner.feed(part)
    return scanner.finish()


def split(data: bytes, chunks: int | list[int], seed: int = 0) -> list[bytes]:
    if chunks == 0:
        return [data]
    rng = random.Random(seed)
    out, pos = [], 0
    while pos < len(data):
        n = chunks if isinstance(chunks, int) and chunks > 0 else rng.randint(1, 64)
        out.append(data[pos : pos + n])
        pos += n
    return out


def uids_of(info: HeaderInfo) -> tuple[str, str, str, str]:
    return (
        info.sop_class_uid,
        info.sop_instance_uid,
        info.study_instance_uid,
        info.series_instance_uid,
    )


def pydicom_encode(ds: Dataset, implicit: bool, little: bool) -> bytes:
    fp = DicomBytesIO()
    fp.is_little_endian = little
    fp.is_implicit_VR = implicit
    write_dataset(fp, ds)
    return fp.getvalue()


def deflate(raw: bytes) -> bytes:
    c = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
    return c.compress(raw) + c.flush()


def sample_dataset() -> Dataset:
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.SOPClassUID = SOP_CLASS
    ds.SOPInstanceUID = SOP_INSTANCE
    ds.StudyDate = "20240101"
    ds.AccessionNumber = "A1"
    ds.Modality = "CT"
    ds.PatientName = "Doe^Jane"
    ds.PatientID = "123"
    ds.StudyInstanceUID = STUDY
    ds.SeriesInstanceUID = SERIES
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = 2
    ds.Columns = 2
    ds.BitsAllocated = 8
    ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PixelData = b"\x00" * 4
    return ds


# --- every bundled pydicom file --------------------------------------------------------------

_LONG_META = _LONG_VRS


def _dataset_start(raw: bytes) -> int:
    """Offset of the dataset: after the preamble, "DICM" and the group 0002 elements."""
    pos = 132 if raw[128:132] == b"DICM" else 0
    while len(raw) - pos >= 8 and struct.unpack_from("<H", raw, pos)[0] == 0x0002:
        vr = raw[pos + 4 : pos + 6]
        if vr in _LONG_META:
            pos += 12 + struct.unpack_from("<I", raw, pos + 8)[0]
        else:
            pos += 8 + struct.unpack_from("<H", raw, pos + 6)[0]
    return pos


def _readable_test_files() -> list[tuple[str, Path]]:
    """Files bundled with pydicom and with the pydicom-data package: local only, so nothing is
    ever downloaded (get_testdata_files would try the network for what is missing)."""
    roots = [Path(DATA_ROOT) / "test_files"]
    roots += [Path(src.data_path) for src in external_data_sources().values()]
    out = []
    for root in roots:
        for path in sorted(root.rglob("*")):
            if path.is_file() and path.suffix.lower() in (".dcm", "") and path.stat().st_size:
                out.append((path.name, path))
    return out


TEST_FILES = _readable_test_files()


def test_there_are_many_bundled_files() -> None:
    assert len(TEST_FILES) > 50


@pytest.mark.parametrize("path", [p for _, p in TEST_FILES], ids=[n for n, _ in TEST_FILES])
def test_scanner_agrees_with_pydicom_on_bundled_files(path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            ds = dcmread(path, force=True)
            expected = tuple(
                str(ds.get(k) or "")
                for k in ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")
            )
        except Exception as exc:  # pydicom itself cannot parse it
            pytest.skip(f"pydicom cannot read it: {type(exc).__name__}")
        if "SOPClassUID" not in ds:
            pytest.skip("not a dataset pydicom can parse (no SOP Class UID)")
        implicit, little = ds.original_encoding
        ts = ds.file_meta.get("TransferSyntaxUID") if ds.file_meta else None
        deflated = ts is not None and UID(str(ts)).is_deflated
    raw = path.read_bytes()
    data = raw[_dataset_start(raw) :]
    assert implicit is not None and little is not None
    for seed in range(3):
        scanner = HeaderScanner(not implicit, little, deflated)
        rng = random.Random(f"{path.name}-{seed}")
        pos = 0
        while pos < len(data) and not scanner.done:
            n = rng.choice((1, 2, 3, 7, 8, 12, 100, 1000, 4096, 16384))
            scanner.feed(data[pos : pos + n])
            pos += n
        info = scanner.finish()
        assert uids_of(info) == expected
        assert info.file_meta_prefix == 0


# --- group 0002 at the start of a dataset ----------------------------------------------------


def meta_elements() -> bytes:
    return (
        ex(0x0002, 0x0000, "UL", struct.pack("<I", 100))
        + ex(0x0002, 0x0001, "OB", b"\x00\x01")
        + ex(0x0002, 0x0002, "UI", ui(SOP_CLASS))
        + ex(0x0002, 0x0003, "UI", ui(SOP_INSTANCE))
        + ex(0x0002, 0x0010, "UI", ui("1.2.840.10008.1.2.1"))
        + ex(0x0002, 0x0013, "SH", text("X"))
    )


@pytest.mark.parametrize("chunks", [0, 1, 5, -1])
def test_group_0002_prefix_is_measured_exactly(chunks: int) -> None:
    meta = meta_elements()
    head, tail = explicit_uids()
    data = meta + ex(0x0008, 0x0005, "CS", text("ISO_IR 100")) + head + tail
    info = scan(data, chunks=chunks)
    assert info.file_meta_prefix == len(meta)
    assert uids_of(info) == UIDS


def test_group_0002_prefix_in_an_implicit_dataset() -> None:
    meta = im(0x0002, 0x0000, struct.pack("<I", 8)) + im(0x0002, 0x0010, ui("1.2.840.10008.1.2"))
    body = im(0x0008, 0x0016, ui(SOP_CLASS)) + im(0x0008, 0x0018, ui(SOP_INSTANCE))
    body += im(0x0020, 0x000D, ui(STUDY)) + im(0x0020, 0x000E, ui(SERIES))
    info = scan(meta + body, explicit=False, chunks=3)
    assert info.file_meta_prefix == len(meta)
    assert uids_of(info) == UIDS


def test_file_meta_known_only_after_the_first_other_element() -> None:
    meta = meta_elements()
    head, tail = explicit_uids()
    scanner = HeaderScanner(True, True)
    scanner.feed(meta)
    assert not scanner.file_meta_known
    scanner.feed(head[:8])
    assert scanner.file_meta_known
    assert scanner.info.file_meta_prefix == len(meta)
    scanner.feed(head[8:] + tail + ex(0x0028, 0x0010, "US", b"\x02\x00"))
    assert scanner.done
    assert scanner.info.file_meta_prefix == len(meta)
    assert uids_of(scanner.info) == UIDS


def test_no_group_0002_means_prefix_0() -> None:
    head, _ = explicit_uids()
    scanner = HeaderScanner(True, True)
    scanner.feed(head[:8])
    assert scanner.file_meta_known
    assert scanner.info.file_meta_prefix == 0


# --- encodings -------------------------------------------------------------------------------


@pytest.mark.parametrize(("implicit", "little"), [(True, True), (False, True), (False, False)])
@pytest.mark.parametrize("chunks", [0, 1, 2, 7, -1])
def test_pydicom_encoded_datasets(implicit: bool, little: bool, chunks: int) -> None:
    data = pydicom_encode(sample_dataset(), implicit, little)
    info = scan(data, explicit=not implicit, little=little, chunks=chunks)
    assert uids_of(info) == UIDS
    assert info.over_limits == {}


def test_explicit_big_endian_with_hand_built_sequence() -> None:
    head, tail = explicit_uids(big=True)
    inner = ex(0x0008, 0x0100, "SH", text("CODE"), big=True) + ex(
        0x0020, 0x000E, "UI", ui("9.9"), big=True
    )
    sq = (
        ex(0x0008, 0x1140, "SQ", b"", length=UNDEFINED, big=True)
        + item(inner, undefined=True, big=True)
        + seq_delim(big=True)
    )
    data = head + sq + tail + ex(0x0028, 0x0010, "US", struct.pack(">H", 2), big=True)
    for chunks in (0, 1, 3):
        assert uids_of(scan(data, little=False, chunks=chunks)) == UIDS


@pytest.mark.parametrize("chunks", [0, 1, 13, -1])
def test_deflated_dataset(chunks: int) -> None:
    raw = pydicom_encode(sample_dataset(), implicit=False, little=True)
    data = deflate(raw + bytes(10_000))
    info = scan(data, deflated=True, chunks=chunks)
    assert uids_of(info) == UIDS


def test_deflated_garbage_is_a_header_error() -> None:
    with pytest.raises(HeaderError):
        scan(b"\xff\xff\xff\xff" * 10, deflated=True)


# --- sequences -------------------------------------------------------------------------------


@pytest.mark.parametrize("chunks", [0, 1, 5, -1])
def test_un_sequence_of_undefined_length_is_implicit_inside(chunks: int) -> None:
    # Inside, implicit VR: a length of 0x4955 = "UI" read as explicit would derail the walk.
    inner = im(0x0008, 0x1150, ui("1.2.840.10008.5.1.4.1.1.4")) + im(
        0x0008, 0x1155, ui("1.2.3.4.5.6")
    )
    inner += im(0x0020, 0x000E, ui("7.7.7"))  # not top level: must not count
    nested_sq = (
        im(0x0040, 0xA730, b"", length=UNDEFINED)
        + item(im(0x0040, 0xA010, text("CONTAINS")), undefined=True)
        + seq_delim()
    )
    un = ex(0x0008, 0x1140, "UN", b"", length=UNDEFINED)
    un += item(inner + nested_sq, undefined=True) + item(inner) + seq_delim()
    head, tail = explicit_uids()
    data = head + un + tail
    assert uids_of(scan(data, chunks=chunks)) == UIDS


@pytest.mark.parametrize("chunks", [0, 1, 4, -1])
def test_nested_undefined_length_sequences_before_series_uid(chunks: int) -> None:
    decoys = (
        ex(0x0008, 0x0016, "UI", ui("9.1"))
        + ex(0x0008, 0x0018, "UI", ui("9.2"))
        + ex(0x0020, 0x000D, "UI", ui("9.3"))
        + ex(0x0020, 0x000E, "UI", ui("9.4"))
        + ex(0x0028, 0x0010, "US", b"\x02\x00")  # a tag past (0020,000E) inside an item
        + ex(0x0010, 0x0010, "PN", text("X" * 400))  # over a limit, but not top level
    )
    level3 = (
        ex(0x0040, 0xA168, "SQ", b"", length=UNDEFINED) + item(decoys, undefined=True) + seq_delim()
    )
    level2 = (
        ex(0x0040, 0xA730, "SQ", b"", length=UNDEFINED)
        + item(decoys + level3, undefined=True)
        + item(decoys)
        + seq_delim()
    )
    level1 = ex(0x0008, 0x1115, "SQ", b"", length=UNDEFINED)
    level1 += (
        item(level2 + decoys, undefined=True)
        + item(level3)
        + item(b"", undefined=True)
        + seq_delim()
    )
    defined_sq = ex(0x0008, 0x1120, "SQ", item(level2 + decoys))  # defined length: skipped whole
    head, tail = explicit_uids()
    data = head + level1 + defined_sq + tail
    info = scan(data, chunks=chunks)
    assert uids_of(info) == UIDS
    assert info.over_limits == {}


def test_implicit_nested_sequences() -> None:
    inner = im(0x0020, 0x000E, ui("9.9")) + im(0x0008, 0x1155, ui("1.2"))
    sq = (
        im(0x0008, 0x1140, b"", length=UNDEFINED)
        + item(inner, undefined=True)
        + item(inner)
        + seq_delim()
    )
    data = im(0x0008, 0x0016, ui(SOP_CLASS)) + im(0x0008, 0x0018, ui(SOP_INSTANCE)) + sq
    data += im(0x0020, 0x000D, ui(STUDY)) + im(0x0020, 0x000E, ui(SERIES))
    assert uids_of(scan(data, explicit=False, chunks=-1)) == UIDS


# --- leniency --------------------------------------------------------------------------------


@pytest.mark.parametrize("chunks", [0, 1, 3])
def test_implicit_dataset_sent_under_an_explicit_syntax(chunks: int) -> None:
    data = pydicom_encode(sample_dataset(), implicit=True, little=True)
    info = scan(data, explicit=True, chunks=chunks)
    assert uids_of(info) == UIDS


def test_stops_after_series_uid_and_ignores_the_rest() -> None:
    head, tail = explicit_uids()
    scanner = HeaderScanner(True, True)
    scanner.feed(head + tail + ex(0x0028, 0x0010, "US", b"\x02\x00"))
    assert scanner.done
    scanner.feed(b"\xff" * 100)  # garbage after the header is not looked at
    assert uids_of(scanner.finish()) == UIDS


def test_missing_uids_are_empty() -> None:
    data = ex(0x0008, 0x0016, "UI", ui(SOP_CLASS)) + ex(0x0028, 0x0010, "US", b"\x02\x00")
    info = scan(data)
    assert uids_of(info) == (SOP_CLASS, "", "", "")


def test_uid_padding_is_stripped() -> None:
    data = ex(0x0008, 0x0016, "UI", b"1.2.3 ") + ex(0x0008, 0x0018, "UI", b"1.2.4\x00")
    info = scan(data)
    assert (info.sop_class_uid, info.sop_instance_uid) == ("1.2.3", "1.2.4")


# --- errors ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "explicit"),
    [
        (struct.pack("<HHI", 0xFFFE, 0xE000, 4) + b"abcd", True),  # item at top level
        (struct.pack("<HHI", 0xFFFE, 0xE0DD, 0), False),  # delimiter at top level
        (struct.pack("<HHI", 0xFFFE, 0xE00D, 0), True),
        (struct.pack("<HHI", 0xFFFE, 0x1234, 0), False),  # no such tag in group FFFE
        (ex(0x0008, 0x0005, "CS", b"AB") + b"\x08\x00\x16\x00\x01\x02\x04\x00abcd", True),  # bad VR
        (ex(0x0008, 0x0005, "CS", b"AB") + b"\x08\x00\x16\x00ui\x04\x00abcd", True),  # lowercase VR
        (
            ex(0x0008, 0x1140, "SQ", b"", length=UNDEFINED)
            + item(ex(0x7FE0, 0x0010, "OW", b"", length=UNDEFINED), undefined=True),
            True,
        ),  # native pixel data of undefined length
    ],
)
def test_garbage_is_a_header_error(data: bytes, explicit: bool) -> None:
    with pytest.raises(HeaderError):
        scan(data, explicit=explicit)
    with pytest.raises(HeaderError):
        scan(data, explicit=explicit, chunks=1)


def test_wanted_element_too_long_to_be_a_uid_is_skipped_and_left_unset() -> None:
    """A 640 KiB "UID" is not held in memory; left unset, the object fails validation."""
    data = im(0x0008, 0x0018, b"", length=10 * MAX_PENDING) + bytes(10 * MAX_PENDING)
    scanner = HeaderScanner(False, True)
    for part in split(data, 4096):
        scanner.feed(part)
        assert len(scanner._buf) <= MAX_PENDING
    assert scanner.finish().sop_instance_uid == ""


def test_unneeded_huge_value_is_skipped_without_holding_it() -> None:
    big = 5 * MAX_PENDING
    head, tail = explicit_uids()
    data = head + ex(0x0009, 0x1010, "OB", bytes(big)) + tail
    scanner = HeaderScanner(True, True)
    for part in split(data, 4096):
        scanner.feed(part)
        assert len(scanner._buf) <= MAX_PENDING
    assert uids_of(scanner.finish()) == UIDS


# --- lengths over HealthImaging's limits ------------------------------------------------------


@pytest.mark.parametrize("explicit", [True, False])
def test_lengths_over_limits_are_recorded_by_keyword_never_the_value(explicit: bool) -> None:
    secret_name = "Secret^Patient^" + "N" * 290  # 305 characters
    values = {
        (0x0008, 0x0020): ("DA", "2" * 20),  # StudyDate: 20 > 18
        (0x0008, 0x0050): ("SH", "A" * 256),  # at the limit: not reported
        (0x0008, 0x1030): ("LO", "D" * 257 + "  "),  # padding does not count
        (0x0010, 0x0010): ("PN", secret_name),
        (0x0010, 0x0020): ("LO", "I" * 10),
        (0x0010, 0x0030): ("DA", "19700101"),
        (0x0010, 0x0040): ("CS", "S" * 17),
    }
    body = b""
    for (group, elem), (vr, value) in sorted(values.items()):
        raw = text(value)
        body += ex(group, elem, vr, raw) if explicit else im(group, elem, raw)
    head, tail = (
        explicit_uids()
        if explicit
        else (
            im(0x0008, 0x0016, ui(SOP_CLASS)) + im(0x0008, 0x0018, ui(SOP_INSTANCE)),
            im(0x0020, 0x000D, ui(STUDY)) + im(0x0020, 0x000E, ui(SERIES)),
        )
    )
    # keep tag order: (0008,0016/0018) < (0008,0020)
    data = head + body + tail
    info = scan(data, explicit=explicit, chunks=-1)
    assert uids_of(info) == UIDS
    assert info.over_limits == {
        "StudyDate": 20,
        "StudyDescription": 257,
        "PatientName": len(secret_name),
        "PatientSex": 17,
    }
    assert set(info.over_limits) <= {kw for kw, _ in LENGTH_LIMITS.values()}
    assert "Secret" not in repr(info)
    assert "DDDD" not in repr(info)


def test_very_long_limited_element_is_recorded_not_refused() -> None:
    data = im(0x0008, 0x0016, ui(SOP_CLASS)) + im(0x0008, 0x0018, ui(SOP_INSTANCE))
    data += im(0x0008, 0x1030, b"D" * 200_000)  # StudyDescription, 200,000 bytes
    data += im(0x0020, 0x000D, ui(STUDY)) + im(0x0020, 0x000E, ui(SERIES))
    info = scan(data, explicit=False, chunks=16384)
    assert uids_of(info) == UIDS
    assert info.over_limits == {"StudyDescription": 200_000}


def test_deflated_fragment_does_not_inflate_unbounded() -> None:
    head, tail = explicit_uids()
    raw = (
        ex(0x0008, 0x0005, "CS", text("ISO_IR 100"))
        + ex(0x0008, 0x0012, "UN", bytes(32 << 20))
        + head
        + tail
    )
    data = deflate(raw)
    assert len(data) < 64 * 1024  # one modest P-DATA fragment
    scanner = HeaderScanner(True, True, deflated=True)
    tracemalloc.start()
    try:
        scanner.feed(data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert uids_of(scanner.finish()) == UIDS
    assert peak < 8 << 20


# --- Part 10 file meta -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sop_class", "sop_instance", "ts", "version", "ae"),
    [
        (SOP_CLASS, SOP_INSTANCE, "1.2.840.10008.1.2.1", "STORE_SCP_010", "MODALITY"),
        ("1.2.840.10008.5.1.4.1.1.4", SERIES, "1.2.840.10008.1.2", "V1", "CT1"),  # odd lengths
        (SOP_CLASS, "1.2.3", "1.2.840.10008.1.2.4.201", "", "A"),
    ],
)
def test_file_meta_read_back_by_pydicom(
    sop_class: str, sop_instance: str, ts: str, version: str, ae: str
) -> None:
    impl = "2.25.75996766287081372395430292410336412748"
    meta = file_meta(sop_class, sop_instance, ts, impl, version, ae)
    assert meta[:128] == bytes(128)
    assert meta[128:132] == b"DICM"
    ds = sample_dataset()
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_instance
    body = pydicom_encode(ds, implicit=ts == "1.2.840.10008.1.2", little=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # pydicom must not have to fix anything up
        read = dcmread(BytesIO(meta + body))
    fm = read.file_meta
    assert fm.FileMetaInformationVersion == b"\x00\x01"
    assert fm.MediaStorageSOPClassUID == sop_class
    assert fm.MediaStorageSOPInstanceUID == sop_instance
    assert fm.TransferSyntaxUID == ts
    assert fm.ImplementationClassUID == impl
    assert fm.get("ImplementationVersionName", "") == version
    assert fm.SourceApplicationEntityTitle == ae
    assert fm.FileMetaInformationGroupLength == len(meta) - 132 - 12
    for elem in fm:
        assert len(elem.value) % 2 == 0 if isinstance(elem.value, bytes) else True
    assert read.SOPInstanceUID == sop_instance
    assert read.SeriesInstanceUID == SERIES
