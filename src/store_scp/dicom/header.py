"""Read the few header elements we route and validate on, while the dataset streams past.

`HeaderScanner` is fed the dataset bytes fragment by fragment, exactly as they arrive. It walks
the elements (explicit or implicit VR, little or big endian, deflated), skips values it does not
need without holding them in memory (sequences of undefined length are walked item by item),
and stops once the top level has passed (0020,000E). It keeps only:
the SOP Class/Instance, Study and Series UIDs, the lengths (never the values) of a few elements
HealthImaging limits, and how many leading bytes are File Meta (group 0002) elements.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass, field

SOP_CLASS_UID = 0x00080016
SOP_INSTANCE_UID = 0x00080018
STUDY_INSTANCE_UID = 0x0020000D
SERIES_INSTANCE_UID = 0x0020000E
_LAST_NEEDED = SERIES_INSTANCE_UID
_WANTED = {SOP_CLASS_UID, SOP_INSTANCE_UID, STUDY_INSTANCE_UID, SERIES_INSTANCE_UID}

#: Elements HealthImaging constrains, by tag: (keyword, maximum length in bytes). Only their
#: lengths are kept, so that a warning can name the element without showing its value.
LENGTH_LIMITS: dict[int, tuple[str, int]] = {
    0x00080020: ("StudyDate", 18),
    0x00080050: ("AccessionNumber", 256),
    0x00081030: ("StudyDescription", 256),
    0x00100010: ("PatientName", 256),
    0x00100020: ("PatientID", 256),
    0x00100030: ("PatientBirthDate", 18),
    0x00100040: ("PatientSex", 16),
}

#: Every top-level element whose value (or length) is read.
_READ = _WANTED | set(LENGTH_LIMITS)

_ITEM = 0xFFFEE000
_ITEM_DELIMITER = 0xFFFEE00D
_SEQUENCE_DELIMITER = 0xFFFEE0DD
_UNDEFINED = 0xFFFFFFFF
_LONG_VRS = {
    b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"
}  # fmt: skip
#: The 2-byte-length VRs of PS3.5 Table 7.1-2, checked before the general letters test.
_SHORT_VRS = {
    b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FD", b"FL", b"IS", b"LO", b"LT", b"PN",
    b"SH", b"SL", b"SS", b"ST", b"TM", b"UI", b"UL", b"US"
}  # fmt: skip
#: How many bytes of header we are willing to hold while looking for the UIDs.
MAX_PENDING = 64 * 1024
#: Values we read (UIDs, limited elements) are short; a longer one is measured, not read.
_MAX_KEPT_VALUE = 4096
#: Inflated bytes per step, and the most a deflated header may inflate to before the UIDs.
_INFLATE_STEP = 64 * 1024
MAX_INFLATED_HEADER = 256 * 1024 * 1024


class HeaderError(Exception):
    """The dataset's header cannot be parsed."""


@dataclass(slots=True)
class HeaderInfo:
    sop_class_uid: str = ""
    sop_instance_uid: str = ""
    study_instance_uid: str = ""
    series_instance_uid: str = ""
    #: Bytes at the start of the dataset that are group 0002 elements (a sender's mistake).
    file_meta_prefix: int = 0
    #: Elements over HealthImaging's limits: keyword -> length in bytes.
    over_limits: dict[str, int] = field(default_factory=dict)


class HeaderScanner:
    def __init__(self, explicit_vr: bool, little_endian: bool, deflated: bool = False) -> None:
        self.info = HeaderInfo()
        self.done = False
        self._explicit = explicit_vr
        self._endian = "<" if little_endian else ">"
        # One unpack per element header: tag and 4-byte length (implicit VR, items), or tag,
        # VR and 2-byte length (explicit VR).
        self._implicit_header = struct.Struct(self._endian + "HHL")
        self._explicit_header = struct.Struct(self._endian + "HH2sH")
        self._u32 = struct.Struct(self._endian + "L")
        self._inflater = zlib.decompressobj(-zlib.MAX_WBITS) if deflated else None
        self._inflated = 0
        self._buf = bytearray()
        self._skip = 0  # value bytes still to skip before the next header
        self._offset = 0  # stream offset of _buf[0]
        self._meta_open = True  # still inside leading group 0002 elements
        # One entry per open undefined-length sequence or item: is it explicit VR? (A UN
        # sequence of undefined length is implicit VR inside, PS3.5 6.2.2.) Sequences of
        # defined length are skipped whole, so they never open a level.
        self._levels: list[bool] = []

    @property
    def file_meta_known(self) -> bool:
        """Whether file_meta_prefix is final (the first non-0002 element has been seen)."""
        return self.done or not self._meta_open

    def feed(self, data: bytes | memoryview) -> None:
        if self.done:
            return
        if self._inflater is None:
            self._consume(data)
            return
        # Inflate in bounded steps: a small deflated fragment can expand a thousandfold.
        tail: bytes | memoryview = data
        while tail and not self.done:
            try:
                out = self._inflater.decompress(tail, _INFLATE_STEP)
            except zlib.error as exc:
                raise HeaderError(f"deflated dataset cannot be inflated: {exc}") from None
            rest = self._inflater.unconsumed_tail
            self._inflated += len(out)
            if self._inflated > MAX_INFLATED_HEADER:
                raise HeaderError("deflated dataset header too large to parse")
            if out:
                self._consume(out)
            elif len(rest) == len(tail):
                break  # zlib wants more input
            tail = rest

    def _consume(self, data: bytes | memoryview) -> None:
        if self._skip:
            n = min(self._skip, len(data))
            self._skip -= n
            self._offset += n
            data = data[n:]
        if not data:
            return
        self._buf += data
        self._walk()
        if not self.done and len(self._buf) > MAX_PENDING:
            raise HeaderError("dataset header element too large to parse")

    def finish(self) -> HeaderInfo:
        """The dataset is complete: whatever was not found is missing."""
        self.done = True
        self._meta_open = False
        return self.info

    def _walk(self) -> None:
        buf, pos = self._buf, 0
        levels = self._levels
        while True:
            if len(buf) - pos < 8:
                break
            explicit = levels[-1] if levels else self._explicit
            if explicit:
                group, elem, vr, length = self._explicit_header.unpack_from(buf, pos)
            else:
                group, elem, length = self._implicit_header.unpack_from(buf, pos)
                vr = b""
            tag = (group << 16) | elem
            header = 8
            if group == 0xFFFE:  # item and delimiters: always 4-byte length, no VR
                if explicit:
                    (length,) = self._u32.unpack_from(buf, pos + 4)
                if tag == _ITEM:
                    if not levels:
                        raise HeaderError("item outside a sequence")
                    if length == _UNDEFINED:
                        levels.append(explicit)
                        pos += header
                        continue
                    vr = b""
                elif tag in (_ITEM_DELIMITER, _SEQUENCE_DELIMITER):
                    if not levels:
                        raise HeaderError("delimiter outside a sequence")
                    levels.pop()
                    pos += header
                    continue
                else:
                    raise HeaderError(f"unexpected tag ({group:04X},{elem:04X})")
            elif explicit:
                if vr in _LONG_VRS:
                    if len(buf) - pos < 12:
                        break
                    (length,) = self._u32.unpack_from(buf, pos + 8)
                    header = 12
                elif vr in _SHORT_VRS or (vr.isalpha() and vr.isupper()):
                    pass  # the 2-byte length is unpacked
                elif self._offset + pos == 0:
                    # Leniency as in DCMTK and pydicom: a dataset that starts with no VR is
                    # implicit VR, whatever was negotiated.
                    self._explicit = False
                    continue
                else:
                    raise HeaderError(f"invalid VR at ({group:04X},{elem:04X})")
            if not levels:
                if group != 0x0002 and self._meta_open:
                    self._meta_open = False
                    self.info.file_meta_prefix = self._offset + pos
                if tag > _LAST_NEEDED:
                    self.done = True
                    break
            if length == _UNDEFINED:
                # A sequence (or, explicit only, encapsulated data) of undefined length: walk in.
                if tag == 0x7FE00010 or group == 0xFFFE:
                    raise HeaderError("undefined length where it is not allowed")
                levels.append(explicit and vr != b"UN")
                pos += header
                continue
            if tag in _READ and not levels and length > _MAX_KEPT_VALUE:
                # Too long to be valid: a limited element is recorded by its length, a UID
                # is left unset (the object then fails validation); either way it is skipped.
                if tag in LENGTH_LIMITS:
                    keyword, _limit = LENGTH_LIMITS[tag]
                    self.info.over_limits[keyword] = length
            elif tag in _READ and not levels:
                if len(buf) - pos < header + length:
                    break  # wait for the whole (short) value
                raw = bytes(buf[pos + header : pos + header + length])
                self._keep(tag, raw)
                pos += header + length
                continue
            # Skip a value we do not need, even if it has not arrived yet.
            available = len(buf) - pos - header
            if length <= available:
                pos += header + length
            else:
                self._skip = length - available
                pos = len(buf)
                break
        self._offset += pos
        del buf[:pos]

    def _keep(self, tag: int, raw: bytes) -> None:
        if tag in LENGTH_LIMITS:
            keyword, limit = LENGTH_LIMITS[tag]
            length = len(raw.rstrip(b" \x00"))
            if length > limit:
                self.info.over_limits[keyword] = length
            return
        value = raw.decode("latin-1").strip(" \x00")
        if tag == SOP_CLASS_UID:
            self.info.sop_class_uid = value
        elif tag == SOP_INSTANCE_UID:
            self.info.sop_instance_uid = value
        elif tag == STUDY_INSTANCE_UID:
            self.info.study_instance_uid = value
        elif tag == SERIES_INSTANCE_UID:
            self.info.series_instance_uid = value


# ---------------------------------------------------------------------------------------------
# Part 10 file meta


def _element(group: int, elem: int, vr: bytes, value: bytes) -> bytes:
    if vr in (b"OB",):
        return struct.pack("<HH2s2xL", group, elem, vr, len(value)) + value
    return struct.pack("<HH2sH", group, elem, vr, len(value)) + value


def _even(raw: bytes, pad: bytes) -> bytes:
    return raw + pad if len(raw) % 2 else raw


def file_meta(
    sop_class_uid: str,
    sop_instance_uid: str,
    transfer_syntax_uid: str,
    implementation_class_uid: str,
    implementation_version_name: str,
    source_ae_title: str,
) -> bytes:
    """Preamble, "DICM" and the File Meta Information (PS3.10 7.1), explicit VR little endian."""
    body = b"".join(
        (
            _element(0x0002, 0x0001, b"OB", b"\x00\x01"),
            _element(0x0002, 0x0002, b"UI", _even(sop_class_uid.encode(), b"\x00")),
            _element(0x0002, 0x0003, b"UI", _even(sop_instance_uid.encode(), b"\x00")),
            _element(0x0002, 0x0010, b"UI", _even(transfer_syntax_uid.encode(), b"\x00")),
            _element(0x0002, 0x0012, b"UI", _even(implementation_class_uid.encode(), b"\x00")),
            _element(0x0002, 0x0013, b"SH", _even(implementation_version_name.encode(), b" ")),
            _element(0x0002, 0x0016, b"AE", _even(source_ae_title.encode("latin-1"), b" ")),
        )
    )
    group_length = _element(0x0002, 0x0000, b"UL", struct.pack("<L", len(body)))
    return bytes(128) + b"DICM" + group_length + body
