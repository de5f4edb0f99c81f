"""The UID tables that association negotiation accepts from.

Acceptance is decided by looking a UID up in these explicit tables, never by matching
names at run time. Both tables are written out as literals (the standard's text, checked
against pydicom's UID dictionary by the unit tests), so what store-scp accepts changes only
when this file changes.

- ``TRANSFER_SYNTAXES``: the transfer syntaxes of PS3.6 Annex A, current and retired.
  The refused ones (JPIP Referenced, SMPTE ST 2110, and retired encodings that never
  carried a data set over the network) are in ``REJECTED_TRANSFER_SYNTAXES`` with the
  reason a log line gives.
- ``STORAGE_SOP_CLASSES``: the SOP classes of the Storage Service Class (PS3.4 Annex B.5),
  including the retired ones that old modalities still send. Not included: Storage
  Commitment, Media Storage Directory Storage (a media object, never sent by C-STORE),
  the non-patient objects of the Non-Patient Object Storage Service Class (PS3.4 Annex GG:
  Hanging Protocol, Color Palette, Implant Templates, Defined Procedure Protocols,
  Protocol Approval, Inventory), and the security-screening (DICOS) and non-destructive
  testing (DICONDE) SOP classes that PS3.6 registers for other standards.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from store_scp import __version__

__all__ = [
    "APPLICATION_CONTEXT_NAME",
    "DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN",
    "EXPLICIT_VR_BIG_ENDIAN",
    "EXPLICIT_VR_LITTLE_ENDIAN",
    "IMPLEMENTATION_CLASS_UID",
    "IMPLEMENTATION_VERSION_NAME",
    "IMPLICIT_VR_LITTLE_ENDIAN",
    "REJECTED_TRANSFER_SYNTAXES",
    "STORAGE_SOP_CLASSES",
    "TRANSFER_SYNTAXES",
    "UID_PATTERN",
    "VERIFICATION_SOP_CLASS",
    "TransferSyntax",
    "is_storage_sop_class",
    "is_valid_uid",
    "sop_class_name",
]

# --- Identification -------------------------------------------------------------------

APPLICATION_CONTEXT_NAME: Final = "1.2.840.10008.3.1.1.1"
VERIFICATION_SOP_CLASS: Final = "1.2.840.10008.1.1"

# The project's own UID: the "2.25." root (ISO/IEC 9834-8, PS3.5 B.2) followed by the
# decimal value of a UUID generated once for store-scp. Never change it: peers and stored
# files identify this implementation by it.
IMPLEMENTATION_CLASS_UID: Final = "2.25.75996766287081372395430292410336412748"

# PS3.7 D.3.3.2: 1 to 16 characters. "0.1.0" -> "STORE_SCP_010".
IMPLEMENTATION_VERSION_NAME: Final = (
    "STORE_SCP_" + "".join(ch for ch in __version__ if ch.isdigit())
)[:16]

# --- UID syntax (PS3.5 9.1) -------------------------------------------------------------

# Components of digits separated by single dots; a component never starts with 0 unless
# it is exactly "0". Length (1..64) is checked separately.
UID_PATTERN: Final = re.compile(r"(?:0|[1-9][0-9]*)(?:\.(?:0|[1-9][0-9]*))*")
_UID_MAX_LENGTH: Final = 64


def is_valid_uid(uid: str) -> bool:
    """Return True if ``uid`` is a well-formed UID per PS3.5 9.1."""
    return 0 < len(uid) <= _UID_MAX_LENGTH and UID_PATTERN.fullmatch(uid) is not None


# --- Transfer syntaxes (PS3.6 Annex A, encodings defined in PS3.5) ------------------------


@dataclass(frozen=True, slots=True)
class TransferSyntax:
    """One transfer syntax and how its data set is encoded.

    ``lossless`` is True for uncompressed encodings and for compressions that can only be
    lossless. A syntax that allows lossy coding ("Lossless or Lossy", near-lossless, video)
    is marked lossless=False even if a given object happens to be coded losslessly.
    ``deflated`` means the whole data set stream is deflated (PS3.5 A.5); compression of
    pixel data inside encapsulated fragments does not count.
    """

    uid: str
    name: str
    explicit_vr: bool
    little_endian: bool
    deflated: bool
    encapsulated: bool
    lossless: bool
    retired: bool


IMPLICIT_VR_LITTLE_ENDIAN: Final = "1.2.840.10008.1.2"
EXPLICIT_VR_LITTLE_ENDIAN: Final = "1.2.840.10008.1.2.1"
EXPLICIT_VR_BIG_ENDIAN: Final = "1.2.840.10008.1.2.2"
DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN: Final = "1.2.840.10008.1.2.1.99"


def _native(
    uid: str,
    name: str,
    *,
    explicit_vr: bool = True,
    little_endian: bool = True,
    deflated: bool = False,
    retired: bool = False,
) -> TransferSyntax:
    """A syntax whose pixel data, if any, is native (not encapsulated)."""
    return TransferSyntax(
        uid=uid,
        name=name,
        explicit_vr=explicit_vr,
        little_endian=little_endian,
        deflated=deflated,
        encapsulated=False,
        lossless=True,
        retired=retired,
    )


def _encapsulated(uid: str, name: str, *, lossless: bool, retired: bool = False) -> TransferSyntax:
    """An encapsulated syntax: Explicit VR Little Endian with pixel data in fragments."""
    return TransferSyntax(
        uid=uid,
        name=name,
        explicit_vr=True,
        little_endian=True,
        deflated=False,
        encapsulated=True,
        lossless=lossless,
        retired=retired,
    )


def _index_syntaxes(syntaxes: Iterable[TransferSyntax]) -> dict[str, TransferSyntax]:
    table: dict[str, TransferSyntax] = {}
    for syntax in syntaxes:
        if syntax.uid in table:
            raise ValueError(f"duplicate transfer syntax {syntax.uid}")
        table[syntax.uid] = syntax
    return table


# Names follow PS3.6 (as pydicom spells them), with "(Retired)" for retired syntaxes.
TRANSFER_SYNTAXES: Final[dict[str, TransferSyntax]] = _index_syntaxes(
    (
        # Uncompressed
        _native(IMPLICIT_VR_LITTLE_ENDIAN, "Implicit VR Little Endian", explicit_vr=False),
        _native(EXPLICIT_VR_LITTLE_ENDIAN, "Explicit VR Little Endian"),
        _encapsulated(
            "1.2.840.10008.1.2.1.98",
            "Encapsulated Uncompressed Explicit VR Little Endian",
            lossless=True,
        ),
        _native(
            DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN, "Deflated Explicit VR Little Endian", deflated=True
        ),
        _native(
            EXPLICIT_VR_BIG_ENDIAN,
            "Explicit VR Big Endian (Retired)",
            little_endian=False,
            retired=True,
        ),
        # JPEG (ISO/IEC 10918-1): DCT processes are lossy, processes 14, 15, 28, 29 lossless
        _encapsulated("1.2.840.10008.1.2.4.50", "JPEG Baseline (Process 1)", lossless=False),
        _encapsulated("1.2.840.10008.1.2.4.51", "JPEG Extended (Process 2 and 4)", lossless=False),
        _encapsulated(
            "1.2.840.10008.1.2.4.52",
            "JPEG Extended (Process 3 and 5) (Retired)",
            lossless=False,
            retired=True,
        ),
        _encapsulated(
            "1.2.840.10008.1.2.4.53",
            "JPEG Spectral Selection, Non-Hierarchical (Process 6 and 8) (Retired)",
            lossless=False,
            retired=True,
        ),
        _encapsulated(
            "1.2.840.10008.1.2.4.54",
            "JPEG Spectral Selection, Non-Hierarchical (Process 7 and 9) (Retired)",
            lossless=False,
            retired=True,
        ),
        _encapsulated(
            "1.2.840.10008.1.2.4.55",
            "JPEG Full Progression, Non-Hierarchical (Process 10 and 12) (Retired)",
            lossless=False,
            retired=True,
        ),
        _encapsulated(
            "1.2.840.10008.1.2.4.56",
            "JPEG Full Progression, Non-Hierarchical (Process 11 and 13) (Retired)",
            lossless=False,
            retired=True,
        ),
        _encapsulated(
            "1.2.840.10008.1.2.4.57",
            "JPEG Lossless, Non-Hierarchical (Process 14)",
            lossless=True,
        ),
        _encapsulated(
            "1.2.840.10008.1.2.4.58",
            "JPEG Lossless, Non-Hierarchical (Process 15) (Retired)",
            lossless=True,
            retired=True,
        ),
        _encapsulated(
            "1.2.840.10008.1.2.4.59",
            "JPEG Extended, Hierarchical (Process 16 and 18) (Retired)",
            lossless=False,
            retired=True,
        ),
        _encapsulated(
            "1.2.840.10008.1.2.4.60",
            "JPEG Extended, Hierarchical (Process 17 and 19) (Retired)",
            lossless=False,
            retired=True,
        ),
        _encapsulated(
            "1.2.840.10008.1.2.4.61",
            "JPEG Spectral Selection, Hierarchical (Process 20 and 22) (Retired)",
            lossless=False,
            retired=True,
        ),
        _encapsulated(
            "1.2.840.10008.1.2.4.62",
            "JPEG Spectral Selection, Hierarchical (Process 21 and 23) (Retired)",
            lossless=False,
            retired=True,
        ),
        _encapsulated(
            "1.2.840.10008.1.2.4.63",
            "JPEG Full Progression, Hierarchical (Process 24 and 26) (Retired)",
            lossless=False,
            retired=True,
        ),
        _encapsulated(
            "1.2.840.10008.1.2.4.64",
            "JPEG Full Progression, Hierarchical (Process 25 and 27) (Retired)",
            lossless=False,
            retired=True,
        ),
        _encapsulated(
            "1.2.840.10008.1.2.4.65",
            "JPEG Lossless, Hierarchical (Process 28) (Retired)",
            lossless=True,
            retired=True,
        ),
        _encapsulated(
            "1.2.840.10008.1.2.4.66",
            "JPEG Lossless, Hierarchical (Process 29) (Retired)",
            lossless=True,
            retired=True,
        ),
        _encapsulated(
            "1.2.840.10008.1.2.4.70",
            "JPEG Lossless, Non-Hierarchical, First-Order Prediction "
            "(Process 14 [Selection Value 1])",
            lossless=True,
        ),
        # JPEG-LS
        _encapsulated(
            "1.2.840.10008.1.2.4.80", "JPEG-LS Lossless Image Compression", lossless=True
        ),
        _encapsulated(
            "1.2.840.10008.1.2.4.81",
            "JPEG-LS Lossy (Near-Lossless) Image Compression",
            lossless=False,
        ),
        # JPEG 2000
        _encapsulated(
            "1.2.840.10008.1.2.4.90",
            "JPEG 2000 Image Compression (Lossless Only)",
            lossless=True,
        ),
        _encapsulated("1.2.840.10008.1.2.4.91", "JPEG 2000 Image Compression", lossless=False),
        _encapsulated(
            "1.2.840.10008.1.2.4.92",
            "JPEG 2000 Part 2 Multi-component Image Compression (Lossless Only)",
            lossless=True,
        ),
        _encapsulated(
            "1.2.840.10008.1.2.4.93",
            "JPEG 2000 Part 2 Multi-component Image Compression",
            lossless=False,
        ),
        # MPEG-2, MPEG-4 AVC/H.264, HEVC/H.265 video: always lossy
        _encapsulated("1.2.840.10008.1.2.4.100", "MPEG2 Main Profile / Main Level", lossless=False),
        _encapsulated(
            "1.2.840.10008.1.2.4.100.1",
            "Fragmentable MPEG2 Main Profile / Main Level",
            lossless=False,
        ),
        _encapsulated("1.2.840.10008.1.2.4.101", "MPEG2 Main Profile / High Level", lossless=False),
        _encapsulated(
            "1.2.840.10008.1.2.4.101.1",
            "Fragmentable MPEG2 Main Profile / High Level",
            lossless=False,
        ),
        _encapsulated(
            "1.2.840.10008.1.2.4.102",
            "MPEG-4 AVC/H.264 High Profile / Level 4.1",
            lossless=False,
        ),
        _encapsulated(
            "1.2.840.10008.1.2.4.102.1",
            "Fragmentable MPEG-4 AVC/H.264 High Profile / Level 4.1",
            lossless=False,
        ),
        _encapsulated(
            "1.2.840.10008.1.2.4.103",
            "MPEG-4 AVC/H.264 BD-compatible High Profile / Level 4.1",
            lossless=False,
        ),
        _encapsulated(
            "1.2.840.10008.1.2.4.103.1",
            "Fragmentable MPEG-4 AVC/H.264 BD-compatible High Profile / Level 4.1",
            lossless=False,
        ),
        _encapsulated(
            "1.2.840.10008.1.2.4.104",
            "MPEG-4 AVC/H.264 High Profile / Level 4.2 For 2D Video",
            lossless=False,
        ),
        _encapsulated(
            "1.2.840.10008.1.2.4.104.1",
            "Fragmentable MPEG-4 AVC/H.264 High Profile / Level 4.2 For 2D Video",
            lossless=False,
        ),
        _encapsulated(
            "1.2.840.10008.1.2.4.105",
            "MPEG-4 AVC/H.264 High Profile / Level 4.2 For 3D Video",
            lossless=False,
        ),
        _encapsulated(
            "1.2.840.10008.1.2.4.105.1",
            "Fragmentable MPEG-4 AVC/H.264 High Profile / Level 4.2 For 3D Video",
            lossless=False,
        ),
        _encapsulated(
            "1.2.840.10008.1.2.4.106",
            "MPEG-4 AVC/H.264 Stereo High Profile / Level 4.2",
            lossless=False,
        ),
        _encapsulated(
            "1.2.840.10008.1.2.4.106.1",
            "Fragmentable MPEG-4 AVC/H.264 Stereo High Profile / Level 4.2",
            lossless=False,
        ),
        _encapsulated(
            "1.2.840.10008.1.2.4.107", "HEVC/H.265 Main Profile / Level 5.1", lossless=False
        ),
        _encapsulated(
            "1.2.840.10008.1.2.4.108", "HEVC/H.265 Main 10 Profile / Level 5.1", lossless=False
        ),
        # JPEG XL. JPEG Recompression re-codes an existing (lossy) JPEG bit stream, so the
        # pixels are those of a lossy JPEG: not marked lossless.
        _encapsulated("1.2.840.10008.1.2.4.110", "JPEG XL Lossless", lossless=True),
        _encapsulated("1.2.840.10008.1.2.4.111", "JPEG XL JPEG Recompression", lossless=False),
        _encapsulated("1.2.840.10008.1.2.4.112", "JPEG XL", lossless=False),
        # High-Throughput JPEG 2000
        _encapsulated(
            "1.2.840.10008.1.2.4.201",
            "High-Throughput JPEG 2000 Image Compression (Lossless Only)",
            lossless=True,
        ),
        _encapsulated(
            "1.2.840.10008.1.2.4.202",
            "High-Throughput JPEG 2000 with RPCL Options Image Compression (Lossless Only)",
            lossless=True,
        ),
        _encapsulated(
            "1.2.840.10008.1.2.4.203",
            "High-Throughput JPEG 2000 Image Compression",
            lossless=False,
        ),
        # RLE
        _encapsulated("1.2.840.10008.1.2.5", "RLE Lossless", lossless=True),
        # Each frame deflated in its own fragment (PS3.5 A.4.13); the data set is not.
        _encapsulated("1.2.840.10008.1.2.8.1", "Deflated Image Frame Compression", lossless=True),
    )
)

# Registered in PS3.6 Annex A as transfer syntaxes but refused; the value is the reason a
# log line gives when a presentation context offers only these.
REJECTED_TRANSFER_SYNTAXES: Final[dict[str, str]] = {
    "1.2.840.10008.1.2.4.94": (
        "JPIP Referenced: pixel data is a JPIP URL to fetch later, not part of the object"
    ),
    "1.2.840.10008.1.2.4.95": (
        "JPIP Referenced Deflate: pixel data is a JPIP URL to fetch later, not part of the object"
    ),
    "1.2.840.10008.1.2.4.204": (
        "JPIP HTJ2K Referenced: pixel data is a JPIP URL to fetch later, not part of the object"
    ),
    "1.2.840.10008.1.2.4.205": (
        "JPIP HTJ2K Referenced Deflate: pixel data is a JPIP URL to fetch later, "
        "not part of the object"
    ),
    "1.2.840.10008.1.2.7.1": (
        "SMPTE ST 2110-20 Uncompressed Progressive Active Video: real-time streaming, "
        "not for C-STORE"
    ),
    "1.2.840.10008.1.2.7.2": (
        "SMPTE ST 2110-20 Uncompressed Interlaced Active Video: real-time streaming, "
        "not for C-STORE"
    ),
    "1.2.840.10008.1.2.7.3": (
        "SMPTE ST 2110-30 PCM Digital Audio: real-time streaming, not for C-STORE"
    ),
    "1.2.840.10008.1.2.6.1": (
        "RFC 2557 MIME encapsulation (Retired): a MIME packaging for web access, "
        "not a data set encoding for the network"
    ),
    "1.2.840.10008.1.2.6.2": (
        "XML Encoding (Retired): an XML rendering for web access, "
        "not a data set encoding for the network"
    ),
    "1.2.840.10008.1.20": (
        "Papyrus 3 Implicit VR Little Endian (Retired): a legacy file format, "
        "never a network transfer syntax"
    ),
}

# --- Storage SOP classes (PS3.4 Annex B.5) ------------------------------------------------


def _index_sop_classes(entries: Iterable[tuple[str, str]]) -> dict[str, str]:
    table: dict[str, str] = {}
    for uid, name in entries:
        if uid in table:
            raise ValueError(f"duplicate SOP class {uid}")
        table[uid] = name
    return table


# Names as PS3.6 writes them, with "(Retired)" for retired SOP classes. Retired classes
# stay accepted: archives and old modalities still send them and storing costs nothing.
# Stored Print and Hardcopy Grayscale/Color Image Storage were Storage Service Class SOP
# classes (PS3.4 Table B.5-1 until they were retired), composite objects sent by C-STORE
# like any image, so they are kept; the Print Management SOP classes are not storage.
# The "- Trial" classes are retired trial-use storage classes of the same service.
STORAGE_SOP_CLASSES: Final[dict[str, str]] = _index_sop_classes(
    (
        ("1.2.840.10008.5.1.1.27", "Stored Print Storage SOP Class (Retired)"),
        ("1.2.840.10008.5.1.1.29", "Hardcopy Grayscale Image Storage SOP Class (Retired)"),
        ("1.2.840.10008.5.1.1.30", "Hardcopy Color Image Storage SOP Class (Retired)"),
        ("1.2.840.10008.5.1.4.1.1.1", "Computed Radiography Image Storage"),
        ("1.2.840.10008.5.1.4.1.1.1.1", "Digital X-Ray Image Storage - For Presentation"),
        ("1.2.840.10008.5.1.4.1.1.1.1.1", "Digital X-Ray Image Storage - For Processing"),
        (
            "1.2.840.10008.5.1.4.1.1.1.2",
            "Digital Mammography X-Ray Image Storage - For Presentation",
        ),
        (
            "1.2.840.10008.5.1.4.1.1.1.2.1",
            "Digital Mammography X-Ray Image Storage - For Processing",
        ),
        (
            "1.2.840.10008.5.1.4.1.1.1.3",
            "Digital Intra-Oral X-Ray Image Storage - For Presentation",
        ),
        (
            "1.2.840.10008.5.1.4.1.1.1.3.1",
            "Digital Intra-Oral X-Ray Image Storage - For Processing",
        ),
        ("1.2.840.10008.5.1.4.1.1.2", "CT Image Storage"),
        ("1.2.840.10008.5.1.4.1.1.2.1", "Enhanced CT Image Storage"),
        ("1.2.840.10008.5.1.4.1.1.2.2", "Legacy Converted Enhanced CT Image Storage"),
        ("1.2.840.10008.5.1.4.1.1.3", "Ultrasound Multi-frame Image Storage (Retired)"),
        ("1.2.840.10008.5.1.4.1.1.3.1", "Ultrasound Multi-frame Image Storage"),
        ("1.2.840.10008.5.1.4.1.1.4", "MR Image Storage"),
        ("1.2.840.10008.5.1.4.1.1.4.1", "Enhanced MR Image Storage"),
        ("1.2.840.10008.5.1.4.1.1.4.2", "MR Spectroscopy Storage"),
        ("1.2.840.10008.5.1.4.1.1.4.3", "Enhanced MR Color Image Storage"),
        ("1.2.840.10008.5.1.4.1.1.4.4", "Legacy Converted Enhanced MR Image Storage"),
        ("1.2.840.10008.5.1.4.1.1.5", "Nuclear Medicine Image Storage (Retired)"),
        ("1.2.840.10008.5.1.4.1.1.6", "Ultrasound Image Storage (Retired)"),
        ("1.2.840.10008.5.1.4.1.1.6.1", "Ultrasound Image Storage"),
        ("1.2.840.10008.5.1.4.1.1.6.2", "Enhanced US Volume Storage"),
        ("1.2.840.10008.5.1.4.1.1.6.3", "Photoacoustic Image Storage"),
        ("1.2.840.10008.5.1.4.1.1.7", "Secondary Capture Image Storage"),
        (
            "1.2.840.10008.5.1.4.1.1.7.1",
            "Multi-frame Single Bit Secondary Capture Image Storage",
        ),
        (
            "1.2.840.10008.5.1.4.1.1.7.2",
            "Multi-frame Grayscale Byte Secondary Capture Image Storage",
        ),
        (
            "1.2.840.10008.5.1.4.1.1.7.3",
            "Multi-frame Grayscale Word Secondary Capture Image Storage",
        ),
        (
            "1.2.840.10008.5.1.4.1.1.7.4",
            "Multi-frame True Color Secondary Capture Image Storage",
        ),
        ("1.2.840.10008.5.1.4.1.1.8", "Standalone Overlay Storage (Retired)"),
        ("1.2.840.10008.5.1.4.1.1.9", "Standalone Curve Storage (Retired)"),
        ("1.2.840.10008.5.1.4.1.1.9.1", "Waveform Storage - Trial (Retired)"),
        ("1.2.840.10008.5.1.4.1.1.9.1.1", "12-lead ECG Waveform Storage"),
        ("1.2.840.10008.5.1.4.1.1.9.1.2", "General ECG Waveform Storage"),
        ("1.2.840.10008.5.1.4.1.1.9.1.3", "Ambulatory ECG Waveform Storage"),
        ("1.2.840.10008.5.1.4.1.1.9.1.4", "General 32-bit ECG Waveform Storage"),
        ("1.2.840.10008.5.1.4.1.1.9.2.1", "Hemodynamic Waveform Storage"),
        ("1.2.840.10008.5.1.4.1.1.9.3.1", "Cardiac Electrophysiology Waveform Storage"),
        ("1.2.840.10008.5.1.4.1.1.9.4.1", "Basic Voice Audio Waveform Storage"),
        ("1.2.840.10008.5.1.4.1.1.9.4.2", "General Audio Waveform Storage"),
        ("1.2.840.10008.5.1.4.1.1.9.5.1", "Arterial Pulse Waveform Storage"),
        ("1.2.840.10008.5.1.4.1.1.9.6.1", "Respiratory Waveform Storage"),
        ("1.2.840.10008.5.1.4.1.1.9.6.2", "Multi-channel Respiratory Waveform Storage"),
        (
            "1.2.840.10008.5.1.4.1.1.9.7.1",
            "Routine Scalp Electroencephalogram Waveform Storage",
        ),
        ("1.2.840.10008.5.1.4.1.1.9.7.2", "Electromyogram Waveform Storage"),
        ("1.2.840.10008.5.1.4.1.1.9.7.3", "Electrooculogram Waveform Storage"),
        ("1.2.840.10008.5.1.4.1.1.9.7.4", "Sleep Electroencephalogram Waveform Storage"),
        ("1.2.840.10008.5.1.4.1.1.9.8.1", "Body Position Waveform Storage"),
        ("1.2.840.10008.5.1.4.1.1.9.100.1", "Waveform Presentation State Storage"),
        (
            "1.2.840.10008.5.1.4.1.1.9.100.2",
            "Waveform Acquisition Presentation State Storage",
        ),
        ("1.2.840.10008.5.1.4.1.1.10", "Standalone Modality LUT Storage (Retired)"),
        ("1.2.840.10008.5.1.4.1.1.11", "Standalone VOI LUT Storage (Retired)"),
        ("1.2.840.10008.5.1.4.1.1.11.1", "Grayscale Softcopy Presentation State Storage"),
        ("1.2.840.10008.5.1.4.1.1.11.2", "Color Softcopy Presentation State Storage"),
        ("1.2.840.10008.5.1.4.1.1.11.3", "Pseudo-Color Softcopy Presentation State Storage"),
        ("1.2.840.10008.5.1.4.1.1.11.4", "Blending Softcopy Presentation State Storage"),
        (
            "1.2.840.10008.5.1.4.1.1.11.5",
            "XA/XRF Grayscale Softcopy Presentation State Storage",
        ),
        (
            "1.2.840.10008.5.1.4.1.1.11.6",
            "Grayscale Planar MPR Volumetric Presentation State Storage",
        ),
        (
            "1.2.840.10008.5.1.4.1.1.11.7",
            "Compositing Planar MPR Volumetric Presentation State Storage",
        ),
        ("1.2.840.10008.5.1.4.1.1.11.8", "Advanced Blending Presentation State Storage"),
        (
            "1.2.840.10008.5.1.4.1.1.11.9",
            "Volume Rendering Volumetric Presentation State Storage",
        ),
        (
            "1.2.840.10008.5.1.4.1.1.11.10",
            "Segmented Volume Rendering Volumetric Presentation State Storage",
        ),
        (
            "1.2.840.10008.5.1.4.1.1.11.11",
            "Multiple Volume Rendering Volumetric Presentation State Storage",
        ),
        (
            "1.2.840.10008.5.1.4.1.1.11.12",
            "Variable Modality LUT Softcopy Presentation State Storage",
        ),
        ("1.2.840.10008.5.1.4.1.1.12.1", "X-Ray Angiographic Image Storage"),
        ("1.2.840.10008.5.1.4.1.1.12.1.1", "Enhanced XA Image Storage"),
        ("1.2.840.10008.5.1.4.1.1.12.2", "X-Ray Radiofluoroscopic Image Storage"),
        ("1.2.840.10008.5.1.4.1.1.12.2.1", "Enhanced XRF Image Storage"),
        (
            "1.2.840.10008.5.1.4.1.1.12.3",
            "X-Ray Angiographic Bi-Plane Image Storage (Retired)",
        ),
        ("1.2.840.10008.5.1.4.1.1.13.1.1", "X-Ray 3D Angiographic Image Storage"),
        ("1.2.840.10008.5.1.4.1.1.13.1.2", "X-Ray 3D Craniofacial Image Storage"),
        ("1.2.840.10008.5.1.4.1.1.13.1.3", "Breast Tomosynthesis Image Storage"),
        (
            "1.2.840.10008.5.1.4.1.1.13.1.4",
            "Breast Projection X-Ray Image Storage - For Presentation",
        ),
        (
            "1.2.840.10008.5.1.4.1.1.13.1.5",
            "Breast Projection X-Ray Image Storage - For Processing",
        ),
        (
            "1.2.840.10008.5.1.4.1.1.14.1",
            "Intravascular Optical Coherence Tomography Image Storage - For Presentation",
        ),
        (
            "1.2.840.10008.5.1.4.1.1.14.2",
            "Intravascular Optical Coherence Tomography Image Storage - For Processing",
        ),
        ("1.2.840.10008.5.1.4.1.1.20", "Nuclear Medicine Image Storage"),
        ("1.2.840.10008.5.1.4.1.1.30", "Parametric Map Storage"),
        ("1.2.840.10008.5.1.4.1.1.66", "Raw Data Storage"),
        ("1.2.840.10008.5.1.4.1.1.66.1", "Spatial Registration Storage"),
        ("1.2.840.10008.5.1.4.1.1.66.2", "Spatial Fiducials Storage"),
        ("1.2.840.10008.5.1.4.1.1.66.3", "Deformable Spatial Registration Storage"),
        ("1.2.840.10008.5.1.4.1.1.66.4", "Segmentation Storage"),
        ("1.2.840.10008.5.1.4.1.1.66.5", "Surface Segmentation Storage"),
        ("1.2.840.10008.5.1.4.1.1.66.6", "Tractography Results Storage"),
        ("1.2.840.10008.5.1.4.1.1.66.7", "Label Map Segmentation Storage"),
        ("1.2.840.10008.5.1.4.1.1.66.8", "Height Map Segmentation Storage"),
        ("1.2.840.10008.5.1.4.1.1.67", "Real World Value Mapping Storage"),
        ("1.2.840.10008.5.1.4.1.1.68.1", "Surface Scan Mesh Storage"),
        ("1.2.840.10008.5.1.4.1.1.68.2", "Surface Scan Point Cloud Storage"),
        ("1.2.840.10008.5.1.4.1.1.77.1", "VL Image Storage - Trial (Retired)"),
        ("1.2.840.10008.5.1.4.1.1.77.1.1", "VL Endoscopic Image Storage"),
        ("1.2.840.10008.5.1.4.1.1.77.1.1.1", "Video Endoscopic Image Storage"),
        ("1.2.840.10008.5.1.4.1.1.77.1.2", "VL Microscopic Image Storage"),
        ("1.2.840.10008.5.1.4.1.1.77.1.2.1", "Video Microscopic Image Storage"),
        ("1.2.840.10008.5.1.4.1.1.77.1.3", "VL Slide-Coordinates Microscopic Image Storage"),
        ("1.2.840.10008.5.1.4.1.1.77.1.4", "VL Photographic Image Storage"),
        ("1.2.840.10008.5.1.4.1.1.77.1.4.1", "Video Photographic Image Storage"),
        ("1.2.840.10008.5.1.4.1.1.77.1.5.1", "Ophthalmic Photography 8 Bit Image Storage"),
        ("1.2.840.10008.5.1.4.1.1.77.1.5.2", "Ophthalmic Photography 16 Bit Image Storage"),
        ("1.2.840.10008.5.1.4.1.1.77.1.5.3", "Stereometric Relationship Storage"),
        ("1.2.840.10008.5.1.4.1.1.77.1.5.4", "Ophthalmic Tomography Image Storage"),
        (
            "1.2.840.10008.5.1.4.1.1.77.1.5.5",
            "Wide Field Ophthalmic Photography Stereographic Projection Image Storage",
        ),
        (
            "1.2.840.10008.5.1.4.1.1.77.1.5.6",
            "Wide Field Ophthalmic Photography 3D Coordinates Image Storage",
        ),
        (
            "1.2.840.10008.5.1.4.1.1.77.1.5.7",
            "Ophthalmic Optical Coherence Tomography En Face Image Storage",
        ),
        (
            "1.2.840.10008.5.1.4.1.1.77.1.5.8",
            "Ophthalmic Optical Coherence Tomography B-scan Volume Analysis Storage",
        ),
        ("1.2.840.10008.5.1.4.1.1.77.1.6", "VL Whole Slide Microscopy Image Storage"),
        ("1.2.840.10008.5.1.4.1.1.77.1.7", "Dermoscopic Photography Image Storage"),
        ("1.2.840.10008.5.1.4.1.1.77.1.8", "Confocal Microscopy Image Storage"),
        (
            "1.2.840.10008.5.1.4.1.1.77.1.9",
            "Confocal Microscopy Tiled Pyramidal Image Storage",
        ),
        ("1.2.840.10008.5.1.4.1.1.77.2", "VL Multi-frame Image Storage - Trial (Retired)"),
        ("1.2.840.10008.5.1.4.1.1.78.1", "Lensometry Measurements Storage"),
        ("1.2.840.10008.5.1.4.1.1.78.2", "Autorefraction Measurements Storage"),
        ("1.2.840.10008.5.1.4.1.1.78.3", "Keratometry Measurements Storage"),
        ("1.2.840.10008.5.1.4.1.1.78.4", "Subjective Refraction Measurements Storage"),
        ("1.2.840.10008.5.1.4.1.1.78.5", "Visual Acuity Measurements Storage"),
        ("1.2.840.10008.5.1.4.1.1.78.6", "Spectacle Prescription Report Storage"),
        ("1.2.840.10008.5.1.4.1.1.78.7", "Ophthalmic Axial Measurements Storage"),
        ("1.2.840.10008.5.1.4.1.1.78.8", "Intraocular Lens Calculations Storage"),
        ("1.2.840.10008.5.1.4.1.1.79.1", "Macular Grid Thickness and Volume Report Storage"),
        (
            "1.2.840.10008.5.1.4.1.1.80.1",
            "Ophthalmic Visual Field Static Perimetry Measurements Storage",
        ),
        ("1.2.840.10008.5.1.4.1.1.81.1", "Ophthalmic Thickness Map Storage"),
        ("1.2.840.10008.5.1.4.1.1.82.1", "Corneal Topography Map Storage"),
        ("1.2.840.10008.5.1.4.1.1.88.1", "Text SR Storage - Trial (Retired)"),
        ("1.2.840.10008.5.1.4.1.1.88.2", "Audio SR Storage - Trial (Retired)"),
        ("1.2.840.10008.5.1.4.1.1.88.3", "Detail SR Storage - Trial (Retired)"),
        ("1.2.840.10008.5.1.4.1.1.88.4", "Comprehensive SR Storage - Trial (Retired)"),
        ("1.2.840.10008.5.1.4.1.1.88.11", "Basic Text SR Storage"),
        ("1.2.840.10008.5.1.4.1.1.88.22", "Enhanced SR Storage"),
        ("1.2.840.10008.5.1.4.1.1.88.33", "Comprehensive SR Storage"),
        ("1.2.840.10008.5.1.4.1.1.88.34", "Comprehensive 3D SR Storage"),
        ("1.2.840.10008.5.1.4.1.1.88.35", "Extensible SR Storage"),
        ("1.2.840.10008.5.1.4.1.1.88.40", "Procedure Log Storage"),
        ("1.2.840.10008.5.1.4.1.1.88.50", "Mammography CAD SR Storage"),
        ("1.2.840.10008.5.1.4.1.1.88.59", "Key Object Selection Document Storage"),
        ("1.2.840.10008.5.1.4.1.1.88.65", "Chest CAD SR Storage"),
        ("1.2.840.10008.5.1.4.1.1.88.67", "X-Ray Radiation Dose SR Storage"),
        ("1.2.840.10008.5.1.4.1.1.88.68", "Radiopharmaceutical Radiation Dose SR Storage"),
        ("1.2.840.10008.5.1.4.1.1.88.69", "Colon CAD SR Storage"),
        ("1.2.840.10008.5.1.4.1.1.88.70", "Implantation Plan SR Storage"),
        ("1.2.840.10008.5.1.4.1.1.88.71", "Acquisition Context SR Storage"),
        ("1.2.840.10008.5.1.4.1.1.88.72", "Simplified Adult Echo SR Storage"),
        ("1.2.840.10008.5.1.4.1.1.88.73", "Patient Radiation Dose SR Storage"),
        ("1.2.840.10008.5.1.4.1.1.88.74", "Planned Imaging Agent Administration SR Storage"),
        (
            "1.2.840.10008.5.1.4.1.1.88.75",
            "Performed Imaging Agent Administration SR Storage",
        ),
        ("1.2.840.10008.5.1.4.1.1.88.76", "Enhanced X-Ray Radiation Dose SR Storage"),
        ("1.2.840.10008.5.1.4.1.1.88.77", "Waveform Annotation SR Storage"),
        ("1.2.840.10008.5.1.4.1.1.90.1", "Content Assessment Results Storage"),
        ("1.2.840.10008.5.1.4.1.1.91.1", "Microscopy Bulk Simple Annotations Storage"),
        ("1.2.840.10008.5.1.4.1.1.104.1", "Encapsulated PDF Storage"),
        ("1.2.840.10008.5.1.4.1.1.104.2", "Encapsulated CDA Storage"),
        ("1.2.840.10008.5.1.4.1.1.104.3", "Encapsulated STL Storage"),
        ("1.2.840.10008.5.1.4.1.1.104.4", "Encapsulated OBJ Storage"),
        ("1.2.840.10008.5.1.4.1.1.104.5", "Encapsulated MTL Storage"),
        ("1.2.840.10008.5.1.4.1.1.128", "Positron Emission Tomography Image Storage"),
        ("1.2.840.10008.5.1.4.1.1.128.1", "Legacy Converted Enhanced PET Image Storage"),
        ("1.2.840.10008.5.1.4.1.1.129", "Standalone PET Curve Storage (Retired)"),
        ("1.2.840.10008.5.1.4.1.1.130", "Enhanced PET Image Storage"),
        ("1.2.840.10008.5.1.4.1.1.131", "Basic Structured Display Storage"),
        ("1.2.840.10008.5.1.4.1.1.200.2", "CT Performed Procedure Protocol Storage"),
        ("1.2.840.10008.5.1.4.1.1.200.8", "XA Performed Procedure Protocol Storage"),
        ("1.2.840.10008.5.1.4.1.1.481.1", "RT Image Storage"),
        ("1.2.840.10008.5.1.4.1.1.481.2", "RT Dose Storage"),
        ("1.2.840.10008.5.1.4.1.1.481.3", "RT Structure Set Storage"),
        ("1.2.840.10008.5.1.4.1.1.481.4", "RT Beams Treatment Record Storage"),
        ("1.2.840.10008.5.1.4.1.1.481.5", "RT Plan Storage"),
        ("1.2.840.10008.5.1.4.1.1.481.6", "RT Brachy Treatment Record Storage"),
        ("1.2.840.10008.5.1.4.1.1.481.7", "RT Treatment Summary Record Storage"),
        ("1.2.840.10008.5.1.4.1.1.481.8", "RT Ion Plan Storage"),
        ("1.2.840.10008.5.1.4.1.1.481.9", "RT Ion Beams Treatment Record Storage"),
        ("1.2.840.10008.5.1.4.1.1.481.10", "RT Physician Intent Storage"),
        ("1.2.840.10008.5.1.4.1.1.481.11", "RT Segment Annotation Storage"),
        ("1.2.840.10008.5.1.4.1.1.481.12", "RT Radiation Set Storage"),
        ("1.2.840.10008.5.1.4.1.1.481.13", "C-Arm Photon-Electron Radiation Storage"),
        ("1.2.840.10008.5.1.4.1.1.481.14", "Tomotherapeutic Radiation Storage"),
        ("1.2.840.10008.5.1.4.1.1.481.15", "Robotic-Arm Radiation Storage"),
        ("1.2.840.10008.5.1.4.1.1.481.16", "RT Radiation Record Set Storage"),
        ("1.2.840.10008.5.1.4.1.1.481.17", "RT Radiation Salvage Record Storage"),
        ("1.2.840.10008.5.1.4.1.1.481.18", "Tomotherapeutic Radiation Record Storage"),
        ("1.2.840.10008.5.1.4.1.1.481.19", "C-Arm Photon-Electron Radiation Record Storage"),
        ("1.2.840.10008.5.1.4.1.1.481.20", "Robotic Radiation Record Storage"),
        ("1.2.840.10008.5.1.4.1.1.481.21", "RT Radiation Set Delivery Instruction Storage"),
        ("1.2.840.10008.5.1.4.1.1.481.22", "RT Treatment Preparation Storage"),
        ("1.2.840.10008.5.1.4.1.1.481.23", "Enhanced RT Image Storage"),
        ("1.2.840.10008.5.1.4.1.1.481.24", "Enhanced Continuous RT Image Storage"),
        (
            "1.2.840.10008.5.1.4.1.1.481.25",
            "RT Patient Position Acquisition Instruction Storage",
        ),
        ("1.2.840.10008.5.1.4.34.1", "RT Beams Delivery Instruction Storage - Trial (Retired)"),
        ("1.2.840.10008.5.1.4.34.7", "RT Beams Delivery Instruction Storage"),
        (
            "1.2.840.10008.5.1.4.34.10",
            "RT Brachy Application Setup Delivery Instruction Storage",
        ),
    )
)

_VERIFICATION_NAME: Final = "Verification SOP Class"
_DICOM_ROOT: Final = "1.2.840.10008."


def is_storage_sop_class(uid: str) -> bool:
    """Return True if ``uid`` is a standard storage SOP class store-scp accepts."""
    return uid in STORAGE_SOP_CLASSES


def sop_class_name(uid: str) -> str:
    """Return a SOP class's name for log lines, never raising.

    Unknown UIDs get a label that says whether they are under the DICOM root
    (a standard UID this table does not accept) or private.
    """
    if uid == VERIFICATION_SOP_CLASS:
        return _VERIFICATION_NAME
    name = STORAGE_SOP_CLASSES.get(uid)
    if name is not None:
        return name
    if uid.startswith(_DICOM_ROOT):
        return "unknown or unsupported standard SOP class"
    return "private or unknown SOP class"
