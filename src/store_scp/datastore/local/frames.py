"""Frames as the datastore keeps them, so that GetImageFrame returns them.

HealthImaging transcodes most transfer syntaxes to HTJ2K lossless with RPCL progression
(1.2.840.10008.1.2.4.202) and keeps JPEG Baseline (.4.50), JPEG 2000 (.4.91), HTJ2K (.4.203),
video and binary segmentations as received (supported-transfer-syntaxes.html). This datastore
does the same when a well-kept HTJ2K *encoder* is installed: `imagecodecs` from PyPI (binary
wheels that bundle OpenJPH; pylibjpeg-openjpeg only decodes HTJ2K, and the `openjphpy` wheel
holds no code). Its OpenJPH writes RPCL codestreams with TLM markers; the number of
decompositions is raised until the base resolution is at most 64 pixels, as PS3.5 10.18
requires. Every encoded frame is decoded again and compared with the source pixels before it is
kept (HealthImaging's pixel data verification); a frame the encoder does not take (floating
point, more than 32 bits) keeps the native form below. Without that codec
(`lossless_format="original"`, or "auto" when imagecodecs is absent) frames are kept in their
original encoding: encapsulated frames exactly as received, native pixel data as little-endian,
pixel-interleaved bytes (recorded as Explicit VR Little Endian, 1.2.840.10008.1.2.1, as
HealthImaging records binary segmentations). `StoredTransferSyntaxUID` always names what was
really stored, and GetImageFrame's content type follows it. Decoding compressed input needs
pydicom's pixel plugins (pylibjpeg with its openjpeg and libjpeg plugins); a frame that cannot
be decoded is a failure line.

Each frame's metadata carries `PixelDataChecksumFromBaseToFullResolution` (a CRC32 of the
decoded full-resolution frame: little-endian samples, interleaved colour; only the full
resolution level is listed), `MinPixelValue`, `MaxPixelValue` and `FrameSizeInBytes`. Frame
files live under `frames/`, one file per frame named by a fresh random id. They are written
without fsync into the job's `PendingFiles` (see `durable`), which makes them durable before the
image set versions that reference them are committed: a file that a crash left partial is never
referenced.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import uuid
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset
from pydicom.encaps import generate_fragments, generate_frames

from store_scp.datastore.rules import (
    _DEFLATED,
    _VIDEO_TRANSFER_SYNTAXES,
    EXPLICIT_VR_LITTLE_ENDIAN,
    HTJ2K_LOSSLESS_RPCL,
)

from .durable import Flusher, PendingFiles, fsync_dir

log = logging.getLogger(__name__)

_SEGMENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"

#: The syntaxes marked with an asterisk in supported-transfer-syntaxes.html: stored as received.
KEPT_AS_RECEIVED_TRANSFER_SYNTAXES = frozenset(
    {"1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.91", "1.2.840.10008.1.2.4.203"}
    | _VIDEO_TRANSFER_SYNTAXES
)

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


# --- HTJ2K ----------------------------------------------------------------------------------


def htj2k_codec() -> Any | None:
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
    return htj2k_codec() is not None


def _decompositions(width: int, height: int) -> int:
    """PS3.5 10.18: enough decompositions for the base resolution to be at most 64 pixels."""
    largest = max(width, height, 1)
    needed = math.ceil(math.log2(largest / 64)) if largest > 64 else 0
    return min(32, max(5, needed))


@dataclass(slots=True)
class StoredFrame:
    frame_id: str
    path: str  # relative to the frames folder
    size: int
    meta: dict[str, Any]


class PixelError(Exception):
    def __init__(self, message: str, server: bool = False) -> None:
        super().__init__(message)
        self.server = server


def _number(value: Any) -> int | float:
    as_float = float(value)
    return int(value) if as_float.is_integer() else as_float


_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC


class FrameStore:
    """Frame files under `frames_dir`; `codec` is imagecodecs when frames become HTJ2K, else
    None (frames keep their original encoding). `fsync=False` skips fsyncs (benchmarks)."""

    def __init__(self, frames_dir: Path, codec: Any | None, *, fsync: bool = True) -> None:
        self.dir = frames_dir
        self.codec = codec
        self.flusher = Flusher(enabled=fsync)
        self._dir = str(frames_dir)
        if not self.dir.is_dir():
            self.dir.mkdir(parents=True, exist_ok=True)
            if fsync:
                fsync_dir(self.dir.parent)

    def read(self, rel: str) -> bytes:
        return (self.dir / rel).read_bytes()

    def pending(self) -> PendingFiles:
        """A job's pending frame files; the frames folder is synced with them (a sub-folder
        created by any job is an entry in it)."""
        return self.flusher.pending([self._dir])

    def close(self) -> None:
        self.flusher.close()

    def write(self, data: bytes, pending: PendingFiles) -> tuple[str, str]:
        """Write a new frame file (not yet durable: `pending` makes it so); (id, relative path)."""
        frame_id = uuid.uuid4().hex
        rel = f"{frame_id[:2]}/{frame_id}"
        folder = os.path.join(self._dir, frame_id[:2])
        path = os.path.join(self._dir, rel)
        try:
            try:
                fd = os.open(path, _NEW_FILE, 0o644)
            except FileNotFoundError:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(folder)
                fd = os.open(path, _NEW_FILE, 0o644)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
            except BaseException:
                os.close(fd)
                raise
        except OSError as exc:
            raise PixelError(f"The frame could not be stored: {exc.strerror or exc}", True) from exc
        pending.add(fd, folder)
        return frame_id, rel

    def encode_htj2k(self, arr: np.ndarray) -> bytes | None:
        codec = self.codec
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
            raise PixelError(f"Pixel data verification failed: {exc}", server=True) from exc
        if check.shape != arr.shape or not np.array_equal(check, arr):
            raise PixelError("Pixel data verification failed: frames differ", server=True)
        return encoded

    def store(self, ds: Dataset, ts: str, pending: PendingFiles) -> tuple[str, list[StoredFrame]]:
        if "PixelData" not in ds:
            return ts, []
        try:
            rows, cols = int(ds.Rows), int(ds.Columns)
            count = int(ds.get("NumberOfFrames", 1) or 1)
        except (AttributeError, TypeError, ValueError) as exc:
            raise PixelError(
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
            frame_id, rel = self.write(video, pending)
            video_meta = {"ID": frame_id, "FrameSizeInBytes": len(video)}
            return ts, [StoredFrame(frame_id, rel, len(video), video_meta)]
        binary_seg = (
            str(ds.get("SOPClassUID", "")) == _SEGMENTATION_STORAGE
            and str(ds.get("SegmentationType", "")).upper() == "BINARY"
        )
        keep = ts in KEPT_AS_RECEIVED_TRANSFER_SYNTAXES or binary_seg or self.codec is None
        originals: Iterator[bytes] | None = None
        if keep and encapsulated:
            originals = generate_frames(ds.PixelData, number_of_frames=count)
        try:
            from pydicom.pixels import iter_pixels
            from pydicom.pixels.utils import pack_bits

            decoded = iter_pixels(ds, raw=True)
            frames: list[StoredFrame] = []
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
                    encoded = self.encode_htj2k(arr_le)
                    if encoded is None:
                        data, this_ts = raw, EXPLICIT_VR_LITTLE_ENDIAN
                    else:
                        data, this_ts = encoded, HTJ2K_LOSSLESS_RPCL
                    if frames and this_ts != stored_ts:
                        raise PixelError("Frames of one instance cannot be stored alike", True)
                    stored_ts = this_ts
                frame_id, rel = self.write(data, pending)
                meta["ID"] = frame_id
                frames.append(StoredFrame(frame_id, rel, len(data), meta))
        except PixelError:
            raise
        except StopIteration as exc:
            raise PixelError("The pixel data holds fewer frames than NumberOfFrames") from exc
        except Exception as exc:
            raise PixelError(f"Failed to decode the pixel data: {exc}") from exc
        return stored_ts, frames
