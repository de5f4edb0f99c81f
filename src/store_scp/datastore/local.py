"""The embedded datastore: a HealthImaging-compatible datastore on the local disk.

`LocalDatastore` implements the Datastore port (`store_scp.datastore.base`) and the image-set
side of AWS HealthImaging that the pipeline, the CLI and the tests read back. `datastore.api`
serves it over HealthImaging's own HTTP API, so that `boto3.client("medical-imaging")` (and the
`HealthImagingDatastore` adapter) work against it unchanged.

What it copies from HealthImaging, and where that is documented (AWS HealthImaging Developer
Guide, https://docs.aws.amazon.com/healthimaging/latest/devguide/):

- Import jobs (understanding-import-jobs.html): every DICOM P10 file under the input prefix is
  imported by an asynchronous job, SUBMITTED -> IN_PROGRESS -> COMPLETED | FAILED. A COMPLETED
  job can have failed files. The results land under
  `{output_uri}/{datastore_id}-DicomImport-{job_id}/`: `job-output-manifest.json` (`jobSummary`
  with counts and `imageSetsSummary[]`), `SUCCESS/success.ndjson` (one line per imported file:
  `inputFile`, `importResponse.imageSetId`, `.imageSetVersion`, `.isPrimary`) and
  `FAILURE/failure.ndjson` (one line per failed file: `inputFile`,
  `exception.exceptionType`, `exception.message`). Both ndjson files are always written (empty
  when there is nothing to say); readers of real HealthImaging must tolerate their absence.
  `inputFile` is the object's key in its store (for S3, the key in the bucket, as HealthImaging
  writes it; for a local object store, the key under its `objects/` folder).
- Image sets (understanding-image-sets.html): one per DICOM series. The first import of a series
  makes a *primary* image set; later imports that do not conflict are merged into it as a new
  version (an instance imported again replaces its older copy). Data whose study or series
  elements conflict with the primary image sets already there (the elements HealthImaging
  groups by: Study Date, Accession Number, Patient ID, Study ID across the study's primary image
  sets; Series Number within the series) lands in a new *non-primary* image set
  (`isPrimary: false`).
- Metadata (understanding-image-sets.html, supported-transfer-syntaxes.html,
  pixel-data-verification.html): gzip JSON with `SchemaVersion`, `DatastoreID`, `ImageSetID`,
  `Patient.DICOM`, `Study.DICOM`, `Study.Series.{SeriesUID}.DICOM`,
  `...Instances.{SOPUID}.DICOM`, `...Instances.{SOPUID}.StoredTransferSyntaxUID` and
  `...Instances.{SOPUID}.ImageFrames[]` (`ID`, `PixelDataChecksumFromBaseToFullResolution[]`
  of `Width`/`Height`/`Checksum`, `MinPixelValue`, `MaxPixelValue`, `FrameSizeInBytes`). The
  checksum is a CRC32 of the decoded full-resolution frame (little-endian samples, interleaved
  colour); only the full-resolution level is listed.
- Rejections, each with its failure line: a file that is not DICOM P10, gzip-compressed content
  (HealthImaging refuses gzip `Content-Encoding`), a missing required attribute, a transfer
  syntax outside supported-transfer-syntaxes.html, the element limits of
  dicom-element-constraints.html, a file over 4 GB (endpoints-quotas.html), pixel data that
  cannot be decoded or whose stored copy does not decode to the same pixels. HealthImaging
  accepts "any SOP class UID, including retired and private" (reference-dicom-support.html):
  only a missing or malformed SOP Class UID, and the Media Storage Directory (DICOMDIR) class,
  which is not a composite instance, are refused. Job-level quotas (endpoints-quotas.html):
  5,000 files, 10 GB and 10,000 nested folders per job end the job FAILED; 100 concurrent jobs
  per datastore answer ServiceQuotaExceededException. All are configurable.

Stored transfer syntax. HealthImaging transcodes most transfer syntaxes to HTJ2K lossless with
RPCL progression (1.2.840.10008.1.2.4.202) and keeps JPEG Baseline (.4.50), JPEG 2000 (.4.91),
HTJ2K (.4.203), video and binary segmentations as received. This datastore does the same when a
well-kept HTJ2K *encoder* is installed: `imagecodecs` from PyPI (binary wheels that bundle
OpenJPH; pylibjpeg-openjpeg only decodes HTJ2K, and the `openjphpy` wheel holds no code). Its
OpenJPH writes RPCL codestreams with TLM markers; the number of decompositions is raised until
the base resolution is at most 64 pixels, as PS3.5 10.18 requires. Every encoded frame is
decoded again and compared with the source pixels before it is kept (HealthImaging's pixel data
verification); a frame the encoder does not take (floating point, more than 32 bits) keeps the
native form below. Without that codec (`lossless_format="original"`, or "auto" when imagecodecs
is absent) frames are kept in their original encoding: encapsulated frames exactly as received,
native pixel data as little-endian, pixel-interleaved bytes (recorded as Explicit VR Little
Endian, 1.2.840.10008.1.2.1, as HealthImaging records binary segmentations).
`StoredTransferSyntaxUID` always names what was really stored, and GetImageFrame's content type
follows it. Decoding compressed input needs pydicom's pixel plugins (pylibjpeg with its openjpeg
and libjpeg plugins); a frame that cannot be decoded is a failure line.

DICOM values in the metadata follow the documented example: keywords as keys (private and
unknown elements as `GGGGEEEE`), strings for text VRs including IS and DS, numbers for binary
numeric VRs, a list when the value is multi-valued, null when empty (and for pixel data), lists
of objects for sequences, base64 for binary values of at most 1 MB (larger ones are null).

StartDICOMImportJob's throttle (0.25 TPS with a burst of 10 in HealthImaging's
throttling-limits.html) is off by default; `start_rate`/`start_burst` turn a token bucket on.

Storage under `root`: `datastore.sqlite3` (WAL; jobs, image sets, every version's gzip
metadata, the frame index), `frames/` (one file per stored frame), `runners/` (one locked file
per process that runs jobs). Several threads and several processes may use one root: job claims
are atomic updates, and a job whose runner process died is started again by a live runner.

Test hooks (explicit methods, for fault-injection tests; they act on this process only, or on
the serving process through `datastore.api`'s opt-in test-hook endpoint): `inject_errors`
(the next N calls of an operation raise an error), `throttle_next_starts`,
`fail_next_jobs` (the next N jobs end FAILED), `delay_next_manifests` (the job turns COMPLETED,
the manifest appears N seconds later), `stall_next_jobs` (the next N jobs stay IN_PROGRESS
for a while), `fail_files` (files matching a pattern get a failure line), `hold_jobs` (jobs
stay SUBMITTED until released), `clear_faults`.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import fnmatch
import gzip
import io
import json
import logging
import math
import os
import re
import secrets
import sqlite3
import threading
import time
import uuid
import zlib
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal
from urllib.parse import unquote, urlparse

import numpy as np
import pydicom
from pydicom.datadict import tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.encaps import generate_fragments, generate_frames
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue

from store_scp.datastore.base import DatastoreError, ImportJob, JobStatus
from store_scp.datastore.rules import (
    _DEFLATED,
    _UID_SYNTAX,
    _VIDEO_TRANSFER_SYNTAXES,
    EXPLICIT_VR_LITTLE_ENDIAN,
    HTJ2K_LOSSLESS_RPCL,
    SUPPORTED_TRANSFER_SYNTAXES,
    import_rejection,
)
from store_scp.storage.base import ObjectStore, StorageError
from store_scp.storage.local import LocalObjectStore

__all__ = [
    "DEFAULT_DATASTORE_ID",
    "ELEMENT_MAX_LENGTHS",
    "ELEMENT_MAX_VALUES",
    "EXPLICIT_VR_LITTLE_ENDIAN",
    "HTJ2K_LOSSLESS_RPCL",
    "KEPT_AS_RECEIVED_TRANSFER_SYNTAXES",
    "SUPPORTED_TRANSFER_SYNTAXES",
    "LocalDatastore",
    "content_type_for",
    "htj2k_encoder_available",
    "import_rejection",
]

log = logging.getLogger(__name__)

#: The embedded datastore's id unless told otherwise (HealthImaging ids are `[0-9a-z]{32}`).
DEFAULT_DATASTORE_ID = "5c9d1ca15707e0000000000000000001"

_SEGMENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"

#: The syntaxes marked with an asterisk in supported-transfer-syntaxes.html: stored as received.
KEPT_AS_RECEIVED_TRANSFER_SYNTAXES = frozenset(
    {"1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.91", "1.2.840.10008.1.2.4.203"}
    | _VIDEO_TRANSFER_SYNTAXES
)

#: dicom-element-constraints.html: maximum lengths applied during import.
ELEMENT_MAX_LENGTHS: dict[str, int] = {
    "PatientName": 256,
    "PatientID": 256,
    "PatientBirthDate": 18,
    "PatientSex": 16,
    "StudyInstanceUID": 256,
    "StudyID": 256,
    "StudyDescription": 256,
    "AccessionNumber": 256,
    "StudyDate": 18,
    "StudyTime": 28,
    "SOPInstanceUID": 256,
    "SeriesInstanceUID": 256,
}
#: dicom-element-constraints.html: the two counts are limited in value, not length.
ELEMENT_MAX_VALUES: dict[str, int] = {
    "NumberOfStudyRelatedSeries": 1_000_000,
    "NumberOfStudyRelatedInstances": 1_000_000,
}

_GIB = 1024**3
_BULK_INLINE_MAX = 1024 * 1024  # binary values above 1 MB are not kept inline (as in HI)

# Error codes: the exception shapes of botocore's medical-imaging model.
VALIDATION = "ValidationException"
NOT_FOUND = "ResourceNotFoundException"
CONFLICT = "ConflictException"
THROTTLING = "ThrottlingException"
QUOTA = "ServiceQuotaExceededException"
INTERNAL = "InternalServerException"
ACCESS_DENIED = "AccessDeniedException"
_RETRYABLE = frozenset({THROTTLING, QUOTA, CONFLICT, INTERNAL})

_CONTENT_TYPES: dict[str, str] = {
    EXPLICIT_VR_LITTLE_ENDIAN: "application/octet-stream",
    "1.2.840.10008.1.2.4.50": "image/jpeg",
    "1.2.840.10008.1.2.4.51": "image/jpeg",
    "1.2.840.10008.1.2.4.57": "image/jpeg",
    "1.2.840.10008.1.2.4.70": "image/jpeg",
    "1.2.840.10008.1.2.4.80": "image/jls",
    "1.2.840.10008.1.2.4.81": "image/jls",
    "1.2.840.10008.1.2.4.90": "image/j2c",
    "1.2.840.10008.1.2.4.91": "image/j2c",
    "1.2.840.10008.1.2.4.92": "image/jpx",
    "1.2.840.10008.1.2.4.93": "image/jpx",
    "1.2.840.10008.1.2.4.201": "image/jph",
    HTJ2K_LOSSLESS_RPCL: "image/jph",
    "1.2.840.10008.1.2.4.203": "image/jphc",
    "1.2.840.10008.1.2.5": "image/dicom-rle",
}


def content_type_for(stored_transfer_syntax: str | None) -> str:
    """The Content-Type GetImageFrame answers for a stored transfer syntax.

    The model's documentation of GetImageFrame's `contentType` gives it for .1.2.1, .4.50, .4.91,
    .4.202 (and a missing value), .4.203 and video; the others use PS3.18's media types.
    """
    if not stored_transfer_syntax:
        return "image/jph"
    if stored_transfer_syntax in _VIDEO_TRANSFER_SYNTAXES:
        n = int(stored_transfer_syntax.split(".")[7])
        return "video/mpeg" if n <= 101 else ("video/mp4" if n <= 106 else "video/H265")
    return _CONTENT_TYPES.get(stored_transfer_syntax, "application/octet-stream")


def _datastore_error(code: str, message: str) -> DatastoreError:
    return DatastoreError(code, message, retryable=code in _RETRYABLE)


_MESSAGE_CHARS = re.compile(r"[^\w -:`]")


def _api_message(text: str) -> str:
    """`text` within the model's Message shape: `[\\w -:`]+`, 1 to 2048 characters."""
    cleaned = _MESSAGE_CHARS.sub(" ", text).strip()[:2048]
    return cleaned or "error"


# --- What an import refuses ------------------------------------------------------------------


def _text_of(elem: DataElement) -> str:
    value = elem.value
    if value is None:
        return ""
    if isinstance(value, MultiValue | list | tuple):
        return "\\".join(str(v) for v in value)
    if isinstance(value, bytes):
        return value.decode("latin-1")
    return str(value)


def _limit_violation(ds: Dataset) -> str | None:
    for keyword, limit in ELEMENT_MAX_LENGTHS.items():
        if keyword not in ds:
            continue
        text = _text_of(ds[keyword]).rstrip(" \x00")
        if len(text) > limit:
            return (
                f"DICOM attribute {keyword} exceeds the maximum length of {limit} "
                f"(it has {len(text)} characters)"
            )
    for keyword, limit in ELEMENT_MAX_VALUES.items():
        if keyword not in ds:
            continue
        text = _text_of(ds[keyword]).strip(" \x00")
        if not text:
            continue
        try:
            value = int(text.split("\\")[0])
        except ValueError:
            return f"DICOM attribute {keyword} is not an integer"
        if value > limit:
            return f"DICOM attribute {keyword} exceeds the maximum value of {limit}"
    return None


# --- Metadata levels -------------------------------------------------------------------------


def _tags(keywords: Iterable[str]) -> frozenset[int]:
    out: set[int] = set()
    for keyword in keywords:
        tag = tag_for_keyword(keyword)
        if tag is not None:
            out.add(int(tag))
    return frozenset(out)


# Patient Study module elements live in group 0010 but describe the patient at this study.
_PATIENT_STUDY_TAGS = _tags(
    [
        "AdmittingDiagnosesDescription",
        "AdmittingDiagnosesCodeSequence",
        "PatientAge",
        "PatientSize",
        "PatientWeight",
        "PatientSizeCodeSequence",
        "PatientBodyMassIndex",
        "MeasuredAPDimension",
        "MeasuredLateralDimension",
        "Occupation",
        "AdditionalPatientHistory",
        "PregnancyStatus",
        "LastMenstrualDate",
        "SmokingStatus",
        "PatientSexNeutered",
        "MedicalAlerts",
        "Allergies",
        "PatientState",
        "AdmissionID",
        "IssuerOfAdmissionIDSequence",
        "ServiceEpisodeID",
        "ServiceEpisodeDescription",
        "IssuerOfServiceEpisodeIDSequence",
        "ReasonForVisit",
        "ReasonForVisitCodeSequence",
    ]
)
_PATIENT_EXTRA_TAGS = _tags(
    [
        "ReferencedPatientSequence",
        "PatientIdentityRemoved",
        "DeidentificationMethod",
        "DeidentificationMethodCodeSequence",
    ]
)
_STUDY_TAGS = (
    _tags(
        [
            "StudyInstanceUID",
            "StudyDate",
            "StudyTime",
            "ReferringPhysicianName",
            "ReferringPhysicianIdentificationSequence",
            "ConsultingPhysicianName",
            "ConsultingPhysicianIdentificationSequence",
            "StudyID",
            "AccessionNumber",
            "IssuerOfAccessionNumberSequence",
            "StudyDescription",
            "PhysiciansOfRecord",
            "PhysiciansOfRecordIdentificationSequence",
            "NameOfPhysiciansReadingStudy",
            "PhysiciansReadingStudyIdentificationSequence",
            "RequestingService",
            "RequestingServiceCodeSequence",
            "ReferencedStudySequence",
            "ProcedureCodeSequence",
            "ReasonForPerformedProcedureCodeSequence",
            "NumberOfStudyRelatedSeries",
            "NumberOfStudyRelatedInstances",
        ]
    )
    | _PATIENT_STUDY_TAGS
)
_SERIES_TAGS = _tags(
    [
        "Modality",
        "SeriesInstanceUID",
        "SeriesNumber",
        "Laterality",
        "SeriesDate",
        "SeriesTime",
        "PerformingPhysicianName",
        "PerformingPhysicianIdentificationSequence",
        "ProtocolName",
        "SeriesDescription",
        "SeriesDescriptionCodeSequence",
        "OperatorsName",
        "OperatorIdentificationSequence",
        "ReferencedPerformedProcedureStepSequence",
        "RelatedSeriesSequence",
        "BodyPartExamined",
        "PatientPosition",
        "SmallestPixelValueInSeries",
        "LargestPixelValueInSeries",
        "RequestAttributesSequence",
        "PerformedProcedureStepID",
        "PerformedProcedureStepStartDate",
        "PerformedProcedureStepStartTime",
        "PerformedProcedureStepEndDate",
        "PerformedProcedureStepEndTime",
        "PerformedProcedureStepDescription",
        "PerformedProtocolCodeSequence",
        "CommentsOnThePerformedProcedureStep",
        "AnatomicalOrientationType",
        "FrameOfReferenceUID",
        "PositionReferenceIndicator",
        "Manufacturer",
        "InstitutionName",
        "InstitutionAddress",
        "StationName",
        "InstitutionalDepartmentName",
        "ManufacturerModelName",
        "DeviceSerialNumber",
        "SoftwareVersions",
        "SpatialResolution",
        "DateOfLastCalibration",
        "TimeOfLastCalibration",
    ]
)
_PIXEL_TAGS = frozenset({0x7FE00010, 0x7FE00008, 0x7FE00009})
_BINARY_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN", "OB or OW", "US or OW"})
_INT_VRS = frozenset({"US", "SS", "UL", "SL", "UV", "SV", "US or SS"})
_FLOAT_VRS = frozenset({"FL", "FD"})

#: The elements HealthImaging groups image sets by (understanding-image-sets.html).
_STUDY_KEYS = ("PatientID", "StudyDate", "AccessionNumber", "StudyID")
_SERIES_KEYS = ("SeriesNumber",)


def _level_of(tag: int) -> str:
    group = tag >> 16
    if tag in _STUDY_TAGS:
        return "study"
    if group == 0x0010 or tag in _PATIENT_EXTRA_TAGS:
        return "patient"
    if tag in _SERIES_TAGS:
        return "series"
    return "instance"


def _key_of(elem: DataElement) -> str:
    return elem.keyword or f"{elem.tag.group:04X}{elem.tag.element:04X}"


def _scalar_or_list(values: list[Any]) -> Any:
    if not values:
        return None
    return values[0] if len(values) == 1 else values


def _json_value(elem: DataElement) -> Any:
    vr = elem.VR
    value = elem.value
    if vr == "SQ":
        return [_dataset_json(item) for item in (value or [])]
    if value is None or value == "" or value == b"":
        return None
    if vr in _BINARY_VRS:
        if isinstance(value, bytes | bytearray):
            if len(value) > _BULK_INLINE_MAX:
                return None
            return base64.b64encode(bytes(value)).decode("ascii")
        return None
    values = list(value) if isinstance(value, MultiValue | list | tuple) else [value]
    if vr in _INT_VRS:
        return _scalar_or_list([int(v) for v in values])
    if vr in _FLOAT_VRS:
        return _scalar_or_list([float(v) if math.isfinite(float(v)) else None for v in values])
    if vr == "AT":
        return _scalar_or_list([f"{int(v):08X}" for v in values])
    texts = [str(v) for v in values]
    if all(t == "" for t in texts):
        return None
    return _scalar_or_list(texts)


def _dataset_json(ds: Dataset) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for elem in ds:
        tag = int(elem.tag)
        if (tag & 0xFFFF) == 0 or (tag >> 16) == 0x0002 or tag == 0xFFFCFFFC:
            continue
        try:
            out[_key_of(elem)] = None if tag in _PIXEL_TAGS else _json_value(elem)
        except Exception:  # an element that does not decode is left out, not fatal
            continue
    return out


def _split_levels(ds: Dataset) -> dict[str, dict[str, Any]]:
    levels: dict[str, dict[str, Any]] = {"patient": {}, "study": {}, "series": {}, "instance": {}}
    for elem in ds:
        tag = int(elem.tag)
        if (tag & 0xFFFF) == 0 or (tag >> 16) == 0x0002 or tag == 0xFFFCFFFC:
            continue
        try:
            value = None if tag in _PIXEL_TAGS else _json_value(elem)
        except Exception:
            continue
        levels[_level_of(tag)][_key_of(elem)] = value
    return levels


def _norm(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, list):
        return "\\".join(_norm(v) for v in value)
    return str(value).strip(" \x00")


# --- HTJ2K ----------------------------------------------------------------------------------


def _imagecodecs() -> Any | None:
    try:
        import imagecodecs  # type: ignore[import-not-found]
    except ImportError:
        return None
    codec = getattr(imagecodecs, "HTJ2K", None)
    if codec is None or not getattr(codec, "available", False):
        return None
    return imagecodecs


def htj2k_encoder_available() -> bool:
    """True when an HTJ2K encoder (imagecodecs with OpenJPH) is installed."""
    return _imagecodecs() is not None


def _decompositions(width: int, height: int) -> int:
    """PS3.5 10.18: enough decompositions for the base resolution to be at most 64 pixels."""
    largest = max(width, height, 1)
    needed = math.ceil(math.log2(largest / 64)) if largest > 64 else 0
    return min(32, max(5, needed))


# --- Records ---------------------------------------------------------------------------------


@dataclass(slots=True)
class _StoredFrame:
    frame_id: str
    path: Path
    size: int
    meta: dict[str, Any]


@dataclass(slots=True)
class _Instance:
    key: str
    study_uid: str
    series_uid: str
    sop_uid: str
    levels: dict[str, dict[str, Any]]
    stored_ts: str
    content_type: str
    frames: list[_StoredFrame]

    @property
    def study_signature(self) -> tuple[str, ...]:
        merged = {**self.levels["patient"], **self.levels["study"]}
        return tuple(_norm(merged.get(k)) for k in _STUDY_KEYS)

    @property
    def series_signature(self) -> tuple[str, ...]:
        return tuple(_norm(self.levels["series"].get(k)) for k in _SERIES_KEYS)


@dataclass(slots=True)
class _Failure:
    key: str
    exception_type: str
    message: str
    server_error: bool = False


@dataclass(slots=True)
class _FileFault:
    pattern: str
    message: str
    server_error: bool
    remaining: int | None


@dataclass(slots=True)
class _Faults:
    errors: dict[str, list[str]] = field(default_factory=dict)  # operation -> codes, in order
    fail_jobs: list[str] = field(default_factory=list)  # messages
    manifest_delays: list[float] = field(default_factory=list)
    stalls: list[float] = field(default_factory=list)
    file_faults: list[_FileFault] = field(default_factory=list)
    hold: bool = False


_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id TEXT NOT NULL UNIQUE,
    job_name TEXT NOT NULL,
    client_token TEXT NOT NULL UNIQUE,
    status TEXT NOT NULL,
    role_arn TEXT NOT NULL,
    input_uri TEXT NOT NULL,
    output_uri TEXT NOT NULL,
    submitted_at REAL NOT NULL,
    ended_at REAL,
    message TEXT,
    runner TEXT
);
CREATE INDEX IF NOT EXISTS jobs_status ON jobs (status, seq);
CREATE TABLE IF NOT EXISTS image_sets (
    image_set_id TEXT PRIMARY KEY,
    study_uid TEXT NOT NULL,
    series_uid TEXT NOT NULL,
    is_primary INTEGER NOT NULL,
    version INTEGER NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    patient_id TEXT NOT NULL,
    accession TEXT NOT NULL,
    study_id TEXT NOT NULL,
    study_date TEXT NOT NULL,
    study_time TEXT NOT NULL,
    series_number TEXT NOT NULL,
    tags TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS image_sets_series ON image_sets (study_uid, series_uid, is_primary);
CREATE INDEX IF NOT EXISTS image_sets_patient ON image_sets (patient_id);
CREATE TABLE IF NOT EXISTS image_set_versions (
    image_set_id TEXT NOT NULL,
    version INTEGER NOT NULL,
    created_at REAL NOT NULL,
    is_primary INTEGER NOT NULL,
    job_id TEXT,
    metadata BLOB NOT NULL,
    PRIMARY KEY (image_set_id, version)
);
CREATE TABLE IF NOT EXISTS frames (
    frame_id TEXT PRIMARY KEY,
    image_set_id TEXT NOT NULL,
    path TEXT NOT NULL,
    transfer_syntax TEXT NOT NULL,
    content_type TEXT NOT NULL
);
"""

_JOB_COLUMNS = (
    "job_id, job_name, client_token, status, role_arn, input_uri, output_uri, submitted_at, "
    "ended_at, message"
)


def _ts(epoch: float | None) -> datetime | None:
    return None if epoch is None else datetime.fromtimestamp(epoch, tz=UTC)


def _epoch(value: Any) -> float:
    if isinstance(value, datetime):
        return value.timestamp()
    if isinstance(value, int | float):
        return float(value)
    return datetime.fromisoformat(str(value)).timestamp()


def _encode_token(offset: int) -> str:
    return base64.urlsafe_b64encode(json.dumps({"o": offset}).encode()).decode("ascii")


def _decode_token(token: str | None) -> int:
    if not token:
        return 0
    try:
        offset = int(json.loads(base64.urlsafe_b64decode(token.encode("ascii")))["o"])
    except Exception as exc:
        raise _datastore_error(VALIDATION, "nextToken is not valid") from exc
    if offset < 0:
        raise _datastore_error(VALIDATION, "nextToken is not valid")
    return offset


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class LocalDatastore:
    """A HealthImaging-compatible datastore in a folder (see the module documentation).

    `store_for_uri(uri)` maps an input or output URI to `(ObjectStore, key prefix)`; the
    default understands `file://` URIs inside a LocalObjectStore's `objects/` folder and
    `s3://bucket/prefix/` (through S3ObjectStore, at `s3_endpoint_url` if given).

    `lossless_format`: "auto" (HTJ2K when imagecodecs can encode it, else the original
    encoding), "htj2k" (required: raises if the encoder is missing) or "original".

    `run_jobs=False` makes an instance that only submits and reads (another process runs the
    jobs). `fsync=False` skips fsyncs of frame files (benchmarks only).
    """

    def __init__(
        self,
        root: Path,
        datastore_id: str = DEFAULT_DATASTORE_ID,
        *,
        store_for_uri: Callable[[str], tuple[ObjectStore, str]] | None = None,
        lossless_format: Literal["auto", "htj2k", "original"] = "auto",
        datastore_name: str = "store-scp-local",
        region: str = "us-east-1",
        account_id: str = "000000000000",
        run_jobs: bool = True,
        job_threads: int = 2,
        poll_interval: float = 0.2,
        max_concurrent_jobs: int = 100,
        max_files_per_job: int = 5000,
        max_bytes_per_job: int = 10 * _GIB,
        max_file_bytes: int = 4 * _GIB,
        max_nested_folders: int = 10_000,
        start_rate: float | None = None,
        start_burst: int = 10,
        s3_endpoint_url: str | None = None,
        fsync: bool = True,
    ) -> None:
        if not re.fullmatch(r"[0-9a-z]{32}", datastore_id):
            raise ValueError("datastore_id must be 32 characters of [0-9a-z]")
        if lossless_format not in ("auto", "htj2k", "original"):
            raise ValueError(f"unknown lossless_format {lossless_format!r}")
        codec = _imagecodecs()
        if lossless_format == "htj2k" and codec is None:
            raise ValueError("lossless_format='htj2k' needs imagecodecs with HTJ2K support")
        self._codec = codec if lossless_format != "original" else None
        self.root = Path(root).absolute()
        self.datastore_id = datastore_id
        self.datastore_name = datastore_name
        self.region = region
        self.account_id = account_id
        self.max_concurrent_jobs = max_concurrent_jobs
        self.max_files_per_job = max_files_per_job
        self.max_bytes_per_job = max_bytes_per_job
        self.max_file_bytes = max_file_bytes
        self.max_nested_folders = max_nested_folders
        self.fsync = fsync
        self._store_for_uri = store_for_uri or self._default_store_for_uri
        self._s3_endpoint_url = s3_endpoint_url
        self._stores: dict[str, ObjectStore] = {}
        self._stores_lock = threading.Lock()
        self._frames_dir = self.root / "frames"
        self._frames_dir.mkdir(parents=True, exist_ok=True)
        self._db_path = self.root / "datastore.sqlite3"
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._connections_lock = threading.Lock()
        self._created_at = time.time()
        db = self._db()
        db.executescript(_SCHEMA)
        row = db.execute("SELECT MIN(submitted_at) FROM jobs").fetchone()
        if row and row[0]:
            self._created_at = min(self._created_at, float(row[0]))
        self._faults = _Faults()
        self._faults_lock = threading.Lock()
        self._start_rate = start_rate
        self._start_burst = float(start_burst)
        self._tokens = float(start_burst)
        self._tokens_at = time.monotonic()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._poll_interval = poll_interval
        self._job_threads = max(1, job_threads)
        self._running: set[str] = set()
        self._running_lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None
        self._runner: threading.Thread | None = None
        self._runner_name = ""
        self._runner_fd: int | None = None
        if run_jobs:
            self._claim_runner()
            self._pool = ThreadPoolExecutor(self._job_threads, thread_name_prefix="datastore-job")
            self._runner = threading.Thread(
                target=self._run_loop, name="datastore-runner", daemon=True
            )
            self._runner.start()

    def __repr__(self) -> str:
        return f"LocalDatastore(root={str(self.root)!r}, datastore_id={self.datastore_id!r})"

    def __enter__(self) -> LocalDatastore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def stores_frames_as(self) -> str:
        """ "htj2k" when frames are transcoded to HTJ2K lossless RPCL, else "original"."""
        return "htj2k" if self._codec is not None else "original"

    def close(self) -> None:
        """Stop the job runner (running jobs finish first) and close the database."""
        self._stop.set()
        self._wake.set()
        if self._runner is not None:
            self._runner.join()
            self._runner = None
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        if self._runner_fd is not None:
            with contextlib.suppress(OSError):
                os.unlink(self.root / "runners" / f"{self._runner_name}.lock")
            os.close(self._runner_fd)
            self._runner_fd = None
        with self._stores_lock:
            for store in self._stores.values():
                closer = getattr(store, "close", None)
                if callable(closer):
                    with contextlib.suppress(Exception):
                        closer()
            self._stores.clear()
        with self._connections_lock:
            for conn in self._connections:
                with contextlib.suppress(sqlite3.Error):
                    conn.close()
            self._connections.clear()
        self._local = threading.local()

    # -- database ----------------------------------------------------------------------------

    def _db(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(
                self._db_path, timeout=30.0, isolation_level=None, check_same_thread=False
            )
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(
                "PRAGMA synchronous=NORMAL" if not self.fsync else "PRAGMA synchronous=FULL"
            )
            conn.execute("PRAGMA busy_timeout=30000")
            self._local.conn = conn
            with self._connections_lock:
                self._connections.append(conn)
        return conn

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        db = self._db()
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    # -- test hooks --------------------------------------------------------------------------

    def inject_errors(self, operation: str, code: str, count: int = 1) -> None:
        """Test hook: the next `count` calls of `operation` (an API operation name such as
        "StartDICOMImportJob", or "*" for any) raise `code` (e.g. "InternalServerException")."""
        with self._faults_lock:
            self._faults.errors.setdefault(operation, []).extend([code] * count)

    def throttle_next_starts(self, count: int = 1) -> None:
        """Test hook: the next `count` StartDICOMImportJob calls raise ThrottlingException."""
        self.inject_errors("StartDICOMImportJob", THROTTLING, count)

    def fail_next_jobs(self, count: int = 1, message: str = "Injected job failure") -> None:
        """Test hook: the next `count` jobs that start running end FAILED with `message`."""
        with self._faults_lock:
            self._faults.fail_jobs.extend([message] * count)

    def delay_next_manifests(self, seconds: float, count: int = 1) -> None:
        """Test hook: the next `count` jobs turn COMPLETED at once and write their
        `job-output-manifest.json` `seconds` later (as HealthImaging's can appear late)."""
        with self._faults_lock:
            self._faults.manifest_delays.extend([seconds] * count)

    def stall_next_jobs(self, seconds: float, count: int = 1) -> None:
        """Test hook: the next `count` jobs stay IN_PROGRESS for `seconds` before importing."""
        with self._faults_lock:
            self._faults.stalls.extend([seconds] * count)

    def fail_files(
        self,
        pattern: str,
        *,
        message: str = "Injected failure",
        server_error: bool = False,
        count: int | None = None,
    ) -> None:
        """Test hook: files whose input key matches the glob `pattern` fail with a failure line
        (ValidationException, or InternalServerException with `server_error`); `count` limits
        how many files the rule applies to (None: every match, until `clear_faults`)."""
        with self._faults_lock:
            self._faults.file_faults.append(_FileFault(pattern, message, server_error, count))

    def hold_jobs(self, hold: bool = True) -> None:
        """Test hook: while held, submitted jobs stay SUBMITTED (none starts running)."""
        with self._faults_lock:
            self._faults.hold = hold
        self._wake.set()

    def clear_faults(self) -> None:
        """Test hook: remove every injected fault and release held jobs."""
        with self._faults_lock:
            self._faults = _Faults()
        self._wake.set()

    def check_fault(self, operation: str) -> None:
        """Raise the next injected error of `operation`, if any (the API calls this too)."""
        with self._faults_lock:
            for name in (operation, "*"):
                queue = self._faults.errors.get(name)
                if queue:
                    code = queue.pop(0)
                    raise _datastore_error(code, f"Injected {code} for {operation}")

    # -- the Datastore port ------------------------------------------------------------------

    def start_import_job(
        self,
        *,
        job_name: str,
        client_token: str,
        input_uri: str,
        output_uri: str,
        role_arn: str,
    ) -> str:
        resp = self.start_dicom_import_job(
            job_name=job_name,
            client_token=client_token,
            input_uri=input_uri,
            output_uri=output_uri,
            role_arn=role_arn,
        )
        return str(resp["jobId"])

    def get_import_job(self, job_id: str) -> ImportJob:
        self.check_fault("GetDICOMImportJob")
        row = self._job_row(job_id)
        return ImportJob(
            job_id=row["job_id"],
            job_name=row["job_name"],
            status=JobStatus(row["status"]),
            input_uri=row["input_uri"],
            output_uri=row["output_uri"],
            submitted_at=row["submitted_at"],
            ended_at=row["ended_at"],
            message=row["message"] or "",
        )

    def job_output_prefix(self, job: ImportJob) -> str:
        return f"{job.output_uri.rstrip('/')}/{self.datastore_id}-DicomImport-{job.job_id}/"

    # -- HealthImaging operations (response shapes of botocore's medical-imaging model) ------

    def _arn(self, image_set_id: str | None = None) -> str:
        arn = f"arn:aws:medical-imaging:{self.region}:{self.account_id}:datastore/"
        arn += self.datastore_id
        return arn + (f"/imageset/{image_set_id}" if image_set_id else "")

    def datastore_properties(self) -> dict[str, Any]:
        """GetDatastore's `datastoreProperties`."""
        return {
            "datastoreId": self.datastore_id,
            "datastoreName": self.datastore_name,
            "datastoreStatus": "ACTIVE",
            "losslessStorageFormat": "HTJ2K",
            "datastoreArn": self._arn(),
            "createdAt": _ts(self._created_at),
            "updatedAt": _ts(self._created_at),
        }

    def _take_start_token(self) -> bool:
        if self._start_rate is None:
            return True
        with self._faults_lock:
            now = time.monotonic()
            self._tokens = min(
                self._start_burst, self._tokens + (now - self._tokens_at) * self._start_rate
            )
            self._tokens_at = now
            if self._tokens < 1.0:
                return False
            self._tokens -= 1.0
            return True

    def start_dicom_import_job(
        self,
        *,
        job_name: str | None,
        client_token: str,
        input_uri: str,
        output_uri: str,
        role_arn: str,
    ) -> dict[str, Any]:
        """StartDICOMImportJob: the job is SUBMITTED and runs in the background."""
        self.check_fault("StartDICOMImportJob")
        for name, uri in (("inputS3Uri", input_uri), ("outputS3Uri", output_uri)):
            if urlparse(uri).scheme not in ("file", "s3"):
                raise _datastore_error(VALIDATION, f"{name} must be an s3:// or file:// URI")
        if not client_token:
            raise _datastore_error(VALIDATION, "clientToken is required")
        if not self._take_start_token():
            raise _datastore_error(THROTTLING, "Rate exceeded for StartDICOMImportJob")
        now = time.time()
        job_id = uuid.uuid4().hex
        with self._write() as db:
            row = db.execute(
                f"SELECT {_JOB_COLUMNS} FROM jobs WHERE client_token = ?", (client_token,)
            ).fetchone()
            if row is not None:
                same = (row[5], row[6], row[4]) == (input_uri, output_uri, role_arn) and (
                    not job_name or row[1] == job_name
                )
                if not same:
                    raise _datastore_error(
                        CONFLICT, "clientToken was already used with different parameters"
                    )
                return {
                    "datastoreId": self.datastore_id,
                    "jobId": row[0],
                    "jobStatus": row[3],
                    "submittedAt": _ts(row[7]),
                }
            active = db.execute(
                "SELECT COUNT(*) FROM jobs WHERE status IN ('SUBMITTED', 'IN_PROGRESS')"
            ).fetchone()[0]
            if active >= self.max_concurrent_jobs:
                raise _datastore_error(
                    QUOTA,
                    f"Maximum concurrent import jobs per data store reached "
                    f"({self.max_concurrent_jobs})",
                )
            db.execute(
                "INSERT INTO jobs (job_id, job_name, client_token, status, role_arn, input_uri, "
                "output_uri, submitted_at) VALUES (?, ?, ?, 'SUBMITTED', ?, ?, ?, ?)",
                (job_id, job_name or job_id, client_token, role_arn, input_uri, output_uri, now),
            )
        self._wake.set()
        return {
            "datastoreId": self.datastore_id,
            "jobId": job_id,
            "jobStatus": "SUBMITTED",
            "submittedAt": _ts(now),
        }

    def _job_row(self, job_id: str) -> dict[str, Any]:
        row = (
            self._db()
            .execute(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE job_id = ?", (job_id,))
            .fetchone()
        )
        if row is None:
            raise _datastore_error(NOT_FOUND, f"Import job {job_id} does not exist")
        names = [c.strip() for c in _JOB_COLUMNS.split(",")]
        return dict(zip(names, row, strict=True))

    def get_dicom_import_job(self, job_id: str) -> dict[str, Any]:
        """GetDICOMImportJob's `jobProperties`."""
        self.check_fault("GetDICOMImportJob")
        row = self._job_row(job_id)
        props: dict[str, Any] = {
            "jobId": row["job_id"],
            "jobName": row["job_name"],
            "jobStatus": row["status"],
            "datastoreId": self.datastore_id,
            "dataAccessRoleArn": row["role_arn"],
            "submittedAt": _ts(row["submitted_at"]),
            "inputS3Uri": row["input_uri"],
            "outputS3Uri": row["output_uri"],
        }
        if row["ended_at"] is not None:
            props["endedAt"] = _ts(row["ended_at"])
        if row["message"]:
            props["message"] = row["message"]
        return props

    def list_dicom_import_jobs(
        self,
        *,
        job_status: str | None = None,
        max_results: int | None = None,
        next_token: str | None = None,
    ) -> dict[str, Any]:
        """ListDICOMImportJobs: newest first."""
        self.check_fault("ListDICOMImportJobs")
        offset = _decode_token(next_token)
        limit = max_results or 50
        sql = f"SELECT {_JOB_COLUMNS} FROM jobs"
        args: list[Any] = []
        if job_status:
            sql += " WHERE status = ?"
            args.append(job_status)
        sql += " ORDER BY seq DESC LIMIT ? OFFSET ?"
        rows = self._db().execute(sql, [*args, limit + 1, offset]).fetchall()
        summaries = []
        for row in rows[:limit]:
            summary: dict[str, Any] = {
                "jobId": row[0],
                "jobName": row[1],
                "jobStatus": row[3],
                "datastoreId": self.datastore_id,
                "dataAccessRoleArn": row[4],
                "submittedAt": _ts(row[7]),
            }
            if row[8] is not None:
                summary["endedAt"] = _ts(row[8])
            if row[9]:
                summary["message"] = row[9]
            summaries.append(summary)
        out: dict[str, Any] = {"jobSummaries": summaries}
        if len(rows) > limit:
            out["nextToken"] = _encode_token(offset + limit)
        return out

    def _image_set_row(self, image_set_id: str) -> sqlite3.Row | tuple[Any, ...]:
        row = (
            self._db()
            .execute(
                "SELECT image_set_id, is_primary, version, created_at, updated_at, tags "
                "FROM image_sets WHERE image_set_id = ?",
                (image_set_id,),
            )
            .fetchone()
        )
        if row is None:
            raise _datastore_error(NOT_FOUND, f"Image set {image_set_id} does not exist")
        return row

    def _version_row(self, image_set_id: str, version: str | int | None) -> tuple[Any, ...]:
        db = self._db()
        if version is None:
            row = db.execute(
                "SELECT version, created_at, is_primary FROM image_set_versions "
                "WHERE image_set_id = ? ORDER BY version DESC LIMIT 1",
                (image_set_id,),
            ).fetchone()
        else:
            try:
                number = int(version)
            except ValueError as exc:
                raise _datastore_error(VALIDATION, "version must be a number") from exc
            row = db.execute(
                "SELECT version, created_at, is_primary FROM image_set_versions "
                "WHERE image_set_id = ? AND version = ?",
                (image_set_id, number),
            ).fetchone()
        if row is None:
            raise _datastore_error(
                NOT_FOUND, f"Version {version} of image set {image_set_id} does not exist"
            )
        return tuple(row)

    def get_image_set(self, image_set_id: str, version_id: str | None = None) -> dict[str, Any]:
        """GetImageSet."""
        self.check_fault("GetImageSet")
        first = self._image_set_row(image_set_id)
        version, created, is_primary = self._version_row(image_set_id, version_id)
        return {
            "datastoreId": self.datastore_id,
            "imageSetId": image_set_id,
            "versionId": str(version),
            "imageSetState": "ACTIVE",
            "imageSetWorkflowStatus": "IMPORTED",
            "createdAt": _ts(first[3]),
            "updatedAt": _ts(created),
            "imageSetArn": self._arn(image_set_id),
            "isPrimary": bool(is_primary),
            "storageTier": "FREQUENT_ACCESS",
        }

    def get_image_set_metadata(self, image_set_id: str, version_id: str | None = None) -> bytes:
        """GetImageSetMetadata: the gzip-compressed JSON document."""
        self.check_fault("GetImageSetMetadata")
        self._image_set_row(image_set_id)
        version = self._version_row(image_set_id, version_id)[0]
        row = (
            self._db()
            .execute(
                "SELECT metadata FROM image_set_versions WHERE image_set_id = ? AND version = ?",
                (image_set_id, version),
            )
            .fetchone()
        )
        return bytes(row[0])

    def image_set_metadata(
        self, image_set_id: str, version_id: str | None = None
    ) -> dict[str, Any]:
        """The metadata document, decompressed and parsed (a convenience, not an API call)."""
        return dict(
            json.loads(gzip.decompress(self.get_image_set_metadata(image_set_id, version_id)))
        )

    def get_image_frame(self, image_set_id: str, image_frame_id: str) -> tuple[bytes, str]:
        """GetImageFrame: the stored frame and its content type."""
        self.check_fault("GetImageFrame")
        self._image_set_row(image_set_id)
        row = (
            self._db()
            .execute(
                "SELECT path, content_type FROM frames WHERE frame_id = ? AND image_set_id = ?",
                (image_frame_id, image_set_id),
            )
            .fetchone()
        )
        if row is None:
            raise _datastore_error(
                NOT_FOUND,
                f"Image frame {image_frame_id} does not exist in image set {image_set_id}",
            )
        try:
            data = (self._frames_dir / row[0]).read_bytes()
        except OSError as exc:
            raise _datastore_error(INTERNAL, "The image frame could not be read") from exc
        return data, str(row[1])

    def list_image_set_versions(
        self,
        image_set_id: str,
        *,
        max_results: int | None = None,
        next_token: str | None = None,
    ) -> dict[str, Any]:
        """ListImageSetVersions: newest first."""
        self.check_fault("ListImageSetVersions")
        first = self._image_set_row(image_set_id)
        offset = _decode_token(next_token)
        limit = max_results or 50
        rows = (
            self._db()
            .execute(
                "SELECT version, created_at, is_primary FROM image_set_versions "
                "WHERE image_set_id = ? ORDER BY version DESC LIMIT ? OFFSET ?",
                (image_set_id, limit + 1, offset),
            )
            .fetchall()
        )
        items = [
            {
                "imageSetId": image_set_id,
                "versionId": str(version),
                "imageSetState": "ACTIVE",
                "ImageSetWorkflowStatus": "IMPORTED",
                "createdAt": _ts(first[3]),
                "updatedAt": _ts(created),
                "isPrimary": bool(is_primary),
            }
            for version, created, is_primary in rows[:limit]
        ]
        out: dict[str, Any] = {"imageSetPropertiesList": items}
        if len(rows) > limit:
            out["nextToken"] = _encode_token(offset + limit)
        return out

    _EQUAL_COLUMNS = {
        "DICOMPatientId": "patient_id",
        "DICOMAccessionNumber": "accession",
        "DICOMStudyId": "study_id",
        "DICOMStudyInstanceUID": "study_uid",
        "DICOMSeriesInstanceUID": "series_uid",
    }
    _SORT_COLUMNS = {
        "updatedAt": "updated_at",
        "createdAt": "created_at",
        "DICOMStudyDateAndTime": "study_date || study_time",
    }

    def search_image_sets(
        self,
        search_criteria: dict[str, Any] | None = None,
        *,
        max_results: int | None = None,
        next_token: str | None = None,
    ) -> dict[str, Any]:
        """SearchImageSets: filters are ANDed; EQUAL on the DICOM ids and `isPrimary`,
        EQUAL or BETWEEN on `createdAt`, `updatedAt` and `DICOMStudyDateAndTime`."""
        self.check_fault("SearchImageSets")
        criteria = search_criteria or {}
        where: list[str] = []
        args: list[Any] = []
        for flt in criteria.get("filters") or []:
            operator = flt.get("operator")
            values = flt.get("values") or []
            if not values:
                raise _datastore_error(VALIDATION, "A search filter needs values")
            attrs = {next(iter(v)) for v in values if v}
            if len(attrs) != 1 or any(len(v) != 1 for v in values):
                raise _datastore_error(
                    VALIDATION, "Each search filter value names exactly one attribute"
                )
            attr = attrs.pop()
            if operator == "EQUAL":
                if len(values) != 1:
                    raise _datastore_error(VALIDATION, "EQUAL takes exactly one value")
                value = values[0][attr]
                if attr in self._EQUAL_COLUMNS:
                    where.append(f"{self._EQUAL_COLUMNS[attr]} = ?")
                    args.append(str(value))
                elif attr == "isPrimary":
                    where.append("is_primary = ?")
                    args.append(1 if value else 0)
                elif attr in ("createdAt", "updatedAt"):
                    where.append(f"{self._SORT_COLUMNS[attr]} = ?")
                    args.append(_epoch(value))
                elif attr == "DICOMStudyDateAndTime":
                    where.append("study_date = ?")
                    args.append(str(value.get("DICOMStudyDate", "")))
                    if value.get("DICOMStudyTime"):
                        where.append("study_time = ?")
                        args.append(str(value["DICOMStudyTime"]))
                else:
                    raise _datastore_error(VALIDATION, f"Cannot search by {attr}")
            elif operator == "BETWEEN":
                if len(values) != 2:
                    raise _datastore_error(VALIDATION, "BETWEEN takes exactly two values")
                low, high = values[0][attr], values[1][attr]
                if attr in ("createdAt", "updatedAt"):
                    where.append(f"{self._SORT_COLUMNS[attr]} BETWEEN ? AND ?")
                    args.extend([_epoch(low), _epoch(high)])
                elif attr == "DICOMStudyDateAndTime":
                    where.append("study_date || study_time BETWEEN ? AND ?")
                    args.append(
                        str(low.get("DICOMStudyDate", "")) + str(low.get("DICOMStudyTime", ""))
                    )
                    args.append(
                        str(high.get("DICOMStudyDate", "")) + str(high.get("DICOMStudyTime") or "~")
                    )
                else:
                    raise _datastore_error(VALIDATION, f"BETWEEN does not apply to {attr}")
            else:
                raise _datastore_error(VALIDATION, f"Unknown search operator {operator!r}")
        sort = criteria.get("sort")
        column, order = "updated_at", "DESC"
        if sort:
            column = self._SORT_COLUMNS[sort["sortField"]]
            order = "ASC" if sort["sortOrder"] == "ASC" else "DESC"
        offset = _decode_token(next_token)
        limit = max_results or 50
        sql = (
            "SELECT image_set_id, version, created_at, updated_at, is_primary, tags FROM image_sets"
        )
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += f" ORDER BY {column} {order}, image_set_id LIMIT ? OFFSET ?"
        rows = self._db().execute(sql, [*args, limit + 1, offset]).fetchall()
        summaries = [
            {
                "imageSetId": image_set_id,
                "version": int(version),
                "createdAt": _ts(created),
                "updatedAt": _ts(updated),
                "isPrimary": bool(is_primary),
                "storageTier": "FREQUENT_ACCESS",
                "DICOMTags": json.loads(tags),
            }
            for image_set_id, version, created, updated, is_primary, tags in rows[:limit]
        ]
        out: dict[str, Any] = {"imageSetsMetadataSummaries": summaries}
        if sort:
            out["sort"] = {"sortOrder": order, "sortField": sort["sortField"]}
        if len(rows) > limit:
            out["nextToken"] = _encode_token(offset + limit)
        return out

    # -- object stores -------------------------------------------------------------------------

    def _default_store_for_uri(self, uri: str) -> tuple[ObjectStore, str]:
        parsed = urlparse(uri)
        if parsed.scheme == "file":
            if parsed.netloc not in ("", "localhost"):
                raise ValueError(f"file URI on another host: {uri}")
            path = Path(unquote(parsed.path))
            for candidate in (path, *path.parents):
                if candidate.name == "objects" and (candidate / ".staging").is_dir():
                    root = str(candidate.parent)
                    with self._stores_lock:
                        store = self._stores.get(root)
                        if store is None:
                            store = LocalObjectStore(candidate.parent, fsync=self.fsync)
                            self._stores[root] = store
                    rel = path.relative_to(candidate).as_posix()
                    return store, ("" if rel == "." else rel.strip("/") + "/")
            raise ValueError(f"{uri} is not inside a local object store")
        if parsed.scheme == "s3":
            from store_scp.storage.s3 import S3ObjectStore

            bucket = parsed.netloc
            with self._stores_lock:
                store = self._stores.get(f"s3://{bucket}")
                if store is None:
                    store = S3ObjectStore(
                        bucket,
                        staging_dir=self.root / "s3-staging",
                        endpoint_url=self._s3_endpoint_url,
                        checksum_algorithm=None,
                    )
                    self._stores[f"s3://{bucket}"] = store
            key = parsed.path.lstrip("/")
            return store, key
        raise ValueError(f"unsupported URI scheme: {uri}")

    @staticmethod
    def _put(store: ObjectStore, key: str, data: bytes) -> None:
        staging = store.staging_dir / f"out-{secrets.token_hex(8)}.part"
        with open(staging, "wb") as f:
            f.write(data)
        try:
            store.commit(staging, key)
        except BaseException:
            store.discard(staging)
            raise

    # -- the job runner --------------------------------------------------------------------------

    def _claim_runner(self) -> None:
        folder = self.root / "runners"
        folder.mkdir(parents=True, exist_ok=True)
        self._runner_name = f"{os.getpid():x}-{secrets.token_hex(4)}"
        path = folder / f"{self._runner_name}.lock"
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        fcntl.flock(fd, fcntl.LOCK_EX)
        self._runner_fd = fd

    def _runner_alive(self, name: str | None) -> bool:
        if not name:
            return False
        if name == self._runner_name:
            return True
        path = self.root / "runners" / f"{name}.lock"
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(path)
        return False

    def _recover_orphans(self) -> None:
        rows = (
            self._db()
            .execute("SELECT job_id, runner FROM jobs WHERE status = 'IN_PROGRESS'")
            .fetchall()
        )
        for job_id, runner in rows:
            if not self._runner_alive(runner):
                log.warning("import job %s lost its runner; starting it again", job_id)
                with self._write() as db:
                    db.execute(
                        "UPDATE jobs SET status = 'SUBMITTED', runner = NULL "
                        "WHERE job_id = ? AND status = 'IN_PROGRESS' AND runner IS ?",
                        (job_id, runner),
                    )

    def _claim_next(self) -> str | None:
        with self._write() as db:
            row = db.execute(
                "SELECT job_id FROM jobs WHERE status = 'SUBMITTED' ORDER BY seq LIMIT 1"
            ).fetchone()
            if row is None:
                return None
            db.execute(
                "UPDATE jobs SET status = 'IN_PROGRESS', runner = ? WHERE job_id = ?",
                (self._runner_name, row[0]),
            )
            return str(row[0])

    def _run_loop(self) -> None:
        last_recovery = 0.0
        while not self._stop.is_set():
            try:
                if time.monotonic() - last_recovery > 5.0:
                    last_recovery = time.monotonic()
                    self._recover_orphans()
                with self._faults_lock:
                    held = self._faults.hold
                while not held and not self._stop.is_set():
                    with self._running_lock:
                        if len(self._running) >= self._job_threads:
                            break
                    job_id = self._claim_next()
                    if job_id is None:
                        break
                    with self._running_lock:
                        self._running.add(job_id)
                    assert self._pool is not None
                    self._pool.submit(self._run_job, job_id)
            except Exception:
                log.exception("the datastore's job runner hit an error")
            self._wake.wait(self._poll_interval)
            self._wake.clear()

    def _finish(self, job_id: str, status: str, message: str | None = None) -> None:
        with self._write() as db:
            db.execute(
                "UPDATE jobs SET status = ?, ended_at = ?, message = ? WHERE job_id = ?",
                (status, time.time(), _api_message(message) if message else None, job_id),
            )

    def _run_job(self, job_id: str) -> None:
        try:
            self._import(job_id)
        except Exception as exc:
            log.exception("import job %s failed", job_id)
            with contextlib.suppress(Exception):
                self._finish(job_id, "FAILED", f"Internal error: {type(exc).__name__}")
        finally:
            with self._running_lock:
                self._running.discard(job_id)
            self._wake.set()

    def _import(self, job_id: str) -> None:
        job = self._job_row(job_id)
        with self._faults_lock:
            fail_message = self._faults.fail_jobs.pop(0) if self._faults.fail_jobs else None
            delay = self._faults.manifest_delays.pop(0) if self._faults.manifest_delays else None
            stall = self._faults.stalls.pop(0) if self._faults.stalls else None
        if stall is not None:
            self._stop.wait(stall)
        if fail_message is not None:
            self._finish(job_id, "FAILED", fail_message)
            return
        try:
            in_store, in_prefix = self._store_for_uri(job["input_uri"])
            out_store, out_prefix = self._store_for_uri(job["output_uri"])
        except Exception as exc:
            self._finish(job_id, "FAILED", f"Cannot access the input or output location: {exc}")
            return
        try:
            keys = sorted(in_store.list_keys(in_prefix))
        except (StorageError, OSError) as exc:
            self._finish(job_id, "FAILED", f"Cannot list the input location: {exc}")
            return
        folders: set[str] = set()
        for key in keys:
            parts = key[len(in_prefix) :].split("/")[:-1]
            for i in range(1, len(parts) + 1):
                folders.add("/".join(parts[:i]))
        if len(folders) > self.max_nested_folders:
            self._finish(
                job_id,
                "FAILED",
                f"The input has {len(folders)} nested folders, more than the "
                f"{self.max_nested_folders} allowed in one import job",
            )
            return
        if len(keys) > self.max_files_per_job:
            self._finish(
                job_id,
                "FAILED",
                f"The input has {len(keys)} files, more than the {self.max_files_per_job} "
                "allowed in one import job",
            )
            return
        total = 0
        for key in keys:
            total += self._size_of(in_store, key)
        if total > self.max_bytes_per_job:
            self._finish(
                job_id,
                "FAILED",
                f"The input holds {total} bytes, more than the {self.max_bytes_per_job} "
                "allowed in one import job",
            )
            return

        instances: list[_Instance] = []
        failures: list[_Failure] = []
        for key in keys:
            result = self._ingest(in_store, key)
            if isinstance(result, _Failure):
                failures.append(result)
            else:
                instances.append(result)

        placed = self._place(instances, job_id)

        job_prefix = f"{out_prefix}{self.datastore_id}-DicomImport-{job_id}/"
        job_uri = self.job_output_prefix(
            ImportJob(job_id, job["job_name"], JobStatus.IN_PROGRESS, "", job["output_uri"])
        )
        success_lines = [
            json.dumps(
                {
                    "inputFile": inst.key,
                    "importResponse": {
                        "imageSetId": image_set_id,
                        "imageSetVersion": version,
                        "isPrimary": is_primary,
                    },
                },
                separators=(",", ":"),
            )
            for inst, (image_set_id, version, is_primary) in placed
        ]
        failure_lines = [
            json.dumps(
                {
                    "inputFile": f.key,
                    "exception": {"exceptionType": f.exception_type, "message": f.message},
                },
                separators=(",", ":"),
            )
            for f in failures
        ]
        summary: dict[tuple[str, int, bool], int] = {}
        for _inst, ident in placed:
            summary[ident] = summary.get(ident, 0) + 1
        manifest = {
            "jobSummary": {
                "jobId": job_id,
                "datastoreId": self.datastore_id,
                "inputS3Uri": job["input_uri"],
                "outputS3Uri": job_uri,
                "successOutputS3Uri": f"{job_uri}SUCCESS/",
                "failureOutputS3Uri": f"{job_uri}FAILURE/",
                "warningsOutputS3Uri": f"{job_uri}WARNING/",
                "numberOfScannedFiles": len(keys),
                "numberOfImportedFiles": len(placed),
                "numberOfFilesWithCustomerError": sum(1 for f in failures if not f.server_error),
                "numberOfFilesWithServerError": sum(1 for f in failures if f.server_error),
                "numberOfGeneratedImageSets": len(summary),
                "imageSetsSummary": [
                    {
                        "imageSetId": image_set_id,
                        "imageSetVersion": version,
                        "isPrimary": is_primary,
                        "numberOfMatchedSOPInstances": count,
                    }
                    for (image_set_id, version, is_primary), count in summary.items()
                ],
            }
        }

        def ndjson(lines: list[str]) -> bytes:
            return ("\n".join(lines) + "\n").encode() if lines else b""

        self._put(out_store, f"{job_prefix}SUCCESS/success.ndjson", ndjson(success_lines))
        self._put(out_store, f"{job_prefix}FAILURE/failure.ndjson", ndjson(failure_lines))
        manifest_bytes = json.dumps(manifest, indent=2).encode()
        if delay is not None:
            self._finish(job_id, "COMPLETED")
            self._stop.wait(delay)
            self._put(out_store, f"{job_prefix}job-output-manifest.json", manifest_bytes)
        else:
            self._put(out_store, f"{job_prefix}job-output-manifest.json", manifest_bytes)
            self._finish(job_id, "COMPLETED")
        log.info(
            "import job %s: %d file(s) imported, %d failed", job_id, len(placed), len(failures)
        )

    @staticmethod
    def _size_of(store: ObjectStore, key: str) -> int:
        """The object's size where a listing knows it cheaply (a local store), else 0: other
        stores are held to the per-file limit as each file is read."""
        if not isinstance(store, LocalObjectStore):
            return 0
        try:
            return os.stat(store.objects_dir / key).st_size
        except OSError:
            return 0

    # -- one file ----------------------------------------------------------------------------

    def _file_fault(self, key: str) -> _Failure | None:
        with self._faults_lock:
            for fault in self._faults.file_faults:
                if fault.remaining == 0 or not fnmatch.fnmatchcase(key, fault.pattern):
                    continue
                if fault.remaining is not None:
                    fault.remaining -= 1
                code = INTERNAL if fault.server_error else VALIDATION
                return _Failure(key, code, fault.message, fault.server_error)
        return None

    def _ingest(self, store: ObjectStore, key: str) -> _Instance | _Failure:
        injected = self._file_fault(key)
        if injected is not None:
            return injected
        try:
            with store.open(key) as f:
                data = f.read(self.max_file_bytes + 1)
        except (OSError, StorageError) as exc:
            return _Failure(key, INTERNAL, f"The file could not be read: {exc}", True)
        if len(data) > self.max_file_bytes:
            return _Failure(
                key,
                VALIDATION,
                f"The file is larger than the {self.max_file_bytes} bytes allowed for one "
                "DICOM P10 file",
            )
        if data[:2] == b"\x1f\x8b":
            return _Failure(key, VALIDATION, "Files with gzip Content-Encoding are not supported")
        try:
            ds = pydicom.dcmread(io.BytesIO(data), force=False)
        except InvalidDicomError:
            return _Failure(key, VALIDATION, "The file is not a DICOM P10 file")
        except Exception as exc:
            return _Failure(key, VALIDATION, f"The DICOM file could not be parsed: {exc}")
        del data
        ts = str(ds.file_meta.get("TransferSyntaxUID", "") or "")
        for keyword in ("SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"):
            value = str(ds.get(keyword, "") or "").strip(" \x00")
            if not value:
                return _Failure(key, VALIDATION, f"DICOM attribute {keyword} does not exist")
            if not _UID_SYNTAX.fullmatch(value):
                return _Failure(key, VALIDATION, f"DICOM attribute {keyword} is not a valid UID")
        reason = import_rejection(str(ds.get("SOPClassUID", "") or "").strip(" \x00"), ts)
        if reason is not None:
            return _Failure(key, VALIDATION, reason)
        reason = _limit_violation(ds)
        if reason is not None:
            return _Failure(key, VALIDATION, reason)
        try:
            stored_ts, frames = self._store_frames(ds, ts)
        except _PixelError as exc:
            return _Failure(key, VALIDATION if not exc.server else INTERNAL, str(exc), exc.server)
        return _Instance(
            key=key,
            study_uid=str(ds.StudyInstanceUID).strip(" \x00"),
            series_uid=str(ds.SeriesInstanceUID).strip(" \x00"),
            sop_uid=str(ds.SOPInstanceUID).strip(" \x00"),
            levels=_split_levels(ds),
            stored_ts=stored_ts,
            content_type=content_type_for(stored_ts),
            frames=frames,
        )

    # -- pixel data --------------------------------------------------------------------------

    def _write_frame(self, data: bytes) -> tuple[str, Path]:
        frame_id = uuid.uuid4().hex
        rel = Path(frame_id[:2]) / frame_id
        path = self._frames_dir / rel
        try:
            path.parent.mkdir()
        except FileExistsError:
            pass
        else:
            if self.fsync:
                _fsync_dir(self._frames_dir)
        tmp = path.with_name(f".{frame_id}.tmp")
        with open(tmp, "wb") as f:
            f.write(data)
            if self.fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
        if self.fsync:
            _fsync_dir(path.parent)
        return frame_id, rel

    def _encode_htj2k(self, arr: np.ndarray) -> bytes | None:
        codec = self._codec
        if codec is None or arr.dtype.kind not in "iu" or arr.dtype.itemsize > 4:
            return None
        if arr.ndim == 3 and arr.shape[2] not in (1, 3):
            return None
        height, width = arr.shape[0], arr.shape[1]
        try:
            encoded = bytes(
                codec.htj2k_encode(
                    np.ascontiguousarray(arr),
                    reversible=True,
                    tlm=True,
                    resolutions=_decompositions(width, height),
                )
            )
        except Exception as exc:
            log.warning("HTJ2K encoding failed, keeping the original encoding: %s", exc)
            return None
        try:
            check = codec.htj2k_decode(encoded)
        except Exception as exc:
            raise _PixelError(f"Pixel data verification failed: {exc}", server=True) from exc
        if check.shape != arr.shape or not np.array_equal(check, arr):
            raise _PixelError("Pixel data verification failed: frames differ", server=True)
        return encoded

    def _store_frames(self, ds: Dataset, ts: str) -> tuple[str, list[_StoredFrame]]:
        if "PixelData" not in ds:
            return ts, []
        try:
            rows, cols = int(ds.Rows), int(ds.Columns)
            count = int(ds.get("NumberOfFrames", 1) or 1)
        except (AttributeError, TypeError, ValueError) as exc:
            raise _PixelError(
                "DICOM attributes Rows, Columns or NumberOfFrames are invalid"
            ) from exc
        encapsulated = ts not in (
            "1.2.840.10008.1.2",
            EXPLICIT_VR_LITTLE_ENDIAN,
            _DEFLATED,
            "1.2.840.10008.1.2.2",
        )
        if ts in _VIDEO_TRANSFER_SYNTAXES:
            video = b"".join(generate_fragments(ds.PixelData))
            frame_id, rel = self._write_frame(video)
            video_meta = {"ID": frame_id, "FrameSizeInBytes": len(video)}
            return ts, [_StoredFrame(frame_id, rel, len(video), video_meta)]
        binary_seg = (
            str(ds.get("SOPClassUID", "")) == _SEGMENTATION_STORAGE
            and str(ds.get("SegmentationType", "")).upper() == "BINARY"
        )
        keep = ts in KEPT_AS_RECEIVED_TRANSFER_SYNTAXES or binary_seg or self._codec is None
        originals: Iterator[bytes] | None = None
        if keep and encapsulated:
            originals = generate_frames(ds.PixelData, number_of_frames=count)
        try:
            from pydicom.pixels import iter_pixels
            from pydicom.pixels.utils import pack_bits

            decoded = iter_pixels(ds, raw=True)
            frames: list[_StoredFrame] = []
            stored_ts = ts if (keep and encapsulated) else EXPLICIT_VR_LITTLE_ENDIAN
            for arr in decoded:
                arr_le = arr.astype(arr.dtype.newbyteorder("<"), copy=False)
                raw = arr_le.tobytes()
                meta: dict[str, Any] = {
                    "ID": "",
                    "PixelDataChecksumFromBaseToFullResolution": [
                        {"Width": cols, "Height": rows, "Checksum": zlib.crc32(raw)}
                    ],
                    "MinPixelValue": _number(arr.min()) if arr.size else 0,
                    "MaxPixelValue": _number(arr.max()) if arr.size else 0,
                    "FrameSizeInBytes": len(raw),
                }
                if originals is not None:
                    data = next(originals)
                elif keep:
                    one_bit = int(ds.get("BitsAllocated", 8)) == 1
                    data = pack_bits(arr_le) if one_bit else raw
                else:
                    encoded = self._encode_htj2k(arr_le)
                    if encoded is None:
                        data, this_ts = raw, EXPLICIT_VR_LITTLE_ENDIAN
                    else:
                        data, this_ts = encoded, HTJ2K_LOSSLESS_RPCL
                    if frames and this_ts != stored_ts:
                        raise _PixelError("Frames of one instance cannot be stored alike", True)
                    stored_ts = this_ts
                frame_id, rel = self._write_frame(data)
                meta["ID"] = frame_id
                frames.append(_StoredFrame(frame_id, rel, len(data), meta))
        except _PixelError:
            raise
        except StopIteration as exc:
            raise _PixelError("The pixel data holds fewer frames than NumberOfFrames") from exc
        except Exception as exc:
            raise _PixelError(f"Failed to decode the pixel data: {exc}") from exc
        return stored_ts, frames

    # -- image sets ----------------------------------------------------------------------------

    def _place(
        self, instances: list[_Instance], job_id: str
    ) -> list[tuple[_Instance, tuple[str, int, bool]]]:
        """Put every instance into an image set; returns (instance, (id, version, primary))."""
        by_series: dict[tuple[str, str], list[_Instance]] = {}
        for inst in instances:
            by_series.setdefault((inst.study_uid, inst.series_uid), []).append(inst)
        placed: dict[int, tuple[str, int, bool]] = {}
        for (study_uid, series_uid), members in by_series.items():
            with self._write() as db:
                groups: dict[tuple[tuple[str, ...], tuple[str, ...]], list[_Instance]] = {}
                for inst in members:
                    groups.setdefault((inst.study_signature, inst.series_signature), []).append(
                        inst
                    )
                primary = db.execute(
                    "SELECT image_set_id, version, patient_id, study_date, accession, study_id, "
                    "series_number FROM image_sets "
                    "WHERE study_uid = ? AND series_uid = ? AND is_primary = 1",
                    (study_uid, series_uid),
                ).fetchone()
                others = {
                    tuple(r)
                    for r in db.execute(
                        "SELECT patient_id, study_date, accession, study_id FROM image_sets "
                        "WHERE study_uid = ? AND series_uid != ? AND is_primary = 1",
                        (study_uid, series_uid),
                    ).fetchall()
                }
                for (study_sig, series_sig), group in groups.items():
                    if primary is not None:
                        target_sig = (tuple(primary[2:6]), (primary[6],))
                        if (study_sig, series_sig) == target_sig:
                            ident = self._add_version(
                                db, primary[0], int(primary[1]), group, job_id
                            )
                            primary = (primary[0], ident[1], *primary[2:])
                        else:
                            ident = self._new_image_set(db, group, job_id, is_primary=False)
                    elif all(o == study_sig for o in others):
                        ident = self._new_image_set(db, group, job_id, is_primary=True)
                        primary = (ident[0], ident[1], *study_sig, *series_sig)
                    else:
                        ident = self._new_image_set(db, group, job_id, is_primary=False)
                    for inst in group:
                        placed[id(inst)] = ident
        return [(inst, placed[id(inst)]) for inst in instances if id(inst) in placed]

    def _apply(self, metadata: dict[str, Any], group: list[_Instance]) -> None:
        for inst in group:
            metadata["Patient"]["DICOM"].update(inst.levels["patient"])
            metadata["Study"]["DICOM"].update(inst.levels["study"])
            series = metadata["Study"]["Series"].setdefault(
                inst.series_uid, {"DICOM": {}, "Instances": {}}
            )
            series["DICOM"].update(inst.levels["series"])
            series["Instances"][inst.sop_uid] = {
                "DICOM": inst.levels["instance"],
                "StoredTransferSyntaxUID": inst.stored_ts,
                "ImageFrames": [frame.meta for frame in inst.frames],
            }

    def _save_version(
        self,
        db: sqlite3.Connection,
        image_set_id: str,
        version: int,
        metadata: dict[str, Any],
        group: list[_Instance],
        job_id: str,
        *,
        is_primary: bool,
        created_at: float,
    ) -> None:
        now = time.time()
        blob = gzip.compress(json.dumps(metadata, separators=(",", ":")).encode(), mtime=0)
        db.execute(
            "INSERT INTO image_set_versions (image_set_id, version, created_at, is_primary, "
            "job_id, metadata) VALUES (?, ?, ?, ?, ?, ?)",
            (image_set_id, version, now, int(is_primary), job_id, blob),
        )
        for inst in group:
            for frame in inst.frames:
                db.execute(
                    "INSERT OR REPLACE INTO frames (frame_id, image_set_id, path, "
                    "transfer_syntax, content_type) VALUES (?, ?, ?, ?, ?)",
                    (
                        frame.frame_id,
                        image_set_id,
                        frame.path.as_posix(),
                        inst.stored_ts,
                        inst.content_type,
                    ),
                )
        patient = metadata["Patient"]["DICOM"]
        study = metadata["Study"]["DICOM"]
        series_uid, series_entry = next(iter(metadata["Study"]["Series"].items()))
        series = series_entry["DICOM"]
        study_uid = _norm(study.get("StudyInstanceUID"))
        tags = _dicom_tags(patient, study, series_uid, series)
        db.execute(
            "INSERT OR REPLACE INTO image_sets (image_set_id, study_uid, series_uid, is_primary, "
            "version, created_at, updated_at, patient_id, accession, study_id, study_date, "
            "study_time, series_number, tags) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                image_set_id,
                study_uid,
                series_uid,
                int(is_primary),
                version,
                created_at,
                now,
                _norm(patient.get("PatientID")),
                _norm(study.get("AccessionNumber")),
                _norm(study.get("StudyID")),
                _norm(study.get("StudyDate")),
                _norm(study.get("StudyTime")),
                _norm(series.get("SeriesNumber")),
                json.dumps(tags),
            ),
        )

    def _new_image_set(
        self, db: sqlite3.Connection, group: list[_Instance], job_id: str, *, is_primary: bool
    ) -> tuple[str, int, bool]:
        image_set_id = uuid.uuid4().hex
        metadata: dict[str, Any] = {
            "SchemaVersion": "1.1",
            "DatastoreID": self.datastore_id,
            "ImageSetID": image_set_id,
            "Patient": {"DICOM": {}},
            "Study": {"DICOM": {}, "Series": {}},
        }
        self._apply(metadata, group)
        self._save_version(
            db,
            image_set_id,
            1,
            metadata,
            group,
            job_id,
            is_primary=is_primary,
            created_at=time.time(),
        )
        return image_set_id, 1, is_primary

    def _add_version(
        self,
        db: sqlite3.Connection,
        image_set_id: str,
        version: int,
        group: list[_Instance],
        job_id: str,
    ) -> tuple[str, int, bool]:
        row = db.execute(
            "SELECT v.metadata, s.created_at FROM image_set_versions v JOIN image_sets s "
            "ON s.image_set_id = v.image_set_id WHERE v.image_set_id = ? AND v.version = ?",
            (image_set_id, version),
        ).fetchone()
        metadata = json.loads(gzip.decompress(row[0]))
        self._apply(metadata, group)
        self._save_version(
            db,
            image_set_id,
            version + 1,
            metadata,
            group,
            job_id,
            is_primary=True,
            created_at=float(row[1]),
        )
        return image_set_id, version + 1, True


class _PixelError(Exception):
    def __init__(self, message: str, server: bool = False) -> None:
        super().__init__(message)
        self.server = server


def _number(value: Any) -> int | float:
    as_float = float(value)
    return int(value) if as_float.is_integer() else as_float


def _first(value: Any) -> Any:
    if isinstance(value, list):
        return value[0] if value else None
    return value


def _dicom_tags(
    patient: dict[str, Any], study: dict[str, Any], series_uid: str, series: dict[str, Any]
) -> dict[str, Any]:
    """SearchImageSets' DICOMTags of an image set, within the model's length limits."""
    tags: dict[str, Any] = {}

    def text(name: str, value: Any, limit: int) -> None:
        value = _first(value)
        if value is not None and str(value) != "":
            tags[name] = str(value)[:limit]

    def integer(name: str, value: Any, low: int, high: int) -> None:
        value = _first(value)
        try:
            number = int(str(value).strip())
        except (TypeError, ValueError):
            return
        if low <= number <= high:
            tags[name] = number

    text("DICOMPatientId", patient.get("PatientID"), 512)
    text("DICOMPatientName", patient.get("PatientName"), 512)
    text("DICOMPatientBirthDate", patient.get("PatientBirthDate"), 36)
    text("DICOMPatientSex", patient.get("PatientSex"), 16)
    text("DICOMStudyInstanceUID", study.get("StudyInstanceUID"), 512)
    text("DICOMStudyId", study.get("StudyID"), 512)
    text("DICOMStudyDescription", study.get("StudyDescription"), 512)
    integer(
        "DICOMNumberOfStudyRelatedSeries", study.get("NumberOfStudyRelatedSeries"), 0, 1_000_000
    )
    integer(
        "DICOMNumberOfStudyRelatedInstances",
        study.get("NumberOfStudyRelatedInstances"),
        0,
        1_000_000,
    )
    text("DICOMAccessionNumber", study.get("AccessionNumber"), 512)
    tags["DICOMSeriesInstanceUID"] = series_uid
    text("DICOMSeriesModality", series.get("Modality"), 32)
    text("DICOMSeriesBodyPart", series.get("BodyPartExamined"), 128)
    integer("DICOMSeriesNumber", series.get("SeriesNumber"), -(2**31), 2**31 - 1)
    text("DICOMStudyDate", study.get("StudyDate"), 36)
    text("DICOMStudyTime", study.get("StudyTime"), 56)
    return tags
