"""The interoperability test corpus: real DICOM files in many transfer syntaxes and SOP classes.

`build_corpus(folder)` fills a folder with Part 10 files and describes each one. Nothing is
downloaded; every file comes from one of these places:

* **pydicom's bundled test files** (only those shipped inside the pydicom package). Their data set
  bytes are kept verbatim; the file meta is rewritten from the data set's own SOP Class/Instance
  UIDs (a few bundled files carry file meta UIDs that disagree with their data set, and senders
  take the command UIDs from one or the other).
* **generated images** written by pydicom (a CT, an RGB secondary capture, a multi-frame
  grayscale secondary capture), whose pixels are a known function of row, column and frame;
* **DCMTK's encoders** (`dcmcjpeg`, `dcmcjpls`, `dcmcrle`, `dcmconv`) run on those generated
  images, so the compressed files carry pixels DCMTK really encoded;
* **pydicom's encoders** (JPEG 2000 through pylibjpeg-openjpeg, RLE through pydicom itself);
* **embedded codestreams** for the syntaxes no installed package encodes: HTJ2K
  (1.2.840.10008.1.2.4.201/202/203) and JPEG XL (1.2.840.10008.1.2.4.110/111/112). They were
  made once by real encoders (OpenJPH 0.26.3 and libjxl 0.11.2, through the `imagecodecs`
  package) from `synthetic_image(32, 32, 12)` and `synthetic_image(32, 32, 8)`;
  `regenerate_codestreams()` makes them again where `imagecodecs` is installed. Each is wrapped
  as encapsulated Pixel Data (Basic Offset Table + one fragment) in an Explicit VR Little Endian
  data set, the encoding PS3.5 prescribes for every encapsulated syntax. The HTJ2K codestreams
  are checked here to be Part 15 codestreams (CAP marker, HT code-block style; the RPCL one has
  RPCL progression and a TLM marker) and pylibjpeg-openjpeg decodes them; no installed package
  decodes JPEG XL, so those are checked for their signatures only.

Every file has its own SOP Instance UID, so a receiver's objects map back to their sources.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from pydicom import uid as U
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset, validate_file_meta
from pydicom.encaps import encapsulate
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset, write_file_meta_info

DCMTK = Path("/usr/bin")  # pynetdicom installs look-alike console scripts: call DCMTK by path
#: DCMTK tools leave Nagle's algorithm on unless told otherwise.
DCMTK_ENV = {**os.environ, "TCP_NODELAY": "1"}

# Transfer syntaxes DCMTK 3.6.7 does not know (added to DICOM after its release).
HTJ2K_LOSSLESS = "1.2.840.10008.1.2.4.201"
HTJ2K_LOSSLESS_RPCL = "1.2.840.10008.1.2.4.202"
HTJ2K = "1.2.840.10008.1.2.4.203"
JPEG_XL_LOSSLESS = "1.2.840.10008.1.2.4.110"
JPEG_XL_JPEG_RECOMPRESSION = "1.2.840.10008.1.2.4.111"
JPEG_XL = "1.2.840.10008.1.2.4.112"
NEWER_THAN_DCMTK_367 = frozenset(
    {
        HTJ2K_LOSSLESS,
        HTJ2K_LOSSLESS_RPCL,
        HTJ2K,
        JPEG_XL_LOSSLESS,
        JPEG_XL_JPEG_RECOMPRESSION,
        JPEG_XL,
    }
)
JPEG_XL_SYNTAXES = frozenset({JPEG_XL_LOSSLESS, JPEG_XL_JPEG_RECOMPRESSION, JPEG_XL})

UNCOMPRESSED = frozenset(
    {U.ImplicitVRLittleEndian, U.ExplicitVRLittleEndian, U.ExplicitVRBigEndian}
)
NOT_ENCAPSULATED = UNCOMPRESSED | {U.DeflatedExplicitVRLittleEndian}

CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
MULTIFRAME_GRAYSCALE_WORD_SC = "1.2.840.10008.5.1.4.1.1.7.3"


@dataclass(eq=False)
class CorpusFile:
    """One Part 10 file of the corpus."""

    key: str  # short stable name, used in test ids
    path: Path
    transfer_syntax: str
    sop_class_uid: str
    sop_instance_uid: str
    origin: str  # where its data set bytes come from
    #: The pixels it must decode to, where they are known exactly (lossless from a known image).
    expected_pixels: np.ndarray | None = None
    lossy: bool = False

    @property
    def dcmtk_knows_syntax(self) -> bool:
        return self.transfer_syntax not in NEWER_THAN_DCMTK_367

    @property
    def encapsulated(self) -> bool:
        return self.transfer_syntax not in NOT_ENCAPSULATED

    def dataset_bytes(self) -> bytes:
        return split_part10(self.path.read_bytes())[1]


@dataclass
class Corpus:
    root: Path
    files: list[CorpusFile] = field(default_factory=list)
    #: transfer syntax -> why no file of that syntax could be made here
    skipped: dict[str, str] = field(default_factory=dict)

    def for_dcmtk(self) -> list[CorpusFile]:
        return [f for f in self.files if f.dcmtk_knows_syntax]

    def by_key(self, key: str) -> CorpusFile:
        return next(f for f in self.files if f.key == key)

    def syntaxes(self) -> set[str]:
        return {f.transfer_syntax for f in self.files}


# --------------------------------------------------------------------------------------------
# Part 10 helpers

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


def split_part10(data: bytes) -> tuple[bytes, bytes]:
    """(preamble + DICM + file meta, data set bytes) of a Part 10 file, cut at the first element
    outside group 0002 (walked element by element; the group length is not trusted)."""
    if data[128:132] != b"DICM":
        raise ValueError("not a DICOM Part 10 file: no DICM prefix")
    pos = 132
    while pos + 8 <= len(data):
        group = int.from_bytes(data[pos : pos + 2], "little")
        if group != 0x0002:
            break
        vr = data[pos + 4 : pos + 6]
        if vr in _LONG_VRS:
            length = int.from_bytes(data[pos + 8 : pos + 12], "little")
            pos += 12 + length
        else:
            length = int.from_bytes(data[pos + 6 : pos + 8], "little")
            pos += 8 + length
    return data[:pos], data[pos:]


def write_part10(
    path: Path, dataset: bytes, *, sop_class_uid: str, sop_instance_uid: str, transfer_syntax: str
) -> None:
    """A Part 10 file holding `dataset` verbatim, under file meta written for it."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = U.UID(sop_class_uid)
    meta.MediaStorageSOPInstanceUID = U.UID(sop_instance_uid)
    meta.TransferSyntaxUID = U.UID(transfer_syntax)
    meta.ImplementationClassUID = U.PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = "INTEROP_CORPUS"
    fp = DicomBytesIO()
    fp.is_little_endian = True
    fp.is_implicit_VR = False
    write_file_meta_info(fp, meta, enforce_standard=True)
    path.write_bytes(b"\0" * 128 + b"DICM" + fp.getvalue() + dataset)


def encode_explicit_le(ds: Dataset) -> bytes:
    """The Explicit VR Little Endian encoding of a data set (no file meta)."""
    fp = DicomBytesIO()
    fp.is_little_endian = True
    fp.is_implicit_VR = False
    write_dataset(fp, ds)
    return fp.getvalue()


def read_dataset_uids(path: Path) -> tuple[str, str, str]:
    """(SOP Class UID, SOP Instance UID, transfer syntax) of a Part 10 file, from its data set."""
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    return str(ds.SOPClassUID), str(ds.SOPInstanceUID), str(ds.file_meta.TransferSyntaxUID)


# --------------------------------------------------------------------------------------------
# generated images


def synthetic_image(rows: int, cols: int, bits: int, frame: int = 0) -> np.ndarray:
    """A deterministic image with texture (not flat: encoders have real work to do)."""
    y, x = np.mgrid[0:rows, 0:cols].astype(np.int64)
    values = (x * 37 + y * 91 + (x * y) // 3 + frame * 101) ^ ((x ^ y) << 2)
    return (values % (1 << bits)).astype(np.uint16 if bits > 8 else np.uint8)


def _base_dataset(sop_class_uid: str, modality: str, description: str) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = sop_class_uid
    ds.SOPInstanceUID = U.generate_uid()
    ds.StudyInstanceUID = U.generate_uid()
    ds.SeriesInstanceUID = U.generate_uid()
    ds.Modality = modality
    ds.PatientName = "Interop^Corpus"
    ds.PatientID = "INTEROP-0001"
    ds.StudyDate = "20240101"
    ds.StudyTime = "120000"
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.SeriesDescription = description
    return ds


def _set_image(
    ds: Dataset, pixels: np.ndarray, *, bits_stored: int, photometric: str, frames: int = 1
) -> None:
    samples = 3 if photometric == "RGB" else 1
    ds.Rows, ds.Columns = pixels.shape[-3:-1] if samples == 3 else pixels.shape[-2:]
    ds.SamplesPerPixel = samples
    ds.PhotometricInterpretation = photometric
    if samples == 3:
        ds.PlanarConfiguration = 0
    ds.BitsAllocated = pixels.dtype.itemsize * 8
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 0
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.PixelData = pixels.tobytes()


def make_ct12(*, description: str = "generated CT 12 bit") -> tuple[Dataset, np.ndarray]:
    pixels = synthetic_image(64, 64, 12)
    ds = _base_dataset(CT_IMAGE, "CT", description)
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.RescaleIntercept = 0
    ds.RescaleSlope = 1
    _set_image(ds, pixels, bits_stored=12, photometric="MONOCHROME2")
    return ds, pixels


def make_rgb8(*, description: str = "generated RGB") -> tuple[Dataset, np.ndarray]:
    pixels = np.stack([synthetic_image(48, 64, 8, frame=c) for c in range(3)], axis=-1).astype(
        np.uint8
    )
    ds = _base_dataset(SECONDARY_CAPTURE, "OT", description)
    ds.ConversionType = "WSD"
    _set_image(ds, pixels, bits_stored=8, photometric="RGB")
    return ds, pixels


def make_multiframe(*, frames: int = 6) -> tuple[Dataset, np.ndarray]:
    pixels = np.stack([synthetic_image(40, 56, 12, frame=i) for i in range(frames)])
    ds = _base_dataset(MULTIFRAME_GRAYSCALE_WORD_SC, "OT", "generated multi-frame")
    ds.ConversionType = "WSD"
    ds.FrameIncrementPointer = 0x00181063  # Frame Time
    ds.FrameTime = 40.0
    _set_image(ds, pixels, bits_stored=12, photometric="MONOCHROME2", frames=frames)
    return ds, pixels


def _write_uncompressed(ds: Dataset, path: Path) -> None:
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = U.ExplicitVRLittleEndian
    ds.file_meta.ImplementationClassUID = U.PYDICOM_IMPLEMENTATION_UID
    ds.save_as(path, enforce_file_format=True)


# --------------------------------------------------------------------------------------------
# pydicom's bundled files: (file name, expected transfer syntax, what it adds to the corpus)

BUNDLED: tuple[tuple[str, str, str], ...] = (
    ("CT_small.dcm", U.ExplicitVRLittleEndian, "CT"),
    ("reportsi.dcm", U.ExplicitVRLittleEndian, "Basic Text SR, no pixels"),
    ("waveform_ecg.dcm", U.ExplicitVRLittleEndian, "12-lead ECG waveform"),
    ("SC_rgb_jpeg_dcmd.dcm", U.ImplicitVRLittleEndian, "RGB secondary capture, implicit"),
    ("ExplVR_BigEnd.dcm", U.ExplicitVRBigEndian, "ultrasound RGB, big endian"),
    ("image_dfl.dcm", U.DeflatedExplicitVRLittleEndian, "deflated"),
    ("SC_rgb_jpeg_dcmtk.dcm", U.JPEGBaseline8Bit, "RGB secondary capture"),
    ("examples_ybr_color.dcm", U.JPEGBaseline8Bit, "US multi-frame, 30 frames"),
    ("JPGExtended.dcm", U.JPEGExtended12Bit, "12 bit"),
    ("SC_rgb_jpeg_gdcm.dcm", U.JPEGLosslessSV1, "RGB"),
    ("MR_small_jpeg_ls_lossless.dcm", U.JPEGLSLossless, "MR"),
    ("JPEGLSNearLossless_16.dcm", U.JPEGLSNearLossless, "16 bit, no study/series UIDs"),
    ("GDCMJ2K_TextGBR.dcm", U.JPEG2000Lossless, "RGB"),
    ("JPEG2000.dcm", U.JPEG2000, "16 bit"),
    ("693_J2KI.dcm", U.JPEG2000, "CT"),
    # Not rtdose_rle.dcm: its data set is Implicit VR although its file says RLE Lossless
    # (explicit VR); DCMTK reads garbage from it. RLE comes from dcmcrle and pydicom's encoder.
)

LOSSY_SYNTAXES = frozenset(
    {
        U.JPEGBaseline8Bit,
        U.JPEGExtended12Bit,
        U.JPEGLSNearLossless,
        U.JPEG2000,
        HTJ2K,
        JPEG_XL,
        JPEG_XL_JPEG_RECOMPRESSION,
    }
)


def _add_bundled(corpus: Corpus, folder: Path) -> None:
    for name, syntax, what in BUNDLED:
        found = get_testdata_file(name, download=False)
        if not isinstance(found, str):
            corpus.skipped.setdefault(syntax, f"{name} is not bundled with this pydicom")
            continue
        src = Path(found)
        sop_class, sop_instance, ts = read_dataset_uids(src)
        assert ts == syntax, f"{name}: expected {syntax}, found {ts}"
        dataset = split_part10(src.read_bytes())[1]
        dest = folder / f"pydicom-{src.stem}.dcm"
        write_part10(
            dest,
            dataset,
            sop_class_uid=sop_class,
            sop_instance_uid=sop_instance,
            transfer_syntax=ts,
        )
        corpus.files.append(
            CorpusFile(
                key=f"pydicom-{src.stem}",
                path=dest,
                transfer_syntax=ts,
                sop_class_uid=sop_class,
                sop_instance_uid=sop_instance,
                origin=f"pydicom bundled {name} ({what})",
                lossy=ts in LOSSY_SYNTAXES,
            )
        )


# --------------------------------------------------------------------------------------------
# DCMTK's encoders on generated images


@dataclass(frozen=True)
class _DcmtkJob:
    key: str
    tool: str
    options: tuple[str, ...]
    make: Callable[[], tuple[Dataset, np.ndarray]]
    syntax: str
    lossless: bool


_DCMTK_JOBS: tuple[_DcmtkJob, ...] = (
    _DcmtkJob("dcmcjpeg-baseline", "dcmcjpeg", ("+eb",), make_rgb8, U.JPEGBaseline8Bit, False),
    _DcmtkJob("dcmcjpeg-extended", "dcmcjpeg", ("+ee",), make_ct12, U.JPEGExtended12Bit, False),
    _DcmtkJob("dcmcjpeg-lossless", "dcmcjpeg", ("+el",), make_ct12, U.JPEGLossless, True),
    _DcmtkJob("dcmcjpeg-sv1", "dcmcjpeg", ("+e1",), make_ct12, U.JPEGLosslessSV1, True),
    _DcmtkJob("dcmcjpls-lossless", "dcmcjpls", ("+el",), make_multiframe, U.JPEGLSLossless, True),
    _DcmtkJob("dcmcjpls-near", "dcmcjpls", ("+en",), make_ct12, U.JPEGLSNearLossless, False),
    _DcmtkJob("dcmcrle-rgb", "dcmcrle", (), make_rgb8, U.RLELossless, True),
    _DcmtkJob("dcmconv-implicit", "dcmconv", ("+ti",), make_ct12, U.ImplicitVRLittleEndian, True),
    _DcmtkJob("dcmconv-bigendian", "dcmconv", ("+tb",), make_ct12, U.ExplicitVRBigEndian, True),
    _DcmtkJob(
        "dcmconv-deflated", "dcmconv", ("+td",), make_ct12, U.DeflatedExplicitVRLittleEndian, True
    ),
)


def _run_dcmtk(tool: str, *args: str | Path) -> None:
    cmd = [str(DCMTK / tool), *map(str, args)]
    done = subprocess.run(cmd, capture_output=True, text=True, env=DCMTK_ENV, timeout=60)
    if done.returncode != 0:
        raise RuntimeError(f"{tool} failed ({done.returncode}): {done.stderr}{done.stdout}")


def _add_dcmtk(corpus: Corpus, folder: Path, work: Path) -> None:
    for job in _DCMTK_JOBS:
        if not (DCMTK / job.tool).exists():
            corpus.skipped.setdefault(job.syntax, f"DCMTK {job.tool} is not installed")
            continue
        ds, pixels = job.make()
        ds.SeriesDescription = f"{job.key} source"
        src = work / f"{job.key}-source.dcm"
        _write_uncompressed(ds, src)
        dest = folder / f"{job.key}.dcm"
        _run_dcmtk(job.tool, *job.options, src, dest)
        sop_class, sop_instance, ts = read_dataset_uids(dest)
        assert ts == job.syntax, f"{job.key}: {job.tool} wrote {ts}, expected {job.syntax}"
        corpus.files.append(
            CorpusFile(
                key=job.key,
                path=dest,
                transfer_syntax=ts,
                sop_class_uid=sop_class,
                sop_instance_uid=sop_instance,
                origin=f"DCMTK {job.tool} {' '.join(job.options)} of a generated image".strip(),
                expected_pixels=pixels if job.lossless else None,
                lossy=not job.lossless,
            )
        )


# --------------------------------------------------------------------------------------------
# pydicom's own encoders and plain generated files


_PYDICOM_JOBS: tuple[
    tuple[str, str, Callable[[], tuple[Dataset, np.ndarray]], dict[str, object]], ...
] = (
    ("pydicom-j2k-lossless", U.JPEG2000Lossless, make_ct12, {}),
    ("pydicom-j2k-lossy", U.JPEG2000, make_ct12, {"j2k_cr": [8]}),
    ("pydicom-j2k-multiframe", U.JPEG2000Lossless, make_multiframe, {}),
    ("pydicom-rle-multiframe", U.RLELossless, make_multiframe, {}),
)


def _add_pydicom_encoded(corpus: Corpus, folder: Path) -> None:
    ds, pixels = make_multiframe()
    dest = folder / "generated-multiframe.dcm"
    _write_uncompressed(ds, dest)
    corpus.files.append(
        CorpusFile(
            key="generated-multiframe",
            path=dest,
            transfer_syntax=U.ExplicitVRLittleEndian,
            sop_class_uid=str(ds.SOPClassUID),
            sop_instance_uid=str(ds.SOPInstanceUID),
            origin="generated by pydicom (6 frames, 12 bit)",
            expected_pixels=pixels,
        )
    )

    for key, syntax, make, options in _PYDICOM_JOBS:
        ds, pixels = make()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = U.ExplicitVRLittleEndian
        try:
            ds.compress(syntax, generate_instance_uid=False, **options)  # type: ignore[arg-type]
        except (RuntimeError, ValueError, NotImplementedError) as exc:
            corpus.skipped.setdefault(syntax, f"pydicom cannot encode {syntax} here: {exc}")
            continue
        ds.file_meta.ImplementationClassUID = U.PYDICOM_IMPLEMENTATION_UID
        dest = folder / f"{key}.dcm"
        ds.save_as(dest, enforce_file_format=True)
        lossy = syntax in LOSSY_SYNTAXES
        corpus.files.append(
            CorpusFile(
                key=key,
                path=dest,
                transfer_syntax=syntax,
                sop_class_uid=str(ds.SOPClassUID),
                sop_instance_uid=str(ds.SOPInstanceUID),
                origin=f"pydicom encoder for {syntax} on a generated image",
                expected_pixels=None if lossy else pixels,
                lossy=lossy,
            )
        )


# --------------------------------------------------------------------------------------------
# HTJ2K and JPEG XL: embedded codestreams (see the module docstring)

_HTJ2K_LOSSLESS = (
    "/0//UQApQAAAAAAgAAAAIAAAAAAAAAAAAAAAIAAAACAAAAAAAAAAAAABDwEB/1AACAACAAAACv9SAAwAAgABAAUE"
    "BEAB/1wAEyCIkJCQkJCQkJCQkJCQiIiI/2QAFwABT3BlbkpQSCBWZXIgMC4yNi4zLv+QAAoAAAAABN0AAf+TwAAm"
    "ofYFB3QAwAATQAATQAASgLr9Aod0AHj9Awd0AMoBB3QAwAAVMAAFTAABOA8ogCL4AQK0AAGYeQFpAUa0AK+L6AAG"
    "tADAABacAAFrQAAWmLvTICdMXIc4RsKn7gGTSESwtwAx7l/CoouzImA3QDUg8gAAADHSVrgAhAAB1CkOp9/gwoIz"
    "ACSpJFqXAMAAF6DAABekwAAXqABQ3p8zouPOGlRbOQKtxFM4IVIQEOUIhopJcgBIx+nzTkSEAY0qesP6KgabrBRV"
    "qLUFI1X0gQz2SkhYgiNViSGRAQbRcujLRMfhg7YLl452rLuEmf3KIJp4qaZdjRIdDcgALtIlCgxsrDFMQyyDXSBa"
    "AXwAGDUhMQMAEgVAYQKVDnhMNwwQbAlHMwFwlGWAhH6Li8GZNrq2rBAk7RIYq6WP87KeUFZu8Ub64we2+j54J16E"
    "GKA0gCzSs4vExjImRCAUBsAg9zFvABCRs6kBSSOIUA4QgGqgCLKzAcAAL9FIAAX6HwAAv0pAGUUwmx0nR2z8AVxO"
    "63xKMox+RhSNsoXA+iIuOkNqoMWD16vTeyzDvi9/UiOoyjKkG64LxKdYr164d6geuZ8A8jOrasw9YWKaHitjYK8A"
    "AyQhHk4aGE9PTRqhLLav8GYopTv6cDWIpoq4aRaSCEJv1idqk8hToCK5kQ54SI8HEoAWMBbLh0fMnLX+jXBZXvWp"
    "i6CxJvNejsg4khC0pgMeRNXNmjTtG9EpXq/JP765z0B4HskHtBwGIgqbGAXMr3n6OnbQNyvIr1bondVh0wacGnhI"
    "YYECyYcNYPgAAgKkYXivRzpIUR3IjUKhWhFpIgAJIqS4XqUohGPBJvHqp7xnXxvFd5JAoklHAEBKAAAJVSRMs1oD"
    "7DTqEpiHJrX8dOFWB174H5mUuSNT4wYJU9lzE1GMCnL7R7Dq96oEY2FENUo5tl9u+fA7xoQBFmCoIULE0ld5CXtC"
    "pZgoqGdyxGCb9JulwTmGxABO42sNgRgoJfH0BGxltkU/I92t2JSHzBvYQ0PDuEQoJw8OqDDh6jvv7c+nZC5aAt7m"
    "byQbQG3YCuJnRRGMIOwgA7O3JAWkOWPwOKU4Gq2agrTy8tu+rvz64yTVdpgOxFCyK+itH63/L98zETVhYg1yUy6E"
    "Ro0+ei7KDjh5H/6Nf2sZAHEV8lKUocuHUra1Yla6HSxAYlakQBrPS9rzyhyhQO+4vCsHgGHWE9ShMOEgrgiXNQRA"
    "a0mMlJBaA8gHv3IP/0u9BTf/D6Jnx5ti67gi+nEaVl0UeNbzeb2HJw+n56vb+mVv8vpn9OHpaPPm+fTwfgfxD7/6"
    "V5hjwNb4FE4Ze6Fh41mACYw/wFukF5Al0oMLwcH910JQLL0HzAfOM4THUnsmLySPgkemR3zLUtOt7/xkbv7sefDb"
    "8eHS7c+Dw8HBw9Htoa/By+HDAe59nmGVMfQZv0GfT98L/2PGaJ6AsffDsiOzqD7EcXYs8JjrosSzyh3vO4JbnXvc"
    "o+CEO0i3PdQjcqjYUO8GfwAP/07NHYLzyYXFnTvM/2Fi+Gj7fnCADzT/f9//AP4CAALLLw5FXDHGNeRiWhLgAapV"
    "Km8kJdC9RZ4I8gRj58/IVCBAqHPgijmlxOY4QgXIAIGIAAAjJU57A//Z"
)
_HTJ2K_RPCL = (
    "/0//UQApQAAAAAAgAAAAIAAAAAAAAAAAAAAAIAAAACAAAAAAAAAAAAABDwEB/1AACAACAAAACv9SAAwAAgABAAUE"
    "BEAB/1wAEyCIkJCQkJCQkJCQkJCQiIiI/2QAFwABT3BlbkpQSCBWZXIgMC4yNi4zLv9VACgAYAAAAAAAFwAAAAAA"
    "KQAAAAAAMQAAAAAAVQAAAAAA9QAAAAADaP+QAAoAAAAAABcABv+TwAAmofYFB3QA/5AACgAAAAAAKQEG/5PAABNA"
    "ABNAABKAuv0Ch3QAeP0DB3QAygEHdAD/kAAKAAAAAAAxAgb/k8AAFTAABUwAATgPKIAi+AECtAABmHkBaQFGtACv"
    "i+gABrQA/5AACgAAAAAAVQMG/5PAABacAAFrQAAWmLvTICdMXIc4RsKn7gGTSESwtwAx7l/CoouzImA3QDUg8gAA"
    "ADHSVrgAhAAB1CkOp9/gwoIzACSpJFqXAP+QAAoAAAAAAPUEBv+TwAAXoMAAF6TAABeoAFDenzOi484aVFs5Aq3E"
    "UzghUhAQ5QiGiklyAEjH6fNORIQBjSp6w/oqBpusFFWotQUjVfSBDPZKSFiCI1WJIZEBBtFy6MtEx+GDtguXjnas"
    "u4SZ/cogmnippl2NEh0NyAAu0iUKDGysMUxDLINdIFoBfAAYNSExAwASBUBhApUOeEw3DBBsCUczAXCUZYCEfouL"
    "wZk2urasECTtEhirpY/zsp5QVm7xRvrjB7b6PngnXoQYoDSALNKzi8TGMiZEIBQGwCD3MW8AEJGzqQFJI4hQDhCA"
    "aqAIsrMB/5AACgAAAAADaAUG/5PAAC/RSAAF+h8AAL9KQBlFMJsdJ0ds/AFcTut8SjKMfkYUjbKFwPoiLjpDaqDF"
    "g9er03ssw74vf1IjqMoypBuuC8SnWK9euHeoHrmfAPIzq2rMPWFimh4rY2CvAAMkIR5OGhhPT00aoSy2r/BmKKU7"
    "+nA1iKaKuGkWkghCb9YnapPIU6AiuZEOeEiPBxKAFjAWy4dHzJy1/o1wWV71qYugsSbzXo7IOJIQtKYDHkTVzZo0"
    "7RvRKV6vyT++uc9AeB7JB7QcBiIKmxgFzK95+jp20DcryK9W6J3VYdMGnBp4SGGBAsmHDWD4AAICpGF4r0c6SFEd"
    "yI1CoVoRaSIACSKkuF6lKIRjwSbx6qe8Z18bxXeSQKJJRwBASgAACVUkTLNaA+w06hKYhya1/HThVgde+B+ZlLkj"
    "U+MGCVPZcxNRjApy+0ew6veqBGNhRDVKObZfbvnwO8aEARZgqCFCxNJXeQl7QqWYKKhncsRgm/SbpcE5hsQATuNr"
    "DYEYKCXx9ARsZbZFPyPdrdiUh8wb2ENDw7hEKCcPDqgw4eo77+3Pp2QuWgLe5m8kG0Bt2AriZ0URjCDsIAOztyQF"
    "pDlj8DilOBqtmoK08vLbvq78+uMk1XaYDsRQsivorR+t/y/fMxE1YWINclMuhEaNPnouyg44eR/+jX9rGQBxFfJS"
    "lKHLh1K2tWJWuh0sQGJWpEAaz0va88ocoUDvuLwrB4Bh1hPUoTDhIK4IlzUEQGtJjJSQWgPIB79yD/9LvQU3/w+i"
    "Z8ebYuu4IvpxGlZdFHjW83m9hycPp+er2/plb/L6Z/Th6Wjz5vn08H4H8Q+/+leYY8DW+BROGXuhYeNZgAmMP8Bb"
    "pBeQJdKDC8HB/ddCUCy9B8wHzjOEx1J7Ji8kj4JHpkd8y1LTre/8ZG7+7Hnw2/Hh0u3Pg8PBwcPR7aGvwcvhwwHu"
    "fZ5hlTH0Gb9Bn0/fC/9jxmiegLH3w7Ijs6g+xHF2LPCY66LEs8od7zuCW5173KPghDtItz3UI3Ko2FDvBn8AD/9O"
    "zR2C88mFxZ07zP9hYvho+35wgA80/3/f/wD+AgACyy8ORVwxxjXkYloS4AGqVSpvJCXQvUWeCPIEY+fPyFQgQKhz"
    "4Io5pcTmOEIFyACBiAAAIyVOewP/2Q=="
)
_HTJ2K_LOSSY = (
    "/0//UQApQAAAAAAgAAAAIAAAAAAAAAAAAAAAIAAAACAAAAAAAAAAAAABDwEB/1AACAACAAAAIP9SAAwAAgABAAUE"
    "BEAA/1wAIyJhqWGLYYthblmZWZlZhlHLUctR2kpCSkJKlkIgQiBB2P9kABcAAU9wZW5KUEggVmVyIDAuMjYuMy7/"
    "kAAKAAAAAABzAAH/k8AEwLX8Awd0AMAEsAEo+gDHdADCAId0AMAJIASg+CJzABD+M1MAwBJAEsARgP7gIwDiw7S0"
    "AOBDAMAkgEkAlP6ARAD+hFQA/f6EVADATQFRASj9/3kgxQBb/v95ISfGAP95IMUA/9k="
)
_JXL_LOSSLESS = (
    "/wpHQFDcCAgEAQAhAks4QWXDQOevB25/Grevbn873cd0anstCgoKEhLTG1CYBgkFBQUlFy1RiCDChhgsLzIeeWpr"
    "2LINsMLdsYyMtg2HRSwOFykZYRgmEmKwUkQMo6MmADhwThAExzpBkk3dgxMtOhkZ0NIixHUs9E3NwRaFO0XKqtsp"
    "BSBBQlVNRRkYRFV181tbQYVP0Tu+RUFHWvrcYMWFk6c8z9R5FYDmjvAQoQdiW5IxqzNAsL1+KeG2bxp4btDKpbcn"
    "zj4XjMhBaAzdPgcocWBbBPNBrYCP/L09RNPhQMTlt9aU2kqYJya6eBahyQ4k1t/MTkeiTQaXthW6EUlgO1oSXmXy"
    "VTeHUyM8DxrUiFX1TrR8sMDCIYRcQk+U0/uTqXc2ath2sAw5qdCY6YeLzffSEJgkpGbJEwJTuEzG/c08w7fyzQVF"
    "5qYO61YgyFIaQiHZqEbeOCO3zPT7s/CKOnQmT0gYoxKxfpwD/Pful5AQHnTWWrqPYLoPGHrkuNSoJftPDzJ1kLda"
    "MMLri8gGI/XDCLhs1lASQudmZEvCh4txa7eLqn993QcXJOQDvvOSt2fkufZFiRw/dNpTHDEPwTsYEjLwuVBP71Hk"
    "tmvtXlKFz2uZ9xlQyWeRiQ7QFLQkp+1btVRzzigxNe1Lw5tr+RAwE2GSAICT6fkLLzrQg6fGJyVgo+hZSolstfbV"
    "qxcBG7gtvtYpqdzNylDU0iTkf5HWcM2SdeHUhPRhDcYZztVl6PPPgQfr9hsPACeS9uQTqnSe56hZHRdLsCsmyuy3"
    "rb3wV1MPA/aaIgSiQTCrZRIUaXxscJKvx+nipMw9iD17LpxQm4nL/zPQYYu7TJfy7ORap1C9Ln+6Dd/YdA1oC3H7"
    "qeHmvoJctV+GE8RcMxKgxWOWTtv5JENrzMh189ZzsgIPu9rZ5uDOQ5beKDghQbF2spwu5TJR6hhdC4/gk6F0PwnM"
    "d5Q8lY65BZFXZODrfypEuZnWP9BZXeGRi4fzErLxTc5t2NlVKRhov4bxGx5YgQoY73vqngD5tx+o8B+cyrAu34CL"
    "J9w9nIbHx4iBzhvA715y9QOI/x33wh8glo8gJJ8BwPfaK30AcH1dn0aCoJbVfRpIV8MmtsIBf6lzjN8BMK5coXYT"
    "YtglTIM8EPa3H/yYNz2i5NPkTMyW1l0zyfsLbz6zVh2l+DZLenRpUBnJsCFDh6MOYm8N+Cy892bJZVlWemzL5VZq"
    "boPDzksUUutBRAVAOIIldfdGeux1SrZDEq17Ljk+aYt8PUAwuSPh0UfaTR8oflWPTr6Kbb9/aXRnQmX5BAS2kfCQ"
    "UAI8BdZmklNwZL78kDJX1X8cdy3HQaRvjE5oJXNfn5YoL/kb70DzWem4GwOl4Dj1VnhbQomMOdt3BJD4JTf4XwuT"
    "URFfwwKwZsw9N/Nkj2LA0BXGZpj90neTIU+mKZI3ppHruUu3OrT0EunuDhB33qi1zXvAzV4J3EqtY5n91XVDcfJi"
    "57lehbJNs6oZ78fSgDF8MDSXJDWWFLOSw7s5RMplJ/xQgCb4T1Xi+DBScDmJuTMAwKcG"
)
_JXL_RECOMPRESSED = (
    "AAAADEpYTCANCocKAAAAFGZ0eXBqeGwgAAAAAGp4bCAAAAATanhscAAAAAD/CkdAUNwIAAABBGpicmTBDSAILQMC"
    "AISAkKtKAABAyFHZgqE4/yeIjBHKOKcUtB8hQ5ilDjLMQOkONVgfMpx8zIBDDiosctCwA9tHDf37I8scdtyBhqL7"
    "X4xxxiSXbPLJKKc8M80123wzzjkLPTTRRRt9NNJJSz011VVbfTXWWYs9Ntllm3022mnLPTfdddt9N955Cz444YUb"
    "fjjiiUcu+eSUV2755ZhnHrroo5Neuumno5567LLPTnvttt+Oe+7BCz888cUbfzzyyUcv/fTUV2/99dhnD3744o9P"
    "fvnmn49++vDHL//89Ndv//345/8P8AMAAAALCIDgABBKRklGAAEBAAABAAEAAAMAAAOIanhscIAAAAHgWwAQANQN"
    "DGQMZAxk/v8OAAAYAAgAAQAAAAAAgIAliSLj2Alp7jAAEykokCfFyBgZyRhjjCIVyUjiFCIsIoTYKOZYpALgZP7Y"
    "wXgE+n6S0MQE0ENNwIofYDR5HSeAGPz9AgAOonOXBvWL9O+yR4hDJ/N3cbiyAv8BngwADAqIgkAj9zuvAC4GPuQ/"
    "V81SjfDBKdbFd5LRzIMYs6VMQW6EQvwx3FXyU8AEAAAAAAAAgaIF6YOoM1no3K0DAX0LdAXhS0xSSDN9AnqRggJ5"
    "tu26ddtKblvFyEQmKEXGKMZ4Im0bNsp45v4MALBJymRrtxVy3NC48byuWz19M1tlrxnIPbEEUSX/UFe8vE8+GaDM"
    "gVwK3SpHvV+1Vqm655Fhcvks0oyA5vqXk4iX4SW38laGChuzAWZXiWzLWjXsGQ040akvmBcKHqZH//sj4tRskP6k"
    "4sp8wXj58Yc6OB2OuHqh9HPqWdxJ7UmQ8XadWFW+itg/+hGrxaauYMkg33lG3Dny/Y21SXcgDgu8JcKIy/IlSI+P"
    "mzt/QdjAzw0DWCBFlgvVUQcrY4ZM0ebtRwYXA4eTudOw0VYJj1uxNnPj592orIaJ6VDP9jlshIDEP9JmVGOoiBtE"
    "R5M0g3fqZSB4c+up+FMH7/dKvjNjBf8Gdp2c/UYM9BGWCgrGt0KHgKVHxN1K9LnW1DCwTDVjh5mBUB+R6kY5GO7I"
    "EwN6nCty7oDYQrsGaGlW/qVdBS+oN032Iu0k0kV5aZjZotyWP6SxKNm7h7ifyDTmrsIAofa33H6fSMWVREfDCMCH"
    "A/1w/64RjhULrtM1yHCcm5hczBztfbA9u6NYwRxEK4KsDLMKHQ6BLfcipJ8/FgQxmT8U88YcXMe5gVnxW/AC5Mr1"
    "NFWoP667DrU9maHYCdp8etrIb/nKFUJtZpzOiT/I8haBbhYPNXfpSRA2ywt4GoS0BiP3vXrgEdexe/I2ro7ViVyi"
    "A/H+2aLUkZAhJNfhNU3vjmD0z2GBugs2tz2v2xt9RYFzWIZQ5rA5ErqyzWuXjhfRKhRpjklGPRQWqH/jVRBGcYkl"
    "4lgKeS3jUMqSIUcU96lr72LgQ0SO9+dEqAYu98XC9Sq+8hvHmtaZXcqccJjQ7QBpNWllPATehpv1P8Of5m69IcYb"
    "A22at4Ou/9xn/AM3XqesNEtwGVZlkhDaEUge"
)
_JXL_LOSSY = (
    "/wpHQFLcCAATiAIAVAu1nyAAABUqo4wbvJzr+fJDh8W0jesMbbVtYQljs70wSEg4Q+Y28vmg5vPwODt0zTpy7llm"
    "cN7pXRAAAADADwAAEQAwAAAUKFq4fxORDwCZL7wDDGx4ZQP+C4CmIabb8J/tBAukjcwCNQ9HO84dbssMoiopKJDl"
    "1rZrt0FuVZa427bdupUyySt9WVfoWF4ZkINYPxlBIFWg0R5HC57FCxuSr7wVoKEyrHGBGUUmtzmVZ2EneEr20nQ6"
    "jDKyRXrtI0FX2ZbFKdSia35PYtVWYjM+MQcWqdn6pP/aMVuw6+vjKNdwRtO7X+7kYuC/otAOcQtwYxaQEFQ67LFS"
    "gyCybDw34FkxrWC8YlBElAYzWM7EqV9Xu++45oaOVbanLDER66mR3eREqibrExF0TUUMl28qqPZSBbXnsC8mcOBG"
    "cv3YPIjq2O2xytthK2uuxj3CXJJHwq0NbtZasebVR0oobBQtu9fUVUPP49YKrXFuSBz1i2W7q7T6r8P0LAv1zP8W"
    "bsrHgg3ziCQsGS9AxIEP24B7AoB1bIoCt2WTA3XPag0iWZu6mBtbFrtTDr5RKSL1EPpJ7/cysAZXmzX4BGFF0w6m"
    "dGVkN6atkirVVUkliGWozrf1sC1tkwAl+b/vw2wDBv+c+Mp0wyN5Nfgkyk3UmuTSTixHJduiW2ky9nXrUsHYmmeO"
    "i4D2zqxfMfSnjjj/qXfZ9TVFAzHXEz1ZmTiEQcDYDn47mBC5Ir9bdA6T9vbDhBBm8S7MvEoOOIwbx5teb7Vqyhr8"
    "/vua26OQOQJLQVwkSMIuk+TuTspamnXJxdYWVuW9sKB5btxsgN3jccYFT3pJH7It0YUMFGrFjIXBm3y0irPFIsOX"
    "HQZdC7XSY+yc8j1sSy8FcLFLYqYcGdkTfU066O/1dT3CJqXb8qKDmHOZxhhmAiQ6NUkVrigzY56XtM3l/AqXUs+C"
    "f6hXcB9Kf71+BAL1Aw=="
)

#: (key, transfer syntax, codestream, bits stored (8: JPEG XL image, 16: HTJ2K image), lossless)
_EMBEDDED: tuple[tuple[str, str, str, int, bool], ...] = (
    ("htj2k-lossless", HTJ2K_LOSSLESS, _HTJ2K_LOSSLESS, 16, True),
    ("htj2k-lossless-rpcl", HTJ2K_LOSSLESS_RPCL, _HTJ2K_RPCL, 16, True),
    ("htj2k-lossy", HTJ2K, _HTJ2K_LOSSY, 16, False),
    ("jpegxl-lossless", JPEG_XL_LOSSLESS, _JXL_LOSSLESS, 8, True),
    ("jpegxl-jpeg-recompression", JPEG_XL_JPEG_RECOMPRESSION, _JXL_RECOMPRESSED, 8, False),
    ("jpegxl-lossy", JPEG_XL, _JXL_LOSSY, 8, False),
)

_J2K_CAP, _J2K_COD, _J2K_TLM, _J2K_SOD = 0xFF50, 0xFF52, 0xFF55, 0xFF93


def j2k_main_header(codestream: bytes) -> dict[int, bytes]:
    """Marker -> segment body of a JPEG 2000 codestream's main header (up to the first SOT)."""
    if codestream[:2] != b"\xff\x4f":
        raise ValueError("not a JPEG 2000 codestream: no SOC marker")
    segments: dict[int, bytes] = {}
    pos = 2
    while pos + 4 <= len(codestream):
        marker = int.from_bytes(codestream[pos : pos + 2], "big")
        if marker in (0xFF90, _J2K_SOD):  # SOT: end of the main header
            break
        length = int.from_bytes(codestream[pos + 2 : pos + 4], "big")
        segments[marker] = codestream[pos + 4 : pos + 2 + length]
        pos += 2 + length
    return segments


def check_htj2k_codestream(codestream: bytes, *, rpcl: bool) -> None:
    """Raise unless the codestream is an HTJ2K (ISO/IEC 15444-15) one."""
    header = j2k_main_header(codestream)
    if _J2K_CAP not in header:
        raise ValueError("no CAP marker: a Part 1 codestream, not HTJ2K")
    cod = header[_J2K_COD]
    code_block_style = cod[8]
    if not code_block_style & 0x40:
        raise ValueError("code-block style does not select the HT block coder")
    if rpcl:
        if cod[1] != 2:
            raise ValueError(f"progression order {cod[1]}, not RPCL (2)")
        if _J2K_TLM not in header:
            raise ValueError("no TLM marker")


def check_jpegxl(codestream: bytes) -> None:
    """Raise unless the bytes are a JPEG XL codestream or a JPEG XL container."""
    bare = codestream[:2] == b"\xff\x0a"
    boxed = codestream[:12] == b"\x00\x00\x00\x0cJXL \r\n\x87\n"
    if not (bare or boxed):
        raise ValueError("not a JPEG XL codestream or container")


def _add_embedded(corpus: Corpus, folder: Path) -> None:
    for key, syntax, b64, bits, lossless in _EMBEDDED:
        codestream = base64.b64decode(b64)
        if syntax in JPEG_XL_SYNTAXES:
            check_jpegxl(codestream)
            pixels = synthetic_image(32, 32, 8)
            ds = _base_dataset(SECONDARY_CAPTURE, "OT", f"JPEG XL {key}")
            ds.ConversionType = "WSD"
        else:
            check_htj2k_codestream(codestream, rpcl=syntax == HTJ2K_LOSSLESS_RPCL)
            pixels = synthetic_image(32, 32, 12).astype(np.uint16)
            ds = _base_dataset(CT_IMAGE, "CT", f"HTJ2K {key}")
            ds.ImageType = ["DERIVED", "SECONDARY"]
            ds.RescaleIntercept = 0
            ds.RescaleSlope = 1
        _set_image(ds, pixels, bits_stored=bits, photometric="MONOCHROME2")
        if not lossless:
            ds.LossyImageCompression = "01"
        ds.PixelData = encapsulate([codestream], has_bot=True)
        ds["PixelData"].VR = "OB"
        ds["PixelData"].is_undefined_length = True
        dest = folder / f"{key}.dcm"
        write_part10(
            dest,
            encode_explicit_le(ds),
            sop_class_uid=str(ds.SOPClassUID),
            sop_instance_uid=str(ds.SOPInstanceUID),
            transfer_syntax=syntax,
        )
        encoder = "libjxl 0.11.2" if syntax in JPEG_XL_SYNTAXES else "OpenJPH 0.26.3"
        corpus.files.append(
            CorpusFile(
                key=key,
                path=dest,
                transfer_syntax=syntax,
                sop_class_uid=str(ds.SOPClassUID),
                sop_instance_uid=str(ds.SOPInstanceUID),
                origin=f"embedded {encoder} codestream of a generated image",
                expected_pixels=pixels if lossless else None,
                lossy=not lossless,
            )
        )


def regenerate_codestreams() -> dict[str, bytes]:  # pragma: no cover - a maintenance aid
    """Encode the embedded codestreams again (needs the `imagecodecs` package)."""
    import imagecodecs  # type: ignore[import-not-found]

    gray16 = synthetic_image(32, 32, 12)
    gray8 = synthetic_image(32, 32, 8)
    jpeg = imagecodecs.jpeg8_encode(gray8, level=90)
    return {
        "htj2k-lossless": imagecodecs.htj2k_encode(gray16, reversible=True),
        "htj2k-lossless-rpcl": imagecodecs.htj2k_encode(
            gray16, reversible=True, tlm=True, tilepart=1
        ),
        "htj2k-lossy": imagecodecs.htj2k_encode(gray16, level=0.01, reversible=False),
        "jpegxl-lossless": imagecodecs.jpegxl_encode(gray8, lossless=True),
        "jpegxl-jpeg-recompression": imagecodecs.jpegxl_encode_jpeg(jpeg),
        "jpegxl-lossy": imagecodecs.jpegxl_encode(gray8, distance=1.0),
    }


# --------------------------------------------------------------------------------------------


def build_corpus(root: Path) -> Corpus:
    """Fill `root/files` with the corpus and describe it."""
    folder = root / "files"
    work = root / "work"
    folder.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    corpus = Corpus(root)
    _add_bundled(corpus, folder)
    _add_dcmtk(corpus, folder, work)
    _add_pydicom_encoded(corpus, folder)
    _add_embedded(corpus, folder)
    shutil.rmtree(work)
    uids = [f.sop_instance_uid for f in corpus.files]
    duplicates = {u for u in uids if uids.count(u) > 1}
    assert not duplicates, f"corpus SOP Instance UIDs must be unique: {duplicates}"
    for syntax in corpus.syntaxes():
        corpus.skipped.pop(syntax, None)
    return corpus


def planned_files() -> list[tuple[str, str]]:
    """(key, transfer syntax) of every file `build_corpus` means to make, known without making
    them (test parameters are collected before fixtures run)."""
    planned = [(f"pydicom-{Path(name).stem}", syntax) for name, syntax, _ in BUNDLED]
    planned += [(job.key, job.syntax) for job in _DCMTK_JOBS]
    planned.append(("generated-multiframe", U.ExplicitVRLittleEndian))
    planned += [(key, syntax) for key, syntax, _, _ in _PYDICOM_JOBS]
    planned += [(key, syntax) for key, syntax, _, _, _ in _EMBEDDED]
    return planned


_CORPUS_CACHE: dict[Path, Corpus] = {}


def shared_corpus(tmp_path_factory: pytest.TempPathFactory) -> Corpus:
    """One corpus per test session, however many modules ask for it."""
    base = tmp_path_factory.getbasetemp()
    if base not in _CORPUS_CACHE:
        _CORPUS_CACHE[base] = build_corpus(tmp_path_factory.mktemp("interop-corpus"))
    return _CORPUS_CACHE[base]


def corpus_file(corpus: Corpus, key: str) -> CorpusFile:
    """The corpus file `key`, or skip the test with the reason it could not be made."""
    try:
        return corpus.by_key(key)
    except StopIteration:
        syntax = dict(planned_files()).get(key, "")
        pytest.skip(corpus.skipped.get(syntax, f"{key} is not in the corpus"))


# --------------------------------------------------------------------------------------------
# checks shared by the peers' tests


def decoded_pixels(path: Path) -> np.ndarray:
    """The decoded pixels of a Part 10 file (pydicom with whatever decoders are installed)."""
    return np.asarray(pydicom.dcmread(path).pixel_array)


def can_decode(syntax: str) -> bool:
    """Whether pydicom has a working pixel data decoder for `syntax` here."""
    if syntax in NOT_ENCAPSULATED:
        return True
    try:
        from pydicom.pixels.decoders.base import get_decoder

        return bool(get_decoder(U.UID(syntax)).is_available)
    except (NotImplementedError, ValueError, KeyError):
        return False


def first_difference(a: bytes, b: bytes) -> str:
    if a == b:
        return "equal"
    n = min(len(a), len(b))
    i = next((i for i in range(n) if a[i] != b[i]), n)
    return (
        f"lengths {len(a)} and {len(b)}, first difference at byte {i}: "
        f"{a[i : i + 16].hex()} != {b[i : i + 16].hex()}"
    )


def check_stored(
    stored: Path,
    *,
    source: CorpusFile,
    calling_ae: str,
    wire_syntax: str,
    wire_dataset: bytes,
    implementation_class_uid: str,
) -> None:
    """Everything a stored object must satisfy, given what the sender put on the wire."""
    meta_bytes, dataset = split_part10(stored.read_bytes())
    assert dataset == wire_dataset, (
        f"{source.key}: stored data set differs from the wire: "
        f"{first_difference(dataset, wire_dataset)}"
    )
    ds = pydicom.dcmread(stored)
    meta = ds.file_meta
    validate_file_meta(meta, enforce_standard=True)
    assert meta.TransferSyntaxUID == wire_syntax, f"{source.key}: (0002,0010)"
    assert str(meta.get("SourceApplicationEntityTitle", "")).strip() == calling_ae, (
        f"{source.key}: (0002,0016) is {meta.get('SourceApplicationEntityTitle')!r}"
    )
    assert meta.ImplementationClassUID == implementation_class_uid, f"{source.key}: (0002,0012)"
    assert meta.MediaStorageSOPClassUID == source.sop_class_uid, f"{source.key}: (0002,0002)"
    assert meta.MediaStorageSOPInstanceUID == source.sop_instance_uid, f"{source.key}: (0002,0003)"
    group_length = int(meta.get("FileMetaInformationGroupLength", -1))
    assert group_length == len(meta_bytes) - 132 - 12, f"{source.key}: (0002,0000) is wrong"
    assert stored.name == f"{source.sop_instance_uid}.dcm", f"{source.key}: file name"
    if "SeriesInstanceUID" in ds:
        assert stored.parent.name == ds.SeriesInstanceUID, f"{source.key}: series folder"
    if "StudyInstanceUID" in ds:
        assert stored.parent.parent.name == ds.StudyInstanceUID, f"{source.key}: study folder"
    if "PixelData" in ds and can_decode(wire_syntax) and can_decode(source.transfer_syntax):
        got = np.asarray(ds.pixel_array)
        np.testing.assert_array_equal(got, decoded_pixels(source.path), err_msg=source.key)
        if source.expected_pixels is not None:
            np.testing.assert_array_equal(
                got.reshape(source.expected_pixels.shape), source.expected_pixels, source.key
            )


def log_records(log_text: str) -> list[dict[str, Any]]:
    """The server's JSON log lines (other lines are skipped)."""
    records = []
    for line in log_text.splitlines():
        line = line.strip()
        if line.startswith("{"):
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return records


def batch_of(stored: Path, objects_dir: Path) -> str:
    """The <batch> component of an object's key."""
    return stored.relative_to(objects_dir).parts[0]
