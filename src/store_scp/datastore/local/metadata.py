"""Image set metadata in HealthImaging's JSON shape (understanding-image-sets.html).

DICOM values follow the documented example: keywords as keys (private and unknown elements as
`GGGGEEEE`), strings for text VRs including IS and DS, numbers for binary numeric VRs, a list
when the value is multi-valued, null when empty (and for pixel data), lists of objects for
sequences, base64 for binary values of at most 1 MB (larger ones are null). Each element goes to
the level it describes: patient, study, series or instance.

Also here: the element limits of dicom-element-constraints.html that an import enforces, the
elements HealthImaging groups image sets by, and SearchImageSets' `DICOMTags` of an image set.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Iterable
from typing import Any

from pydicom.datadict import tag_for_keyword
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

#: dicom-element-constraints.html: maximum lengths applied during import.
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

_BULK_INLINE_MAX = 1024 * 1024  # binary values above 1 MB are not kept inline (as in HI)


def _text_of(elem: DataElement) -> str:
    value = elem.value
    if value is None:
        return ""
    if isinstance(value, MultiValue | list | tuple):
        return "\\".join(str(v) for v in value)
    if isinstance(value, bytes):
        return value.decode("latin-1")
    return str(value)


def limit_violation(ds: Dataset) -> str | None:
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


# --- levels ----------------------------------------------------------------------------------


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
STUDY_KEYS = ("PatientID", "StudyDate", "AccessionNumber", "StudyID")
SERIES_KEYS = ("SeriesNumber",)


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


def split_levels(ds: Dataset) -> dict[str, dict[str, Any]]:
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


def norm(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, list):
        return "\\".join(norm(v) for v in value)
    return str(value).strip(" \x00")


def _first(value: Any) -> Any:
    if isinstance(value, list):
        return value[0] if value else None
    return value


def dicom_tags(
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
