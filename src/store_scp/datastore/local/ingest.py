"""One input file of an import job: read, checked as HealthImaging checks it, its frames stored.

The result is an `Instance` to place into an image set, or a `FileFailure`: the failure line
the job writes for it. Rejections (each documented by AWS): a file that is not DICOM P10,
gzip-compressed content (HealthImaging refuses gzip `Content-Encoding`), a missing required
attribute, a transfer syntax outside supported-transfer-syntaxes.html, the element limits of
dicom-element-constraints.html, a file over the per-file limit (4 GB, endpoints-quotas.html),
pixel data that cannot be decoded or whose stored copy does not decode to the same pixels.
HealthImaging accepts "any SOP class UID, including retired and private"
(reference-dicom-support.html): only a missing or malformed SOP Class UID, and the Media Storage
Directory (DICOMDIR) class, which is not a composite instance, are refused.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

import pydicom
from pydicom.errors import InvalidDicomError

from store_scp.datastore.rules import _UID_SYNTAX, import_rejection
from store_scp.storage.base import ObjectStore, StorageError

from .durable import PendingFiles
from .errors import INTERNAL, VALIDATION
from .frames import FrameStore, PixelError, StoredFrame, content_type_for
from .metadata import SERIES_KEYS, STUDY_KEYS, limit_violation, norm, split_levels


@dataclass(slots=True)
class Instance:
    key: str
    study_uid: str
    series_uid: str
    sop_uid: str
    levels: dict[str, dict[str, Any]]
    stored_ts: str
    content_type: str
    frames: list[StoredFrame]

    @property
    def study_signature(self) -> tuple[str, ...]:
        merged = {**self.levels["patient"], **self.levels["study"]}
        return tuple(norm(merged.get(k)) for k in STUDY_KEYS)

    @property
    def series_signature(self) -> tuple[str, ...]:
        return tuple(norm(self.levels["series"].get(k)) for k in SERIES_KEYS)


@dataclass(slots=True)
class FileFailure:
    key: str
    exception_type: str
    message: str
    server_error: bool = False


def ingest(
    store: ObjectStore,
    key: str,
    *,
    frames: FrameStore,
    pending: PendingFiles,
    max_file_bytes: int,
) -> Instance | FileFailure:
    """Read `key` from `store` and check it; store its frames in `frames` (durable once
    `pending` is synced)."""
    try:
        with store.open(key) as f:
            data = f.read(max_file_bytes + 1)
    except (OSError, StorageError) as exc:
        return FileFailure(key, INTERNAL, f"The file could not be read: {exc}", True)
    if len(data) > max_file_bytes:
        return FileFailure(
            key,
            VALIDATION,
            f"The file is larger than the {max_file_bytes} bytes allowed for one DICOM P10 file",
        )
    if data[:2] == b"\x1f\x8b":
        return FileFailure(key, VALIDATION, "Files with gzip Content-Encoding are not supported")
    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=False)
    except InvalidDicomError:
        return FileFailure(key, VALIDATION, "The file is not a DICOM P10 file")
    except Exception as exc:
        return FileFailure(key, VALIDATION, f"The DICOM file could not be parsed: {exc}")
    del data
    ts = str(ds.file_meta.get("TransferSyntaxUID", "") or "")
    for keyword in ("SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"):
        value = str(ds.get(keyword, "") or "").strip(" \x00")
        if not value:
            return FileFailure(key, VALIDATION, f"DICOM attribute {keyword} does not exist")
        if not _UID_SYNTAX.fullmatch(value):
            return FileFailure(key, VALIDATION, f"DICOM attribute {keyword} is not a valid UID")
    reason = import_rejection(str(ds.get("SOPClassUID", "") or "").strip(" \x00"), ts)
    if reason is not None:
        return FileFailure(key, VALIDATION, reason)
    reason = limit_violation(ds)
    if reason is not None:
        return FileFailure(key, VALIDATION, reason)
    try:
        stored_ts, stored_frames = frames.store(ds, ts, pending)
    except PixelError as exc:
        return FileFailure(key, VALIDATION if not exc.server else INTERNAL, str(exc), exc.server)
    return Instance(
        key=key,
        study_uid=str(ds.StudyInstanceUID).strip(" \x00"),
        series_uid=str(ds.SeriesInstanceUID).strip(" \x00"),
        sop_uid=str(ds.SOPInstanceUID).strip(" \x00"),
        levels=split_levels(ds),
        stored_ts=stored_ts,
        content_type=content_type_for(stored_ts),
        frames=stored_frames,
    )
