"""docs/conformance.md must say what the code's own tables say.

The tables are found by their section headings (numbering ignored), so sections can be
renumbered or moved without breaking these checks; a changed table cannot slip through.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pytest

from store_scp.dicom.uids import (
    IMPLEMENTATION_CLASS_UID,
    IMPLEMENTATION_VERSION_NAME,
    REJECTED_TRANSFER_SYNTAXES,
    STORAGE_SOP_CLASSES,
    TRANSFER_SYNTAXES,
    VERIFICATION_SOP_CLASS,
    is_valid_uid,
)

DOC = Path(__file__).resolve().parents[2] / "docs" / "conformance.md"

_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
_NUMBERING = re.compile(r"^(?:\d+(?:\.\d+)*\.?\s+)")
_UID_TEXT = re.compile(r"\b(?:\d+\.){2,}\d+\b")


@dataclass(frozen=True)
class Section:
    title: str
    level: int
    lines: list[str]


def _sections(text: str) -> list[Section]:
    """Every heading with the lines up to the next heading of the same or a higher level."""
    lines = text.splitlines()
    headings: list[tuple[int, int, str]] = []
    in_fence = False
    for index, line in enumerate(lines):
        if line.lstrip().startswith("```"):
            in_fence = not in_fence
            continue
        match = None if in_fence else _HEADING.match(line)
        if match:
            title = _NUMBERING.sub("", match.group(2)).strip()
            headings.append((index, len(match.group(1)), title))
    sections = []
    for position, (start, level, title) in enumerate(headings):
        end = len(lines)
        for later_start, later_level, _ in headings[position + 1 :]:
            if later_level <= level:
                end = later_start
                break
        sections.append(Section(title, level, lines[start + 1 : end]))
    return sections


def _section(text: str, title: str) -> Section:
    found = [s for s in _sections(text) if s.title.casefold() == title.casefold()]
    assert len(found) == 1, f"expected one section titled {title!r}, found {len(found)}"
    return found[0]


def _first_table(section: Section) -> list[dict[str, str]]:
    """Rows of the first Markdown table in a section, as {header: cell} dicts."""
    table_lines: list[str] = []
    for line in section.lines:
        stripped = line.strip()
        if stripped.startswith("|"):
            table_lines.append(stripped)
        elif table_lines:
            break
    assert len(table_lines) >= 2, f"no table under {section.title!r}"

    def cells(row: str) -> list[str]:
        return [cell.strip().strip("`").strip() for cell in row.strip("|").split("|")]

    header = cells(table_lines[0])
    assert all(re.fullmatch(r":?-{3,}:?", cell) for cell in cells(table_lines[1])), (
        f"malformed table under {section.title!r}"
    )
    rows = []
    for row in table_lines[2:]:
        values = cells(row)
        assert len(values) == len(header), f"ragged row under {section.title!r}: {row}"
        rows.append(dict(zip(header, values, strict=True)))
    return rows


def _name_uid_table(text: str, title: str) -> dict[str, str]:
    rows = _first_table(_section(text, title))
    table: dict[str, str] = {}
    for row in rows:
        uid, name = row["UID"], row["Name"]
        assert is_valid_uid(uid), f"{title}: {uid!r} is not a UID"
        assert uid not in table, f"{title}: {uid} listed twice"
        table[uid] = name
    return table


@pytest.fixture(scope="module")
def doc() -> str:
    return DOC.read_text(encoding="utf-8")


def test_storage_sop_class_table_matches_the_code(doc: str) -> None:
    listed = _name_uid_table(doc, "Storage SOP Classes")
    assert set(listed) == set(STORAGE_SOP_CLASSES)
    assert listed == STORAGE_SOP_CLASSES


def test_verification_is_listed(doc: str) -> None:
    listed = _name_uid_table(doc, "Verification SOP Class")
    assert set(listed) == {VERIFICATION_SOP_CLASS}


def test_accepted_transfer_syntax_table_matches_the_code(doc: str) -> None:
    listed = _name_uid_table(doc, "Transfer Syntaxes Accepted")
    assert set(listed) == set(TRANSFER_SYNTAXES)
    assert listed == {uid: ts.name for uid, ts in TRANSFER_SYNTAXES.items()}


def test_rejected_transfer_syntax_table_matches_the_code(doc: str) -> None:
    listed = _name_uid_table(doc, "Transfer Syntaxes Not Accepted")
    assert set(listed) == set(REJECTED_TRANSFER_SYNTAXES)


def test_lossless_compressed_table_matches_the_code(doc: str) -> None:
    listed = _name_uid_table(doc, "Lossless Compressed Transfer Syntaxes")
    expected = {ts.uid for ts in TRANSFER_SYNTAXES.values() if ts.encapsulated and ts.lossless}
    assert set(listed) == expected


def test_implementation_identification_matches_the_code(doc: str) -> None:
    rows = _first_table(_section(doc, "Implementation Identifying Information"))
    values = {row["Item"]: row["Value"] for row in rows}
    assert values["Implementation Class UID"] == IMPLEMENTATION_CLASS_UID
    assert values["Implementation Version Name"] == IMPLEMENTATION_VERSION_NAME


def test_no_stale_implementation_identification_anywhere(doc: str) -> None:
    # Any 2.25 UID in the document is ours, and the version name appears only as it is.
    for uid in _UID_TEXT.findall(doc):
        if uid.startswith("2.25."):
            assert uid == IMPLEMENTATION_CLASS_UID
    for name in re.findall(r"\bSTORE_SCP_\w+", doc):
        assert name == IMPLEMENTATION_VERSION_NAME
    assert doc.count(IMPLEMENTATION_CLASS_UID) >= 2  # identification table and file meta
    assert IMPLEMENTATION_VERSION_NAME in doc


def test_transfer_syntax_preference_order_is_stated(doc: str) -> None:
    section = "\n".join(_section(doc, "Transfer Syntax Selection").lines)
    rules = [line.strip() for line in section.splitlines() if re.match(r"\s*\d+\.\s", line)]
    assert rules == [
        "1. a lossless compressed syntax (in the order the requestor offered them);",
        "2. a lossy (or possibly lossy) compressed syntax, when the requestor offered it first;",
        "3. Explicit VR Little Endian;",
        "4. Implicit VR Little Endian;",
        "5. any other lossy (or possibly lossy) compressed syntax, in offered order;",
        "6. Explicit VR Big Endian (retired) or Deflated Explicit VR Little Endian, "
        "only when nothing else is offered.",
    ]


def test_documented_preference_order_is_the_codes() -> None:
    from store_scp.dicom.negotiation import choose_transfer_syntax

    jpeg_baseline, jpeg_ls_lossless = "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.80"
    big_endian, explicit, implicit = (
        "1.2.840.10008.1.2.2",
        "1.2.840.10008.1.2.1",
        "1.2.840.10008.1.2",
    )
    offered = [big_endian, jpeg_baseline, implicit, explicit, jpeg_ls_lossless]
    picked = []
    while offered:
        choice = choose_transfer_syntax(offered)
        assert choice is not None
        picked.append(choice)
        offered.remove(choice)
    assert picked == [jpeg_ls_lossless, explicit, implicit, jpeg_baseline, big_endian]
    # Rule 2: a lossy syntax offered first is taken before the uncompressed ones.
    assert choose_transfer_syntax([jpeg_baseline, explicit, implicit]) == jpeg_baseline
    assert choose_transfer_syntax([jpeg_baseline, jpeg_ls_lossless, explicit]) == jpeg_ls_lossless


def test_every_uid_in_the_document_is_well_formed(doc: str) -> None:
    for uid in _UID_TEXT.findall(doc):
        if uid.startswith(("1.2.840.10008.", "2.25.")):
            assert is_valid_uid(uid), uid


def test_parser_finds_tables_by_heading_and_ignores_numbering() -> None:
    sample = "\n".join(
        [
            "## 3 Networking",
            "### 3.9.9 Storage SOP Classes",
            "Some text.",
            "",
            "| Name | UID |",
            "|---|:---:|",
            "| CT Image Storage | `1.2.840.10008.5.1.4.1.1.2` |",
            "",
            "#### A subsection",
            "| Name | UID |",
            "|---|---|",
            "| Not this one | 1.2.3 |",
            "### Next",
        ]
    )
    assert _name_uid_table(sample, "storage sop classes") == {
        "1.2.840.10008.5.1.4.1.1.2": "CT Image Storage"
    }
