"""SearchImageSets over the image sets table: filters are ANDed; EQUAL on the DICOM ids and
`isPrimary`, EQUAL or BETWEEN on `createdAt`, `updatedAt` and `DICOMStudyDateAndTime`; sorted by
`updatedAt` (newest first) unless the request sorts otherwise."""

from __future__ import annotations

import json
from typing import Any

from .api_values import decode_token, encode_token, epoch, ts
from .database import Database
from .errors import VALIDATION, datastore_error

_EQUAL_COLUMNS = {
    "DICOMPatientId": "patient_id",
    "DICOMAccessionNumber": "accession",
    "DICOMStudyId": "study_id",
    "DICOMStudyInstanceUID": "study_uid",
    "DICOMSeriesInstanceUID": "series_uid",
}
_SORT_COLUMNS = {
    "updatedAt": "updated_at",
    "createdAt": "created_at",
    "DICOMStudyDateAndTime": "study_date || study_time",
}


def search_image_sets(
    db: Database,
    search_criteria: dict[str, Any] | None = None,
    *,
    max_results: int | None = None,
    next_token: str | None = None,
) -> dict[str, Any]:
    """SearchImageSets' response."""
    criteria = search_criteria or {}
    where: list[str] = []
    args: list[Any] = []
    for flt in criteria.get("filters") or []:
        operator = flt.get("operator")
        values = flt.get("values") or []
        if not values:
            raise datastore_error(VALIDATION, "A search filter needs values")
        attrs = {next(iter(v)) for v in values if v}
        if len(attrs) != 1 or any(len(v) != 1 for v in values):
            raise datastore_error(
                VALIDATION, "Each search filter value names exactly one attribute"
            )
        attr = attrs.pop()
        if operator == "EQUAL":
            if len(values) != 1:
                raise datastore_error(VALIDATION, "EQUAL takes exactly one value")
            value = values[0][attr]
            if attr in _EQUAL_COLUMNS:
                where.append(f"{_EQUAL_COLUMNS[attr]} = ?")
                args.append(str(value))
            elif attr == "isPrimary":
                where.append("is_primary = ?")
                args.append(1 if value else 0)
            elif attr in ("createdAt", "updatedAt"):
                where.append(f"{_SORT_COLUMNS[attr]} = ?")
                args.append(epoch(value))
            elif attr == "DICOMStudyDateAndTime":
                where.append("study_date = ?")
                args.append(str(value.get("DICOMStudyDate", "")))
                if value.get("DICOMStudyTime"):
                    where.append("study_time = ?")
                    args.append(str(value["DICOMStudyTime"]))
            else:
                raise datastore_error(VALIDATION, f"Cannot search by {attr}")
        elif operator == "BETWEEN":
            if len(values) != 2:
                raise datastore_error(VALIDATION, "BETWEEN takes exactly two values")
            low, high = values[0][attr], values[1][attr]
            if attr in ("createdAt", "updatedAt"):
                where.append(f"{_SORT_COLUMNS[attr]} BETWEEN ? AND ?")
                args.extend([epoch(low), epoch(high)])
            elif attr == "DICOMStudyDateAndTime":
                where.append("study_date || study_time BETWEEN ? AND ?")
                args.append(str(low.get("DICOMStudyDate", "")) + str(low.get("DICOMStudyTime", "")))
                args.append(
                    str(high.get("DICOMStudyDate", "")) + str(high.get("DICOMStudyTime") or "~")
                )
            else:
                raise datastore_error(VALIDATION, f"BETWEEN does not apply to {attr}")
        else:
            raise datastore_error(VALIDATION, f"Unknown search operator {operator!r}")
    sort = criteria.get("sort")
    column, order = "updated_at", "DESC"
    if sort:
        column = _SORT_COLUMNS[sort["sortField"]]
        order = "ASC" if sort["sortOrder"] == "ASC" else "DESC"
    offset = decode_token(next_token)
    limit = max_results or 50
    sql = "SELECT image_set_id, version, created_at, updated_at, is_primary, tags FROM image_sets"
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += f" ORDER BY {column} {order}, image_set_id LIMIT ? OFFSET ?"
    rows = db.conn().execute(sql, [*args, limit + 1, offset]).fetchall()
    summaries = [
        {
            "imageSetId": image_set_id,
            "version": int(version),
            "createdAt": ts(created),
            "updatedAt": ts(updated),
            "isPrimary": bool(is_primary),
            "storageTier": "FREQUENT_ACCESS",
            "DICOMTags": json.loads(tags),
        }
        for image_set_id, version, created, updated, is_primary, tags in rows[:limit]
    ]
    out: dict[str, Any] = {"imageSetsMetadataSummaries": summaries}
    if sort:
        out["sort"] = {"sortOrder": order, "sortField": sort["sortField"]}
    if len(rows) > limit:
        out["nextToken"] = encode_token(offset + limit)
    return out
