"""What AWS HealthImaging imports, from its documentation: light enough for the receiver,
which marks an object that no job could import FAILED the moment it is received."""

from __future__ import annotations

import re

EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"
HTJ2K_LOSSLESS_RPCL = "1.2.840.10008.1.2.4.202"
_DEFLATED = "1.2.840.10008.1.2.1.99"
_MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"

_VIDEO_TRANSFER_SYNTAXES = frozenset(
    {f"1.2.840.10008.1.2.4.{n}" for n in range(100, 109)}
    | {f"1.2.840.10008.1.2.4.{n}.1" for n in range(100, 107)}
)

#: supported-transfer-syntaxes.html: what an import job accepts.
SUPPORTED_TRANSFER_SYNTAXES = frozenset(
    {
        "1.2.840.10008.1.2",
        EXPLICIT_VR_LITTLE_ENDIAN,
        _DEFLATED,
        "1.2.840.10008.1.2.2",
        "1.2.840.10008.1.2.4.50",
        "1.2.840.10008.1.2.4.51",
        "1.2.840.10008.1.2.4.57",
        "1.2.840.10008.1.2.4.70",
        "1.2.840.10008.1.2.4.80",
        "1.2.840.10008.1.2.4.81",
        "1.2.840.10008.1.2.4.90",
        "1.2.840.10008.1.2.4.91",
        "1.2.840.10008.1.2.4.92",
        "1.2.840.10008.1.2.4.93",
        "1.2.840.10008.1.2.4.201",
        HTJ2K_LOSSLESS_RPCL,
        "1.2.840.10008.1.2.4.203",
        "1.2.840.10008.1.2.5",
    }
    | _VIDEO_TRANSFER_SYNTAXES
)

_UID_SYNTAX = re.compile(r"[0-9]+(\.[0-9]+)*")


def import_rejection(sop_class_uid: str | None, transfer_syntax_uid: str | None) -> str | None:
    """Why a file with these UIDs could never be imported (None if it could).

    For the pipeline, to mark objects that no job could import FAILED at once.
    """
    if not transfer_syntax_uid:
        return "DICOM attribute TransferSyntaxUID does not exist"
    if transfer_syntax_uid not in SUPPORTED_TRANSFER_SYNTAXES:
        return f"Unsupported transfer syntax {transfer_syntax_uid}"
    if not sop_class_uid:
        return "DICOM attribute SOPClassUID does not exist"
    if not _UID_SYNTAX.fullmatch(sop_class_uid) or len(sop_class_uid) > 64:
        return "DICOM attribute SOPClassUID is not a valid UID"
    if sop_class_uid == _MEDIA_STORAGE_DIRECTORY:
        return f"SOP class {sop_class_uid} (Media Storage Directory) is not a composite instance"
    return None
