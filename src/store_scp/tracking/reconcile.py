"""Start-up reconciler: every committed object gets a tracker row.

The receiver commits an object, answers the C-STORE, and only then writes the receipt to the
tracker. A crash between the two (or a tracker row lost to a power cut, see `tracking.sqlite`)
leaves a committed object without a row. `reconcile` finds those objects and registers them as
RECEIVED, rebuilding the receipt from the object itself:

- `batch_id`: the first component of the key (`<batch-id>/<Study>/<Series>/<SOP>.dcm`); "" for a
  key without a "/".
- SOP Class / Instance UID and transfer syntax from the file meta (0002,0002), (0002,0003),
  (0002,0010); `calling_ae` from Source Application Entity Title (0002,0016), which the receiver
  writes. SOP UIDs missing from the file meta are taken from the dataset (0008,0016/0018).
- Study and Series Instance UID from the dataset. Only the start of the dataset is parsed: the
  parser stops after (0020,000E) and seeks over every value it does not need.
- `size`: bytes of the object; `sha256`: of the dataset bytes after the file meta, read in
  chunks, so a 2 GB object does not need 2 GB of memory.
- `peer`: "" (unknown); `received_at`: the object's modification time when the store hands out a
  real file (the local store), else the time of reconciliation.

Only keys ending in ".dcm" are receipts (the receiver names every object that way); other objects
under the prefix (notes, job outputs) are left alone. Nothing under the reserved prefixes of
`storage.layout` (quarantine, retry copies, job outputs) is a receipt: a quarantined object or a
retry copy is the copy of a receipt that has its row already, never a new one.

Unreadable objects. An object whose header cannot be parsed, or that lacks one of the SOP
Class, SOP Instance, Study or Series UIDs, is still registered (as RECEIVED: marking it FAILED,
"not importable", is the import pipeline's job), so that it is visible instead of silently
ignored. Every field that could not be read is "" (`sha256` too, when the end of the file meta
is unknown; `size` is always known). The key and the reason are logged; the reason names the
problem, never an element value (no PHI). An object that cannot be *read* at all (I/O error,
deleted meanwhile) is not registered: it is logged, counted, and retried at the next start-up.

Reconciliation is idempotent (`record_receipt` ignores known keys), so several processes may run
it at once. Run it before accepting associations: a receipt the receiver writes after the
reconciler registered the same object keeps the reconciler's row, without its peer address.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import shutil
import struct
import tempfile
import time
import zlib
from collections.abc import Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from itertools import islice
from typing import BinaryIO

from pydicom.filereader import read_dataset
from pydicom.tag import BaseTag
from pydicom.uid import UID

from store_scp.storage.base import ObjectStore, StorageError
from store_scp.storage.layout import is_reserved
from store_scp.tracking.base import Receipt, Tracker

__all__ = ["OBJECT_SUFFIX", "reconcile"]

log = logging.getLogger(__name__)

#: Suffix of every object the receiver writes.
OBJECT_SUFFIX = ".dcm"

_CHUNK_BYTES = 1 << 20  # hashing and spooling chunk
_KEYS_PER_QUERY = 500
_MAX_FILE_META = 64 * 1024  # a real file meta is a few hundred bytes
_MAX_DEFLATED_HEADER = 16 << 20  # inflated bytes parsed of a deflated dataset

_SOP_CLASS = 0x00020002
_SOP_INSTANCE = 0x00020003
_TRANSFER_SYNTAX = 0x00020010
_SOURCE_AE = 0x00020016
_DATASET_TAGS = (0x00080016, 0x00080018, 0x0020000D, 0x0020000E)
_LAST_DATASET_TAG = 0x0020000E
# Explicit VR with a 2-byte reserved field and a 4-byte length (PS3.5 7.1.2).
_LONG_VRS = frozenset(
    {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
)


#: Fields without which an object cannot be routed nor imported.
_REQUIRED = (
    "sop_class_uid",
    "sop_instance_uid",
    "study_instance_uid",
    "series_instance_uid",
)


class _HeaderError(Exception):
    """The header cannot be parsed; the message is safe to log (no element values)."""


@dataclass(slots=True)
class _Header:
    """What was read from one object; "" for what could not be."""

    sop_class_uid: str = ""
    sop_instance_uid: str = ""
    transfer_syntax_uid: str = ""
    calling_ae: str = ""
    study_instance_uid: str = ""
    series_instance_uid: str = ""
    dataset_offset: int | None = None  # where the dataset starts; None if unknown
    problems: list[str] = field(default_factory=list)


def reconcile(store: ObjectStore, tracker: Tracker, *, prefix: str = "") -> int:
    """Register every committed object under `prefix` that has no tracker row.

    Returns the number of rows added.
    """
    started = time.monotonic()
    scanned = added = incomplete = errors = 0
    for keys in _batches(store.list_keys(prefix), _KEYS_PER_QUERY):
        scanned += len(keys)
        known = tracker.known_keys(keys)
        for key in keys:
            if key in known:
                continue
            try:
                receipt, problems = _receipt_from_object(store, key)
            except (OSError, StorageError) as exc:
                errors += 1
                error = _describe(exc)
                log.warning(
                    "reconcile: cannot read object key=%s error=%s; not registered, retried at "
                    "the next run",
                    key,
                    error,
                    extra={"key": key, "error": error},
                )
                continue
            if problems:
                incomplete += 1
                reason = "; ".join(problems)
                log.warning(
                    "reconcile: incomplete header key=%s reason=%s; registered, unknown fields "
                    "empty",
                    key,
                    reason,
                    extra={"key": key, "reason": reason},
                )
            if tracker.record_receipt(receipt):
                added += 1
    summary = {
        "prefix": prefix,
        "objects": scanned,
        "registered": added,
        "incomplete_headers": incomplete,
        "read_errors": errors,
        "duration_ms": round((time.monotonic() - started) * 1000, 1),
    }
    log.info(
        "reconcile: %s",
        " ".join(
            f"{name}={value!r}" if name == "prefix" else f"{name}={value}"
            for name, value in summary.items()
        ),
        extra=summary,
    )
    return added


def _batches(keys: Iterator[str], size: int) -> Iterator[list[str]]:
    receipts = (key for key in keys if key.endswith(OBJECT_SUFFIX) and not is_reserved(key))
    while batch := list(islice(receipts, size)):
        yield batch


def _receipt_from_object(store: ObjectStore, key: str) -> tuple[Receipt, list[str]]:
    with ExitStack() as stack:
        raw = stack.enter_context(store.open(key))
        received_at = _mtime(raw)
        stream = raw
        if not _seekable(raw):
            # An object store stream (e.g. S3) cannot seek: spool it to a local temporary
            # file, in chunks, rather than into memory.
            spool = stack.enter_context(tempfile.TemporaryFile(dir=store.staging_dir))
            shutil.copyfileobj(raw, spool, _CHUNK_BYTES)
            spool.seek(0)
            stream = spool
        header = _read_header(stream)
        stream.seek(0)
        size, sha256 = _size_and_digest(stream, header.dataset_offset)
    receipt = Receipt(
        key=key,
        batch_id=key.split("/", 1)[0] if "/" in key else "",
        sop_instance_uid=header.sop_instance_uid,
        sop_class_uid=header.sop_class_uid,
        study_instance_uid=header.study_instance_uid,
        series_instance_uid=header.series_instance_uid,
        transfer_syntax_uid=header.transfer_syntax_uid,
        size=size,
        sha256=sha256,
        calling_ae=header.calling_ae,
        peer="",
        received_at=received_at if received_at is not None else time.time(),
    )
    return receipt, header.problems


def _seekable(stream: BinaryIO) -> bool:
    try:
        return bool(stream.seekable())
    except (AttributeError, ValueError):
        return False


def _mtime(stream: BinaryIO) -> float | None:
    """The modification time of the file behind `stream`, if it is a real file."""
    try:
        return os.fstat(stream.fileno()).st_mtime
    except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is both
        return None


def _size_and_digest(stream: BinaryIO, dataset_offset: int | None) -> tuple[int, str]:
    """Read `stream` to the end: its size, and the SHA-256 of the bytes from `dataset_offset`."""
    digest = hashlib.sha256()
    size = 0
    while chunk := stream.read(_CHUNK_BYTES):
        if dataset_offset is not None and size + len(chunk) > dataset_offset:
            digest.update(memoryview(chunk)[max(dataset_offset - size, 0) :])
        size += len(chunk)
    if dataset_offset is None or dataset_offset > size:
        return size, ""
    return size, digest.hexdigest()


# -- header parsing ----------------------------------------------------------------------------


def _read_header(stream: BinaryIO) -> _Header:
    header = _Header()
    try:
        meta, header.dataset_offset = _read_file_meta(stream)
    except _HeaderError as exc:
        header.problems.append(f"file meta: {exc}")
        return header
    header.sop_class_uid = _text(meta.get(_SOP_CLASS))
    header.sop_instance_uid = _text(meta.get(_SOP_INSTANCE))
    header.transfer_syntax_uid = _text(meta.get(_TRANSFER_SYNTAX))
    header.calling_ae = _text(meta.get(_SOURCE_AE))
    if not header.transfer_syntax_uid:
        header.problems.append("file meta has no transfer syntax")
        return header
    try:
        values = _read_dataset_uids(stream, header.dataset_offset, header.transfer_syntax_uid)
    except OSError:
        raise
    except Exception as exc:
        # A damaged dataset can make the parser fail in many ways; its messages may quote
        # element values, so only the exception type is kept.
        header.problems.append(f"dataset: {type(exc).__name__}")
        return header
    header.sop_class_uid = header.sop_class_uid or values.get(0x00080016, "")
    header.sop_instance_uid = header.sop_instance_uid or values.get(0x00080018, "")
    header.study_instance_uid = values.get(0x0020000D, "")
    header.series_instance_uid = values.get(0x0020000E, "")
    missing = [name for name in _REQUIRED if not getattr(header, name)]
    if missing:
        header.problems.append(f"missing {', '.join(missing)}")
    return header


def _read_file_meta(stream: BinaryIO) -> tuple[dict[int, bytes], int]:
    """Parse the preamble, "DICM" and the group 0002 elements (always explicit VR little endian).

    Returns the raw values by tag and the offset of the first byte after the file meta.
    """
    start = _read_exact(stream, 132)
    if len(start) < 132 or start[128:] != b"DICM":
        raise _HeaderError("no DICM prefix")
    offset = 132
    values: dict[int, bytes] = {}
    while True:
        head = _read_exact(stream, 8)
        if len(head) < 8:
            if head:
                raise _HeaderError("truncated element")
            return values, offset  # a file meta and no dataset
        group, element = struct.unpack("<HH", head[:4])
        if group != 0x0002:
            return values, offset
        vr = head[4:6]
        if not (b"AA" <= vr <= b"ZZ"):
            raise _HeaderError("file meta is not explicit VR")
        if vr in _LONG_VRS:
            extra = _read_exact(stream, 4)
            if len(extra) < 4:
                raise _HeaderError("truncated element")
            (length,) = struct.unpack("<L", extra)
            header_length = 12
        else:
            (length,) = struct.unpack("<H", head[6:8])
            header_length = 8
        if length == 0xFFFFFFFF:
            raise _HeaderError("undefined length in file meta")
        offset += header_length + length
        if offset - 132 > _MAX_FILE_META:
            raise _HeaderError("file meta too long")
        value = _read_exact(stream, length)
        if len(value) < length:
            raise _HeaderError("truncated element")
        values[group << 16 | element] = value


def _read_dataset_uids(stream: BinaryIO, offset: int, transfer_syntax: str) -> dict[int, str]:
    """The UIDs of `_DATASET_TAGS` found at the top level of the dataset at `offset`."""
    uid = UID(transfer_syntax)
    if uid.is_transfer_syntax:
        implicit, little = uid.is_implicit_VR, uid.is_little_endian
        deflated = uid.is_deflated
    else:
        # Unknown (private) syntax: PS3.5 A.4 makes encapsulated syntaxes explicit VR LE.
        implicit, little, deflated = False, True, False
    stream.seek(offset)
    source: BinaryIO = stream
    if deflated:
        # Inflate only the start of the dataset, never the whole of it.
        inflater = zlib.decompressobj(-zlib.MAX_WBITS)
        inflated = bytearray()
        while len(inflated) < _MAX_DEFLATED_HEADER and (chunk := stream.read(_CHUNK_BYTES)):
            inflated += inflater.decompress(chunk, _MAX_DEFLATED_HEADER - len(inflated))
            if inflater.eof:
                break
        source = io.BytesIO(bytes(inflated))

    def past_last_tag(tag: BaseTag, vr: str | None, length: int) -> bool:
        return int(tag) > _LAST_DATASET_TAG

    dataset = read_dataset(
        source,
        implicit,
        little,
        stop_when=past_last_tag,
        specific_tags=list(_DATASET_TAGS),
    )
    found: dict[int, str] = {}
    for tag in _DATASET_TAGS:
        element = dataset.get(tag)
        value = None if element is None else element.value
        if isinstance(value, Sequence) and not isinstance(value, str) and value:
            value = value[0]  # a multi-valued UID is invalid; keep the first value
        if isinstance(value, str) and value.strip():
            found[tag] = value.strip()
    return found


def _read_exact(stream: BinaryIO, length: int) -> bytes:
    """Read `length` bytes, fewer only at the end of the stream."""
    data = stream.read(length)
    if len(data) == length or not data:
        return data
    parts = [data]
    remaining = length - len(data)
    while remaining and (more := stream.read(remaining)):
        parts.append(more)
        remaining -= len(more)
    return b"".join(parts)


def _text(value: bytes | None) -> str:
    """A UI or AE value: ASCII, padded with NUL or space."""
    if not value:
        return ""
    return value.decode("ascii", errors="replace").strip("\x00 ")


def _describe(exc: OSError | StorageError) -> str:
    """A log-safe description: the store's own message, or the errno, never a file path."""
    if isinstance(exc, StorageError):
        return str(exc)
    if exc.errno is not None:
        return f"{type(exc).__name__} ({os.strerror(exc.errno)})"
    return type(exc).__name__
