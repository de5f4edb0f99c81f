"""Image sets (understanding-image-sets.html): placing imported instances, and reading image
sets, their versions, metadata and frames back.

One image set per DICOM series. The first import of a series makes a *primary* image set; later
imports that do not conflict are merged into it as a new version (an instance imported again
replaces its older copy). Data whose study or series elements conflict with the primary image
sets already there (the elements HealthImaging groups by: Study Date, Accession Number, Patient
ID, Study ID across the study's primary image sets; Series Number within the series) lands in a
new *non-primary* image set (`isPrimary: false`).

Metadata (GetImageSetMetadata) is gzip JSON with `SchemaVersion`, `DatastoreID`, `ImageSetID`,
`Patient.DICOM`, `Study.DICOM`, `Study.Series.{SeriesUID}.DICOM`,
`...Instances.{SOPUID}.DICOM`, `...Instances.{SOPUID}.StoredTransferSyntaxUID` and
`...Instances.{SOPUID}.ImageFrames[]`; every version's document is kept.
"""

from __future__ import annotations

import gzip
import json
import sqlite3
import time
import uuid
from collections.abc import Callable
from typing import Any

from .api_values import decode_token, encode_token, ts
from .database import Database
from .errors import INTERNAL, NOT_FOUND, VALIDATION, datastore_error
from .frames import FrameStore
from .ingest import Instance
from .metadata import dicom_tags, norm


class ImageSets:
    """The image sets of datastore `datastore_id`; `arn(image_set_id)` names one."""

    def __init__(
        self,
        db: Database,
        datastore_id: str,
        frames: FrameStore,
        arn: Callable[[str], str],
    ) -> None:
        self.db = db
        self.datastore_id = datastore_id
        self.frames = frames
        self._arn = arn

    # -- reads ---------------------------------------------------------------------------------

    def _image_set_row(self, image_set_id: str) -> sqlite3.Row | tuple[Any, ...]:
        row = (
            self.db.conn()
            .execute(
                "SELECT image_set_id, is_primary, version, created_at, updated_at, tags "
                "FROM image_sets WHERE image_set_id = ?",
                (image_set_id,),
            )
            .fetchone()
        )
        if row is None:
            raise datastore_error(NOT_FOUND, f"Image set {image_set_id} does not exist")
        return row

    def _version_row(self, image_set_id: str, version: str | int | None) -> tuple[Any, ...]:
        db = self.db.conn()
        if version is None:
            row = db.execute(
                "SELECT version, created_at, is_primary FROM image_set_versions "
                "WHERE image_set_id = ? ORDER BY version DESC LIMIT 1",
                (image_set_id,),
            ).fetchone()
        else:
            try:
                number = int(version)
            except ValueError as exc:
                raise datastore_error(VALIDATION, "version must be a number") from exc
            row = db.execute(
                "SELECT version, created_at, is_primary FROM image_set_versions "
                "WHERE image_set_id = ? AND version = ?",
                (image_set_id, number),
            ).fetchone()
        if row is None:
            raise datastore_error(
                NOT_FOUND, f"Version {version} of image set {image_set_id} does not exist"
            )
        return tuple(row)

    def get(self, image_set_id: str, version_id: str | None = None) -> dict[str, Any]:
        """GetImageSet."""

        first = self._image_set_row(image_set_id)
        version, created, is_primary = self._version_row(image_set_id, version_id)
        return {
            "datastoreId": self.datastore_id,
            "imageSetId": image_set_id,
            "versionId": str(version),
            "imageSetState": "ACTIVE",
            "imageSetWorkflowStatus": "IMPORTED",
            "createdAt": ts(first[3]),
            "updatedAt": ts(created),
            "imageSetArn": self._arn(image_set_id),
            "isPrimary": bool(is_primary),
            "storageTier": "FREQUENT_ACCESS",
        }

    def metadata_blob(self, image_set_id: str, version_id: str | None = None) -> bytes:
        """GetImageSetMetadata: the gzip-compressed JSON document."""

        self._image_set_row(image_set_id)
        version = self._version_row(image_set_id, version_id)[0]
        row = (
            self.db.conn()
            .execute(
                "SELECT metadata FROM image_set_versions WHERE image_set_id = ? AND version = ?",
                (image_set_id, version),
            )
            .fetchone()
        )
        return bytes(row[0])

    def frame(self, image_set_id: str, image_frame_id: str) -> tuple[bytes, str]:
        """GetImageFrame: the stored frame and its content type."""

        self._image_set_row(image_set_id)
        row = (
            self.db.conn()
            .execute(
                "SELECT path, content_type FROM frames WHERE frame_id = ? AND image_set_id = ?",
                (image_frame_id, image_set_id),
            )
            .fetchone()
        )
        if row is None:
            raise datastore_error(
                NOT_FOUND,
                f"Image frame {image_frame_id} does not exist in image set {image_set_id}",
            )
        try:
            data = self.frames.read(row[0])
        except OSError as exc:
            raise datastore_error(INTERNAL, "The image frame could not be read") from exc
        return data, str(row[1])

    def versions(
        self,
        image_set_id: str,
        *,
        max_results: int | None = None,
        next_token: str | None = None,
    ) -> dict[str, Any]:
        """ListImageSetVersions: newest first."""

        first = self._image_set_row(image_set_id)
        offset = decode_token(next_token)
        limit = max_results or 50
        rows = (
            self.db.conn()
            .execute(
                "SELECT version, created_at, is_primary FROM image_set_versions "
                "WHERE image_set_id = ? ORDER BY version DESC LIMIT ? OFFSET ?",
                (image_set_id, limit + 1, offset),
            )
            .fetchall()
        )
        items = [
            {
                "imageSetId": image_set_id,
                "versionId": str(version),
                "imageSetState": "ACTIVE",
                "ImageSetWorkflowStatus": "IMPORTED",
                "createdAt": ts(first[3]),
                "updatedAt": ts(created),
                "isPrimary": bool(is_primary),
            }
            for version, created, is_primary in rows[:limit]
        ]
        out: dict[str, Any] = {"imageSetPropertiesList": items}
        if len(rows) > limit:
            out["nextToken"] = encode_token(offset + limit)
        return out

    # -- placing imported instances ---------------------------------------------------------

    def place(
        self, instances: list[Instance], job_id: str
    ) -> list[tuple[Instance, tuple[str, int, bool]]]:
        """Put every instance into an image set; returns (instance, (id, version, primary))."""
        by_series: dict[tuple[str, str], list[Instance]] = {}
        for inst in instances:
            by_series.setdefault((inst.study_uid, inst.series_uid), []).append(inst)
        placed: dict[int, tuple[str, int, bool]] = {}
        for (study_uid, series_uid), members in by_series.items():
            with self.db.write() as db:
                groups: dict[tuple[tuple[str, ...], tuple[str, ...]], list[Instance]] = {}
                for inst in members:
                    groups.setdefault((inst.study_signature, inst.series_signature), []).append(
                        inst
                    )
                primary = db.execute(
                    "SELECT image_set_id, version, patient_id, study_date, accession, study_id, "
                    "series_number FROM image_sets "
                    "WHERE study_uid = ? AND series_uid = ? AND is_primary = 1",
                    (study_uid, series_uid),
                ).fetchone()
                others = {
                    tuple(r)
                    for r in db.execute(
                        "SELECT patient_id, study_date, accession, study_id FROM image_sets "
                        "WHERE study_uid = ? AND series_uid != ? AND is_primary = 1",
                        (study_uid, series_uid),
                    ).fetchall()
                }
                for (study_sig, series_sig), group in groups.items():
                    if primary is not None:
                        target_sig = (tuple(primary[2:6]), (primary[6],))
                        if (study_sig, series_sig) == target_sig:
                            ident = self._add_version(
                                db, primary[0], int(primary[1]), group, job_id
                            )
                            primary = (primary[0], ident[1], *primary[2:])
                        else:
                            ident = self._new_image_set(db, group, job_id, is_primary=False)
                    elif all(o == study_sig for o in others):
                        ident = self._new_image_set(db, group, job_id, is_primary=True)
                        primary = (ident[0], ident[1], *study_sig, *series_sig)
                    else:
                        ident = self._new_image_set(db, group, job_id, is_primary=False)
                    for inst in group:
                        placed[id(inst)] = ident
        return [(inst, placed[id(inst)]) for inst in instances if id(inst) in placed]

    def _apply(self, metadata: dict[str, Any], group: list[Instance]) -> None:
        for inst in group:
            metadata["Patient"]["DICOM"].update(inst.levels["patient"])
            metadata["Study"]["DICOM"].update(inst.levels["study"])
            series = metadata["Study"]["Series"].setdefault(
                inst.series_uid, {"DICOM": {}, "Instances": {}}
            )
            series["DICOM"].update(inst.levels["series"])
            series["Instances"][inst.sop_uid] = {
                "DICOM": inst.levels["instance"],
                "StoredTransferSyntaxUID": inst.stored_ts,
                "ImageFrames": [frame.meta for frame in inst.frames],
            }

    def _save_version(
        self,
        db: sqlite3.Connection,
        image_set_id: str,
        version: int,
        metadata: dict[str, Any],
        group: list[Instance],
        job_id: str,
        *,
        is_primary: bool,
        created_at: float,
    ) -> None:
        now = time.time()
        blob = gzip.compress(json.dumps(metadata, separators=(",", ":")).encode(), mtime=0)
        db.execute(
            "INSERT INTO image_set_versions (image_set_id, version, created_at, is_primary, "
            "job_id, metadata) VALUES (?, ?, ?, ?, ?, ?)",
            (image_set_id, version, now, int(is_primary), job_id, blob),
        )
        for inst in group:
            for frame in inst.frames:
                db.execute(
                    "INSERT OR REPLACE INTO frames (frame_id, image_set_id, path, "
                    "transfer_syntax, content_type) VALUES (?, ?, ?, ?, ?)",
                    (
                        frame.frame_id,
                        image_set_id,
                        frame.path,
                        inst.stored_ts,
                        inst.content_type,
                    ),
                )
        patient = metadata["Patient"]["DICOM"]
        study = metadata["Study"]["DICOM"]
        series_uid, series_entry = next(iter(metadata["Study"]["Series"].items()))
        series = series_entry["DICOM"]
        study_uid = norm(study.get("StudyInstanceUID"))
        tags = dicom_tags(patient, study, series_uid, series)
        db.execute(
            "INSERT OR REPLACE INTO image_sets (image_set_id, study_uid, series_uid, is_primary, "
            "version, created_at, updated_at, patient_id, accession, study_id, study_date, "
            "study_time, series_number, tags) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                image_set_id,
                study_uid,
                series_uid,
                int(is_primary),
                version,
                created_at,
                now,
                norm(patient.get("PatientID")),
                norm(study.get("AccessionNumber")),
                norm(study.get("StudyID")),
                norm(study.get("StudyDate")),
                norm(study.get("StudyTime")),
                norm(series.get("SeriesNumber")),
                json.dumps(tags),
            ),
        )

    def _new_image_set(
        self, db: sqlite3.Connection, group: list[Instance], job_id: str, *, is_primary: bool
    ) -> tuple[str, int, bool]:
        image_set_id = uuid.uuid4().hex
        metadata: dict[str, Any] = {
            "SchemaVersion": "1.1",
            "DatastoreID": self.datastore_id,
            "ImageSetID": image_set_id,
            "Patient": {"DICOM": {}},
            "Study": {"DICOM": {}, "Series": {}},
        }
        self._apply(metadata, group)
        self._save_version(
            db,
            image_set_id,
            1,
            metadata,
            group,
            job_id,
            is_primary=is_primary,
            created_at=time.time(),
        )
        return image_set_id, 1, is_primary

    def _add_version(
        self,
        db: sqlite3.Connection,
        image_set_id: str,
        version: int,
        group: list[Instance],
        job_id: str,
    ) -> tuple[str, int, bool]:
        row = db.execute(
            "SELECT v.metadata, s.created_at FROM image_set_versions v JOIN image_sets s "
            "ON s.image_set_id = v.image_set_id WHERE v.image_set_id = ? AND v.version = ?",
            (image_set_id, version),
        ).fetchone()
        metadata = json.loads(gzip.decompress(row[0]))
        self._apply(metadata, group)
        self._save_version(
            db,
            image_set_id,
            version + 1,
            metadata,
            group,
            job_id,
            is_primary=True,
            created_at=float(row[1]),
        )
        return image_set_id, version + 1, True
