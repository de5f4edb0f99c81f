"""Checks of the UID tables negotiation accepts from, against pydicom and the standard.

pydicom's UID dictionary is generated from PS3.6, so it is an independent witness for
names, retirement and encoding flags. The installed pydicom may be older than the
standard edition the tables follow: UIDs it does not know yet are listed below with
their PS3.6 names, so a typo there cannot pass unnoticed either.
"""

from __future__ import annotations

import ast
import inspect
import re

import pytest
from pydicom._uid_dict import UID_dictionary
from pydicom.uid import UID

from store_scp.dicom import uids
from store_scp.dicom.uids import (
    APPLICATION_CONTEXT_NAME,
    DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN,
    EXPLICIT_VR_BIG_ENDIAN,
    EXPLICIT_VR_LITTLE_ENDIAN,
    IMPLEMENTATION_CLASS_UID,
    IMPLEMENTATION_VERSION_NAME,
    IMPLICIT_VR_LITTLE_ENDIAN,
    REJECTED_TRANSFER_SYNTAXES,
    STORAGE_SOP_CLASSES,
    TRANSFER_SYNTAXES,
    VERIFICATION_SOP_CLASS,
    is_storage_sop_class,
    is_valid_uid,
    sop_class_name,
)

_RETIRED = " (Retired)"

# Registered in PS3.6 after the pydicom release installed here (2024c-2025 editions).
NEWER_THAN_PYDICOM: dict[str, str] = {
    "1.2.840.10008.1.2.4.110": "JPEG XL Lossless",
    "1.2.840.10008.1.2.4.111": "JPEG XL JPEG Recompression",
    "1.2.840.10008.1.2.4.112": "JPEG XL",
    "1.2.840.10008.1.2.8.1": "Deflated Image Frame Compression",
    "1.2.840.10008.5.1.4.1.1.9.100.1": "Waveform Presentation State Storage",
    "1.2.840.10008.5.1.4.1.1.9.100.2": "Waveform Acquisition Presentation State Storage",
    "1.2.840.10008.5.1.4.1.1.66.7": "Label Map Segmentation Storage",
    "1.2.840.10008.5.1.4.1.1.66.8": "Height Map Segmentation Storage",
}

# SOP classes whose name says "Storage" but which are deliberately not accepted.
EXCLUDED_STORAGE_LIKE: dict[str, str] = {
    # Not the Storage Service Class at all.
    "1.2.840.10008.1.20.1": "Storage Commitment Push Model: a notification service",
    "1.2.840.10008.1.20.2": "Storage Commitment Pull Model (Retired)",
    "1.2.840.10008.1.3.10": "Media Storage Directory (DICOMDIR): a media object only",
    # Non-Patient Object Storage Service Class (PS3.4 Annex GG), not patient data.
    "1.2.840.10008.5.1.4.38.1": "Hanging Protocol Storage",
    "1.2.840.10008.5.1.4.39.1": "Color Palette Storage",
    "1.2.840.10008.5.1.4.43.1": "Generic Implant Template Storage",
    "1.2.840.10008.5.1.4.44.1": "Implant Assembly Template Storage",
    "1.2.840.10008.5.1.4.45.1": "Implant Template Group Storage",
    "1.2.840.10008.5.1.4.1.1.200.1": "CT Defined Procedure Protocol Storage",
    "1.2.840.10008.5.1.4.1.1.200.3": "Protocol Approval Storage",
    "1.2.840.10008.5.1.4.1.1.200.7": "XA Defined Procedure Protocol Storage",
    "1.2.840.10008.5.1.4.1.1.201.1": "Inventory Storage",
    # DICOS (security screening), registered in PS3.6 for NEMA's DICOS standard.
    "1.2.840.10008.5.1.4.1.1.501.1": "DICOS CT Image Storage",
    "1.2.840.10008.5.1.4.1.1.501.2.1": "DICOS Digital X-Ray Image Storage - For Presentation",
    "1.2.840.10008.5.1.4.1.1.501.2.2": "DICOS Digital X-Ray Image Storage - For Processing",
    "1.2.840.10008.5.1.4.1.1.501.3": "DICOS Threat Detection Report Storage",
    "1.2.840.10008.5.1.4.1.1.501.4": "DICOS 2D AIT Storage",
    "1.2.840.10008.5.1.4.1.1.501.5": "DICOS 3D AIT Storage",
    "1.2.840.10008.5.1.4.1.1.501.6": "DICOS Quadrupole Resonance (QR) Storage",
    # DICONDE (non-destructive testing, ASTM), registered in PS3.6 under .601.
    "1.2.840.10008.5.1.4.1.1.601.1": "Eddy Current Image Storage",
    "1.2.840.10008.5.1.4.1.1.601.2": "Eddy Current Multi-frame Image Storage",
    "1.2.840.10008.5.1.4.1.1.601.3": "Thermography Image Storage",
    "1.2.840.10008.5.1.4.1.1.601.4": "Thermography Multi-frame Image Storage",
    "1.2.840.10008.5.1.4.1.1.601.5": "Ultrasound Waveform Storage (DICONDE)",
}

# Encapsulated syntaxes that can only carry lossless data (the others may be lossy).
EXPECTED_LOSSLESS_ENCAPSULATED = {
    "1.2.840.10008.1.2.1.98",  # Encapsulated Uncompressed Explicit VR Little Endian
    "1.2.840.10008.1.2.4.57",  # JPEG Lossless, Process 14
    "1.2.840.10008.1.2.4.58",  # JPEG Lossless, Process 15 (Retired)
    "1.2.840.10008.1.2.4.65",  # JPEG Lossless, Hierarchical, Process 28 (Retired)
    "1.2.840.10008.1.2.4.66",  # JPEG Lossless, Hierarchical, Process 29 (Retired)
    "1.2.840.10008.1.2.4.70",  # JPEG Lossless, Process 14 SV1
    "1.2.840.10008.1.2.4.80",  # JPEG-LS Lossless
    "1.2.840.10008.1.2.4.90",  # JPEG 2000 (Lossless Only)
    "1.2.840.10008.1.2.4.92",  # JPEG 2000 Part 2 Multi-component (Lossless Only)
    "1.2.840.10008.1.2.4.110",  # JPEG XL Lossless
    "1.2.840.10008.1.2.4.201",  # HTJ2K (Lossless Only)
    "1.2.840.10008.1.2.4.202",  # HTJ2K with RPCL Options (Lossless Only)
    "1.2.840.10008.1.2.5",  # RLE Lossless
    "1.2.840.10008.1.2.8.1",  # Deflated Image Frame Compression
}

_DICOM_ROOT = "1.2.840.10008."


def _pydicom_name(uid: str) -> str:
    name, _type, _info, retired, _keyword = UID_dictionary[uid]
    return name + (_RETIRED if retired else "")


def _pydicom_transfer_syntaxes() -> set[str]:
    return {
        uid
        for uid, entry in UID_dictionary.items()
        if entry[1] == "Transfer Syntax" and uid.startswith(_DICOM_ROOT)
    }


def _all_table_uids() -> list[str]:
    return [*TRANSFER_SYNTAXES, *REJECTED_TRANSFER_SYNTAXES, *STORAGE_SOP_CLASSES]


# --- UID syntax --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "uid",
    ["0", "1.2", "1.2.840.10008.1.2", "2.25.0", "1.0.3", "1." + "2" * 62],
)
def test_valid_uids(uid: str) -> None:
    assert is_valid_uid(uid)


@pytest.mark.parametrize(
    "uid",
    [
        "",
        ".",
        "1.",
        ".1",
        "1..2",
        "01.2",
        "1.02",
        "1.00",
        "1.2a",
        "1.2 ",
        " 1.2",
        "1.2\n",
        "1.2\x00",
        "1,2",
        "-1.2",
        "1." + "2" * 63,  # 65 characters
    ],
)
def test_invalid_uids(uid: str) -> None:
    assert not is_valid_uid(uid)


def test_every_table_uid_is_valid() -> None:
    constants = [
        APPLICATION_CONTEXT_NAME,
        VERIFICATION_SOP_CLASS,
        IMPLEMENTATION_CLASS_UID,
        IMPLICIT_VR_LITTLE_ENDIAN,
        EXPLICIT_VR_LITTLE_ENDIAN,
        EXPLICIT_VR_BIG_ENDIAN,
        DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN,
    ]
    for uid in [*constants, *_all_table_uids()]:
        assert is_valid_uid(uid), uid


# --- Uniqueness --------------------------------------------------------------------------


def _literal_uids_of(table_name: str) -> list[str]:
    """UIDs written in the source of one table, duplicates kept (a dict would hide them)."""
    tree = ast.parse(inspect.getsource(uids))
    for node in tree.body:
        value: ast.expr | None = None
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            value = node.value if node.target.id == table_name else None
        elif isinstance(node, ast.Assign) and len(node.targets) == 1:
            target = node.targets[0]
            value = node.value if isinstance(target, ast.Name) and target.id == table_name else None
        if value is None:
            continue
        found: list[str] = []
        for sub in ast.walk(value):
            if isinstance(sub, ast.Constant) and isinstance(sub.value, str):
                if re.fullmatch(r"\d+(\.\d+){2,}", sub.value):
                    found.append(sub.value)
            elif isinstance(sub, ast.Name) and sub.id.isupper():
                constant = getattr(uids, sub.id, None)
                if isinstance(constant, str) and is_valid_uid(constant):
                    found.append(constant)
        return found
    raise AssertionError(f"{table_name} not found")


@pytest.mark.parametrize(
    "table_name", ["TRANSFER_SYNTAXES", "REJECTED_TRANSFER_SYNTAXES", "STORAGE_SOP_CLASSES"]
)
def test_no_uid_written_twice(table_name: str) -> None:
    written = _literal_uids_of(table_name)
    duplicates = sorted({uid for uid in written if written.count(uid) > 1})
    assert not duplicates
    assert sorted(written) == sorted(getattr(uids, table_name))


def test_tables_do_not_overlap() -> None:
    accepted = set(TRANSFER_SYNTAXES)
    assert not accepted & set(REJECTED_TRANSFER_SYNTAXES)
    assert not accepted & set(STORAGE_SOP_CLASSES)
    assert VERIFICATION_SOP_CLASS not in STORAGE_SOP_CLASSES
    assert not set(EXCLUDED_STORAGE_LIKE) & set(STORAGE_SOP_CLASSES)


def test_names_are_unique_and_keys_match() -> None:
    ts_names = [ts.name for ts in TRANSFER_SYNTAXES.values()]
    assert len(ts_names) == len(set(ts_names))
    sop_names = list(STORAGE_SOP_CLASSES.values())
    assert len(sop_names) == len(set(sop_names))
    for uid, ts in TRANSFER_SYNTAXES.items():
        assert ts.uid == uid


# --- Agreement with pydicom --------------------------------------------------------------


def test_uids_unknown_to_pydicom_are_the_listed_newer_ones() -> None:
    unknown = {uid for uid in _all_table_uids() if uid not in UID_dictionary}
    assert unknown <= set(NEWER_THAN_PYDICOM)
    for uid, name in NEWER_THAN_PYDICOM.items():
        if uid in TRANSFER_SYNTAXES:
            assert TRANSFER_SYNTAXES[uid].name == name
        else:
            assert STORAGE_SOP_CLASSES[uid] == name


def test_newer_uids_agree_with_pydicom_once_it_knows_them() -> None:
    for uid, name in NEWER_THAN_PYDICOM.items():
        if uid in UID_dictionary:
            assert _pydicom_name(uid) == name, uid


def test_transfer_syntax_names_and_retirement_agree_with_pydicom() -> None:
    for uid, ts in TRANSFER_SYNTAXES.items():
        if uid not in UID_dictionary:
            continue
        pyd = UID(uid)
        assert pyd.is_transfer_syntax, uid
        assert ts.name == _pydicom_name(uid), uid
        assert ts.retired == pyd.is_retired, uid
        assert ts.name.endswith(_RETIRED) == ts.retired, uid


def test_transfer_syntax_flags_agree_with_pydicom() -> None:
    for uid, ts in TRANSFER_SYNTAXES.items():
        if uid not in UID_dictionary:
            continue
        pyd = UID(uid)
        assert ts.explicit_vr == (not pyd.is_implicit_VR), uid
        assert ts.little_endian == pyd.is_little_endian, uid
        assert ts.deflated == pyd.is_deflated, uid
        assert ts.encapsulated == pyd.is_encapsulated, uid


def test_every_pydicom_transfer_syntax_is_accepted_or_rejected_with_a_reason() -> None:
    missing = (
        _pydicom_transfer_syntaxes() - set(TRANSFER_SYNTAXES) - set(REJECTED_TRANSFER_SYNTAXES)
    )
    assert not missing
    for uid, reason in REJECTED_TRANSFER_SYNTAXES.items():
        assert reason.strip(), uid
        if uid in UID_dictionary:
            assert UID(uid).is_transfer_syntax, uid
            # The reason starts with the syntax's name, so a log line is self-explanatory.
            assert reason.startswith(_pydicom_name(uid)), uid


def test_rejected_syntaxes_are_exactly_jpip_smpte_and_non_network_encodings() -> None:
    jpip = {
        "1.2.840.10008.1.2.4.94",
        "1.2.840.10008.1.2.4.95",
        "1.2.840.10008.1.2.4.204",
        "1.2.840.10008.1.2.4.205",
    }
    smpte_2110 = {
        uid for uid in _pydicom_transfer_syntaxes() if uid.startswith("1.2.840.10008.1.2.7.")
    }
    smpte_2110 |= {"1.2.840.10008.1.2.7.1", "1.2.840.10008.1.2.7.2", "1.2.840.10008.1.2.7.3"}
    # Retired encodings that never carried a binary data set over the network.
    non_network = {"1.2.840.10008.1.2.6.1", "1.2.840.10008.1.2.6.2", "1.2.840.10008.1.20"}
    assert set(REJECTED_TRANSFER_SYNTAXES) == jpip | smpte_2110 | non_network


def test_storage_names_and_retirement_agree_with_pydicom() -> None:
    for uid, name in STORAGE_SOP_CLASSES.items():
        if uid not in UID_dictionary:
            continue
        pyd = UID(uid)
        assert pyd.type == "SOP Class", uid
        assert not pyd.is_transfer_syntax, uid
        assert name == _pydicom_name(uid), uid
        assert pyd.name == name.removesuffix(_RETIRED), uid


def test_every_pydicom_storage_sop_class_is_accepted_or_explicitly_excluded() -> None:
    # Broader than "keyword ends in Storage": also catches the retired and trial
    # keywords (...StorageRetired, ...StorageTrial) and "Storage SOP Class" names.
    storage_like = {
        uid
        for uid, (name, uid_type, _info, _retired, keyword) in UID_dictionary.items()
        if uid_type == "SOP Class" and ("Storage" in keyword or "Storage" in name)
    }
    assert storage_like - set(STORAGE_SOP_CLASSES) - set(EXCLUDED_STORAGE_LIKE) == set()
    ends_in_storage = {
        uid
        for uid, entry in UID_dictionary.items()
        if entry[1] == "SOP Class" and entry[4].endswith("Storage")
    }
    assert ends_in_storage <= storage_like


def test_exclusions_name_real_sop_classes() -> None:
    for uid in EXCLUDED_STORAGE_LIKE:
        assert is_valid_uid(uid)
        if uid in UID_dictionary:
            assert UID_dictionary[uid][1] == "SOP Class", uid


# --- Flags and their invariants ------------------------------------------------------------


def test_the_four_named_constants() -> None:
    implicit = TRANSFER_SYNTAXES[IMPLICIT_VR_LITTLE_ENDIAN]
    assert (implicit.explicit_vr, implicit.little_endian, implicit.encapsulated) == (
        False,
        True,
        False,
    )
    explicit = TRANSFER_SYNTAXES[EXPLICIT_VR_LITTLE_ENDIAN]
    assert (explicit.explicit_vr, explicit.little_endian, explicit.encapsulated) == (
        True,
        True,
        False,
    )
    big = TRANSFER_SYNTAXES[EXPLICIT_VR_BIG_ENDIAN]
    assert (big.explicit_vr, big.little_endian, big.retired) == (True, False, True)
    deflated = TRANSFER_SYNTAXES[DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN]
    assert (deflated.deflated, deflated.explicit_vr, deflated.encapsulated) == (True, True, False)


def test_flag_invariants() -> None:
    implicit = [ts.uid for ts in TRANSFER_SYNTAXES.values() if not ts.explicit_vr]
    assert implicit == [IMPLICIT_VR_LITTLE_ENDIAN]
    big_endian = [ts.uid for ts in TRANSFER_SYNTAXES.values() if not ts.little_endian]
    assert big_endian == [EXPLICIT_VR_BIG_ENDIAN]
    deflated = [ts.uid for ts in TRANSFER_SYNTAXES.values() if ts.deflated]
    assert deflated == [DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN]
    for ts in TRANSFER_SYNTAXES.values():
        if not ts.encapsulated:
            assert ts.lossless, ts.uid  # native pixel data is never lossy
        else:
            assert ts.explicit_vr and ts.little_endian and not ts.deflated, ts.uid


def test_lossless_flag_of_compressed_syntaxes() -> None:
    lossless_encapsulated = {
        ts.uid for ts in TRANSFER_SYNTAXES.values() if ts.encapsulated and ts.lossless
    }
    assert lossless_encapsulated == EXPECTED_LOSSLESS_ENCAPSULATED
    for ts in TRANSFER_SYNTAXES.values():
        # "Lossless Only" in a name is a guarantee; "Lossy" or "Near-Lossless" is not.
        if "Lossless Only" in ts.name:
            assert ts.lossless, ts.uid
        if "Lossy" in ts.name or "MPEG" in ts.name or "HEVC" in ts.name:
            assert not ts.lossless, ts.uid


def test_required_families_are_accepted() -> None:
    for uid in [
        "1.2.840.10008.1.2.4.50",  # JPEG Baseline
        "1.2.840.10008.1.2.4.51",  # JPEG Extended
        "1.2.840.10008.1.2.4.70",  # JPEG Lossless SV1
        "1.2.840.10008.1.2.4.80",  # JPEG-LS
        "1.2.840.10008.1.2.4.91",  # JPEG 2000
        "1.2.840.10008.1.2.4.93",  # JPEG 2000 multi-component
        "1.2.840.10008.1.2.4.201",  # HTJ2K
        "1.2.840.10008.1.2.4.202",
        "1.2.840.10008.1.2.4.203",
        "1.2.840.10008.1.2.4.110",  # JPEG XL
        "1.2.840.10008.1.2.4.111",
        "1.2.840.10008.1.2.4.112",
        "1.2.840.10008.1.2.5",  # RLE
        "1.2.840.10008.1.2.4.100",  # MPEG-2
        "1.2.840.10008.1.2.4.102",  # MPEG-4
        "1.2.840.10008.1.2.4.107",  # HEVC
        "1.2.840.10008.1.2.1.98",  # encapsulated uncompressed
        "1.2.840.10008.1.2.8.1",  # deflated image frames
    ]:
        assert uid in TRANSFER_SYNTAXES, uid


def test_retired_storage_classes_old_modalities_send_are_accepted() -> None:
    for uid in [
        "1.2.840.10008.5.1.4.1.1.3",  # Ultrasound Multi-frame Image Storage (Retired)
        "1.2.840.10008.5.1.4.1.1.5",  # Nuclear Medicine Image Storage (Retired)
        "1.2.840.10008.5.1.4.1.1.6",  # Ultrasound Image Storage (Retired)
        "1.2.840.10008.5.1.4.1.1.12.3",  # X-Ray Angiographic Bi-Plane (Retired)
        "1.2.840.10008.5.1.4.1.1.77.1",  # VL Image Storage - Trial (Retired)
        "1.2.840.10008.5.1.4.1.1.8",  # Standalone Overlay Storage (Retired)
    ]:
        assert STORAGE_SOP_CLASSES[uid].endswith(_RETIRED), uid


# --- Lookups -------------------------------------------------------------------------------


def test_is_storage_sop_class() -> None:
    assert is_storage_sop_class("1.2.840.10008.5.1.4.1.1.2")  # CT Image Storage
    assert is_storage_sop_class("1.2.840.10008.5.1.4.1.1.6")  # retired US
    assert not is_storage_sop_class(VERIFICATION_SOP_CLASS)
    assert not is_storage_sop_class("1.2.840.10008.1.20.1")  # Storage Commitment
    assert not is_storage_sop_class("1.2.840.10008.1.3.10")  # Media Storage Directory
    assert not is_storage_sop_class("1.2.840.10008.5.1.4.38.1")  # Hanging Protocol
    assert not is_storage_sop_class("1.2.3.4.5")
    assert not is_storage_sop_class("")


def test_sop_class_name() -> None:
    assert sop_class_name("1.2.840.10008.5.1.4.1.1.2") == "CT Image Storage"
    assert sop_class_name(VERIFICATION_SOP_CLASS) == "Verification SOP Class"
    assert "private" in sop_class_name("1.2.3.4.5")
    assert "unknown" in sop_class_name("1.2.840.10008.5.1.4.38.1")
    assert sop_class_name("") != ""
    assert sop_class_name("not a uid at all") != ""


# --- Identification ------------------------------------------------------------------------


def test_application_context_and_verification() -> None:
    assert UID(APPLICATION_CONTEXT_NAME).type == "Application Context Name"
    assert UID(VERIFICATION_SOP_CLASS).keyword == "Verification"


def test_implementation_class_uid_is_ours() -> None:
    assert IMPLEMENTATION_CLASS_UID.startswith("2.25.")
    assert is_valid_uid(IMPLEMENTATION_CLASS_UID)
    value = int(IMPLEMENTATION_CLASS_UID.removeprefix("2.25."))
    assert 0 < value < 2**128  # the integer value of one UUID


def test_implementation_version_name() -> None:
    assert 1 <= len(IMPLEMENTATION_VERSION_NAME) <= 16
    assert IMPLEMENTATION_VERSION_NAME.startswith("STORE_SCP_")
    # Default character repertoire, no backslash, no leading/trailing space.
    assert re.fullmatch(r"[\x21-\x5b\x5d-\x7e]+", IMPLEMENTATION_VERSION_NAME)
