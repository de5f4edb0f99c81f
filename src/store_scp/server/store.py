"""One C-STORE's dataset on its way from the wire to a durable object.

The dataset's PDV fragments are written to a staging file as they arrive (memory stays bounded
whatever the object size), hashed as they stream, and scanned for the header elements we
validate and route on. Only `finish()` decides the outcome; the caller then commits the
staging file in a worker thread and answers success only after the commit returned.

The one place that maps failures to DIMSE statuses is here: `StoreFailure`.
"""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import os
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..dicom import dimse, uids
from ..dicom.header import HeaderError, HeaderInfo, HeaderScanner, file_meta
from .hashing import FileHasher, HashJob, StreamHash

# Read and write: the hashing thread reads large objects back (see hashing.py).
_STAGING_FLAGS = os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
_staging_counter = itertools.count()
_staging_token = secrets.token_hex(4)


_staging_pid = os.getpid()


def _forked() -> None:
    global _staging_pid
    _staging_pid = os.getpid()


os.register_at_fork(after_in_child=_forked)


def _staging_name() -> str:
    """Unique per process and run without a random draw per object (cheaper than mkstemp).
    Forked receivers share the token and the counter, so the name carries the pid (kept up
    to date at fork, not asked of the kernel per object)."""
    return f"{_staging_pid:x}-{_staging_token}-{next(_staging_counter)}.part"


def open_staging(staging_dir: Path) -> tuple[int, Path]:
    """A new, empty staging file, opened for writing. Raises OSError."""
    path = staging_dir / _staging_name()
    return os.open(path, _STAGING_FLAGS, 0o600), path


def drop_staging(fd: int, path: Path) -> None:
    with contextlib.suppress(OSError):
        os.close(fd)
    with contextlib.suppress(OSError):
        os.unlink(path)


#: UIDs become path components of object keys: digits and dots only, no "..", at most 64.
def key_safe(uid: str) -> bool:
    # String methods rather than a regular expression: three calls per object, on the hot path.
    return (
        0 < len(uid) <= 64
        and uid.isascii()
        and uid.replace(".", "").isdigit()
        and uid[0] != "."
        and uid[-1] != "."
        and ".." not in uid
    )


#: (SOP Instance UID, object size) -> the batch id the object is committed under.
BatchLookup = Callable[[str, int, tuple[str, ...]], str]


class StoreFailure(Exception):
    """A C-STORE that must not be answered with success: the status and an Error Comment
    that never holds patient data."""

    def __init__(self, status: int, comment: str) -> None:
        super().__init__(comment)
        self.status = status
        self.comment = comment


@dataclass(slots=True)
class StoredInstance:
    """What finish() hands to the commit step."""

    staging: Path
    key: str
    batch_id: str
    sop_class_uid: str
    sop_instance_uid: str
    study_instance_uid: str
    series_instance_uid: str
    transfer_syntax_uid: str
    size: int  # Part 10 file size
    dataset_size: int
    sha256: str  # "" while `digest_job` is still hashing
    digest_job: HashJob | None
    header: HeaderInfo
    stripped_meta: int  # bytes of group 0002 elements removed from the start of the dataset


def _load_sync_file_range() -> Callable[[int], None] | None:
    """sync_file_range(2) (Linux) through ctypes: start writing dirty pages back without
    waiting, so that the fsync at the end of a large object has little left to flush."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.sync_file_range
    except (OSError, AttributeError):
        return None
    fn.argtypes = (ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong, ctypes.c_uint)
    fn.restype = ctypes.c_int
    write = 2  # SYNC_FILE_RANGE_WRITE

    def start_writeback(fd: int) -> None:
        fn(fd, 0, 0, write)  # the whole file; an error only means no head start

    return start_writeback


start_writeback = _load_sync_file_range()
#: Early writebacks: the first after this many dataset bytes (so that even a 0.5 MB object's
#: disk write overlaps its receipt), then at doubling distances up to WRITEBACK_EVERY apart
#: (each call walks the file's dirty pages: a 50 MB object needs a few, not hundreds).
WRITEBACK_FIRST = 256 * 1024
WRITEBACK_EVERY = 8 * 1024 * 1024


def next_writeback(written: int) -> int:
    """Where the next early writeback falls, once one was started after `written` bytes."""
    return written + min(written, WRITEBACK_EVERY)


def writeback_due(fd: int, written: int, at: int) -> int:
    """Start the early writeback of `fd` if its `written` bytes reached `at` (-1: never);
    returns where the next one falls."""
    if 0 < at <= written and start_writeback is not None:
        start_writeback(fd)
        return next_writeback(written)
    return at


def _write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


class StoreOperation:
    """Receives one dataset. Never raises from feed(); finish() raises StoreFailure."""

    def __init__(
        self,
        *,
        staging_dir: Path,
        sop_class_uid: str,
        sop_instance_uid: str,
        transfer_syntax_uid: str,
        calling_ae: str,
        max_object_size: int,
        refuse: StoreFailure | None = None,
        staging: tuple[int, Path] | None = None,
        early_writeback: bool = False,
        hasher: FileHasher | None = None,
    ) -> None:
        """`staging`: a staging file opened in advance (see open_staging), else one is made."""
        self.started = time.monotonic()
        self.sop_class_uid = sop_class_uid
        self.sop_instance_uid = sop_instance_uid
        self.transfer_syntax_uid = transfer_syntax_uid
        self.max_object_size = max_object_size
        self.received = 0
        self.failure = refuse
        self._fd = -1
        self.staging: Path | None = None
        self._hash = StreamHash(hasher)
        self._pending: list[bytes | memoryview] = []  # bytes held until group 0002 is known
        self._meta = b""  # the Part 10 header, written together with the first dataset bytes
        self._meta_len = 0
        self._written = 0
        self._writeback_at = WRITEBACK_FIRST if early_writeback and start_writeback else -1
        ts = uids.TRANSFER_SYNTAXES.get(transfer_syntax_uid)
        if ts is None and self.failure is None:
            self.failure = StoreFailure(dimse.CANNOT_UNDERSTAND, "transfer syntax not supported")
        self._scanner = HeaderScanner(ts.explicit_vr, ts.little_endian, ts.deflated) if ts else None
        self._deflated = bool(ts and ts.deflated)
        if self.failure is None and not key_safe(sop_instance_uid):
            self.failure = StoreFailure(dimse.CANNOT_UNDERSTAND, "invalid SOP Instance UID")
        if self.failure is not None:
            if staging is not None:
                drop_staging(*staging)
            return
        try:
            self._fd, self.staging = staging if staging is not None else open_staging(staging_dir)
        except OSError as exc:
            self._fail_io(exc)
            return
        self._meta = file_meta(
            sop_class_uid,
            sop_instance_uid,
            transfer_syntax_uid,
            uids.IMPLEMENTATION_CLASS_UID,
            uids.IMPLEMENTATION_VERSION_NAME,
            calling_ae,
        )
        self._meta_len = len(self._meta)

    @property
    def failed(self) -> bool:
        return self.failure is not None

    def _fail_io(self, exc: OSError) -> None:
        name = os.strerror(exc.errno) if exc.errno else type(exc).__name__
        self.failure = StoreFailure(dimse.OUT_OF_RESOURCES, f"cannot write staging file: {name}")
        self.discard()

    def feed(self, data: bytes | memoryview) -> None:
        self.received += len(data)
        if self.failure is not None:
            return  # the rest of the stream is read and dropped
        if self.received > self.max_object_size:
            self.failure = StoreFailure(
                dimse.OUT_OF_RESOURCES, f"object larger than {self.max_object_size} bytes"
            )
            self.discard()
            return
        scanner = self._scanner
        assert scanner is not None
        was_known = scanner.file_meta_known
        try:
            if not scanner.done:
                scanner.feed(data)
        except HeaderError as exc:
            self.failure = StoreFailure(dimse.CANNOT_UNDERSTAND, f"data set header: {exc}")
            self.discard()
            return
        if was_known:
            self._write(data)
        elif scanner.file_meta_known:
            # The start of the dataset is now known: write what came, less any group 0002.
            pending, self._pending = self._pending, []
            self._write_from(scanner.info.file_meta_prefix, [*pending, data])
        else:
            self._pending.append(bytes(data))  # `data` may be a reused read buffer

    def _flush_pending(self, skip: int) -> None:
        pending, self._pending = self._pending, []
        self._write_from(skip, pending)

    def _write_from(self, skip: int, chunks: list[bytes | memoryview]) -> None:
        """Write the dataset `chunks`, leaving out their first `skip` bytes (group 0002)."""
        if skip and self._deflated:
            # Group 0002 inside a deflated stream cannot be cut out without re-encoding.
            self.failure = StoreFailure(
                dimse.CANNOT_UNDERSTAND_FILE_META_IN_DATASET,
                "data set carries File Meta (0002) elements",
            )
            self.discard()
            return
        for chunk in chunks:
            if skip >= len(chunk):
                skip -= len(chunk)
                continue
            self._write(memoryview(chunk)[skip:] if skip else chunk)
            skip = 0

    def _write(self, data: bytes | memoryview) -> None:
        try:
            if self._meta:
                # One system call for the header and the first bytes of the dataset.
                n = os.writev(self._fd, (self._meta, data))
                if n < self._meta_len + len(data):
                    _write_all(self._fd, (self._meta + bytes(data))[n:])
                self._meta = b""
            else:
                _write_all(self._fd, data)
        except OSError as exc:
            self._fail_io(exc)
            return
        self._written += len(data)
        self._hash.update(data, self._fd, self._meta_len + self._written)
        self._writeback_at = writeback_due(self._fd, self._written, self._writeback_at)

    def finish(self, batch_for: BatchLookup) -> StoredInstance:
        """The last fragment has arrived: validate and name the object."""
        scanner = self._scanner
        if self.failure is None and scanner is not None:
            info = scanner.finish()
            if self._pending:
                self._flush_pending(info.file_meta_prefix)
        if self.failure is not None:
            raise self.failure
        assert scanner is not None and self.staging is not None
        info = scanner.info
        if info.sop_class_uid != self.sop_class_uid:
            self._refuse(dimse.DATASET_DOES_NOT_MATCH_SOP_CLASS, "SOP Class UID differs")
        if info.sop_instance_uid != self.sop_instance_uid:
            self._refuse(dimse.DATASET_DOES_NOT_MATCH_SOP_CLASS, "SOP Instance UID differs")
        if self._meta:  # an empty dataset: the header alone
            try:
                _write_all(self._fd, self._meta)
            except OSError as exc:
                self._fail_io(exc)
                raise self.failure from None  # type: ignore[misc]
            self._meta = b""
        study = info.study_instance_uid if key_safe(info.study_instance_uid) else "_"
        series = info.series_instance_uid if key_safe(info.series_instance_uid) else "_"
        size = self._meta_len + self._written
        digest = self._hash.end(size)
        batch_id = batch_for(self.sop_instance_uid, size, (study, f"{study}/{series}"))
        return StoredInstance(
            staging=self.staging,
            key=f"{batch_id}/{study}/{series}/{self.sop_instance_uid}.dcm",
            batch_id=batch_id,
            sop_class_uid=self.sop_class_uid,
            sop_instance_uid=self.sop_instance_uid,
            study_instance_uid=info.study_instance_uid,
            series_instance_uid=info.series_instance_uid,
            transfer_syntax_uid=self.transfer_syntax_uid,
            size=size,
            dataset_size=self._written,
            sha256=digest or "",
            digest_job=self._hash.job if digest is None else None,
            header=info,
            stripped_meta=info.file_meta_prefix,
        )

    def _refuse(self, status: int, comment: str) -> None:
        self.failure = StoreFailure(status, comment)
        self.discard()
        raise self.failure

    def close_file(self) -> None:
        """Close our descriptor of the staging file. The commit does not need it closed
        (it fsyncs through its own descriptor), so this runs after the response, off the
        latency path. Idempotent."""
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = -1

    def discard(self) -> None:
        """Drop the staging file; nothing of this object is ever visible. Idempotent."""
        self._hash.cancel()
        self.close_file()
        if self.staging is not None:
            with contextlib.suppress(OSError):
                os.unlink(self.staging)
            self.staging = None
