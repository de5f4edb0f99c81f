"""`LocalDatastore`: the embedded datastore's face, the Datastore port and HealthImaging's
operations, wired from the parts of this package (see its documentation)."""

from __future__ import annotations

import gzip
import json
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from store_scp.datastore.base import ImportJob, JobStatus
from store_scp.storage.base import ObjectStore

from .api_values import ts
from .database import Database
from .faults import FaultHooks
from .frames import FrameStore, htj2k_codec
from .image_sets import ImageSets
from .importer import Importer, JobQuotas
from .jobs import JobRunner, JobTable, StartThrottle, default_job_threads, job_output_uri
from .object_stores import ObjectStoresByUri
from .search import search_image_sets

#: The embedded datastore's id unless told otherwise (HealthImaging ids are `[0-9a-z]{32}`).
DEFAULT_DATASTORE_ID = "5c9d1ca15707e0000000000000000001"

_GIB = 1024**3


class LocalDatastore(FaultHooks):
    """A HealthImaging-compatible datastore in a folder (see the package documentation).

    `store_for_uri(uri)` maps an input or output URI to `(ObjectStore, key prefix)`; the
    default understands `file://` URIs inside a LocalObjectStore's `objects/` folder and
    `s3://bucket/prefix/` (through S3ObjectStore, at `s3_endpoint_url` if given).

    `lossless_format`: "auto" (HTJ2K when imagecodecs can encode it, else the original
    encoding), "htj2k" (required: raises if the encoder is missing) or "original".

    `run_jobs=False` makes an instance that only submits and reads (another process runs the
    jobs); `job_threads` run them (0: `default_job_threads()`). `fsync=False` skips fsyncs of
    frame files (benchmarks only).
    """

    def __init__(
        self,
        root: Path,
        datastore_id: str = DEFAULT_DATASTORE_ID,
        *,
        store_for_uri: Callable[[str], tuple[ObjectStore, str]] | None = None,
        lossless_format: Literal["auto", "htj2k", "original"] = "auto",
        datastore_name: str = "store-scp-local",
        region: str = "us-east-1",
        account_id: str = "000000000000",
        run_jobs: bool = True,
        job_threads: int = 0,
        poll_interval: float = 0.2,
        max_concurrent_jobs: int = 100,
        max_files_per_job: int = 5000,
        max_bytes_per_job: int = 10 * _GIB,
        max_file_bytes: int = 4 * _GIB,
        max_nested_folders: int = 10_000,
        start_rate: float | None = None,
        start_burst: int = 10,
        s3_endpoint_url: str | None = None,
        fsync: bool = True,
    ) -> None:
        if not re.fullmatch(r"[0-9a-z]{32}", datastore_id):
            raise ValueError("datastore_id must be 32 characters of [0-9a-z]")
        if lossless_format not in ("auto", "htj2k", "original"):
            raise ValueError(f"unknown lossless_format {lossless_format!r}")
        codec = htj2k_codec()
        if lossless_format == "htj2k" and codec is None:
            raise ValueError("lossless_format='htj2k' needs imagecodecs with HTJ2K support")
        super().__init__()
        self.root = Path(root).absolute()
        self.datastore_id = datastore_id
        self.datastore_name = datastore_name
        self.region = region
        self.account_id = account_id
        self.fsync = fsync
        self._frames = FrameStore(
            self.root / "frames", codec if lossless_format != "original" else None, fsync=fsync
        )
        self._db = Database(self.root / "datastore.sqlite3", fsync=fsync)
        self._stores = ObjectStoresByUri(self.root, s3_endpoint_url=s3_endpoint_url, fsync=fsync)
        self._store_for_uri = store_for_uri or self._stores.resolve
        self._jobs = JobTable(
            self._db,
            datastore_id,
            max_concurrent_jobs=max_concurrent_jobs,
            throttle=StartThrottle(start_rate, start_burst),
        )
        self._image_sets = ImageSets(self._db, datastore_id, self._frames, self._arn)
        self._created_at = time.time()
        first = self._jobs.first_submitted_at()
        if first is not None:
            self._created_at = min(self._created_at, first)
        self._stopping = threading.Event()
        importer = Importer(
            datastore_id=datastore_id,
            jobs=self._jobs,
            image_sets=self._image_sets,
            frames=self._frames,
            resolve=self._store_for_uri,
            faults=self,
            quotas=JobQuotas(
                max_files_per_job=max_files_per_job,
                max_bytes_per_job=max_bytes_per_job,
                max_file_bytes=max_file_bytes,
                max_nested_folders=max_nested_folders,
            ),
            stopping=self._stopping,
        )
        self._runner = JobRunner(
            self._jobs,
            self.root / "runners",
            importer.run,
            held=lambda: self.jobs_held,
            stopping=self._stopping,
            threads=job_threads or default_job_threads(),
            poll_interval=poll_interval,
        )
        if run_jobs:
            self._runner.start()

    def __repr__(self) -> str:
        return f"LocalDatastore(root={str(self.root)!r}, datastore_id={self.datastore_id!r})"

    def __enter__(self) -> LocalDatastore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def stores_frames_as(self) -> str:
        """ "htj2k" when frames are transcoded to HTJ2K lossless RPCL, else "original"."""
        return "htj2k" if self._frames.codec is not None else "original"

    def close(self) -> None:
        """Stop the job runner (running jobs finish first) and close the database."""
        self._runner.stop()
        self._frames.close()
        self._stores.close()
        self._db.close()

    def _faults_changed(self) -> None:
        self._runner.wake()

    # -- the Datastore port ------------------------------------------------------------------

    def start_import_job(
        self,
        *,
        job_name: str,
        client_token: str,
        input_uri: str,
        output_uri: str,
        role_arn: str,
    ) -> str:
        resp = self.start_dicom_import_job(
            job_name=job_name,
            client_token=client_token,
            input_uri=input_uri,
            output_uri=output_uri,
            role_arn=role_arn,
        )
        return str(resp["jobId"])

    def get_import_job(self, job_id: str) -> ImportJob:
        self.check_fault("GetDICOMImportJob")
        row = self._jobs.row(job_id)
        return ImportJob(
            job_id=row["job_id"],
            job_name=row["job_name"],
            status=JobStatus(row["status"]),
            input_uri=row["input_uri"],
            output_uri=row["output_uri"],
            submitted_at=row["submitted_at"],
            ended_at=row["ended_at"],
            message=row["message"] or "",
        )

    def job_output_prefix(self, job: ImportJob) -> str:
        return job_output_uri(job.output_uri, self.datastore_id, job.job_id)

    # -- HealthImaging operations (response shapes of botocore's medical-imaging model) ------

    def _arn(self, image_set_id: str | None = None) -> str:
        arn = f"arn:aws:medical-imaging:{self.region}:{self.account_id}:datastore/"
        arn += self.datastore_id
        return arn + (f"/imageset/{image_set_id}" if image_set_id else "")

    def datastore_properties(self) -> dict[str, Any]:
        """GetDatastore's `datastoreProperties`."""
        return {
            "datastoreId": self.datastore_id,
            "datastoreName": self.datastore_name,
            "datastoreStatus": "ACTIVE",
            "losslessStorageFormat": "HTJ2K",
            "datastoreArn": self._arn(),
            "createdAt": ts(self._created_at),
            "updatedAt": ts(self._created_at),
        }

    def start_dicom_import_job(
        self,
        *,
        job_name: str | None,
        client_token: str,
        input_uri: str,
        output_uri: str,
        role_arn: str,
    ) -> dict[str, Any]:
        """StartDICOMImportJob: the job is SUBMITTED and runs in the background."""
        self.check_fault("StartDICOMImportJob")
        resp = self._jobs.start(
            job_name=job_name,
            client_token=client_token,
            input_uri=input_uri,
            output_uri=output_uri,
            role_arn=role_arn,
        )
        self._runner.wake()
        return resp

    def get_dicom_import_job(self, job_id: str) -> dict[str, Any]:
        """GetDICOMImportJob's `jobProperties`."""
        self.check_fault("GetDICOMImportJob")
        return self._jobs.properties(job_id)

    def list_dicom_import_jobs(
        self,
        *,
        job_status: str | None = None,
        max_results: int | None = None,
        next_token: str | None = None,
    ) -> dict[str, Any]:
        """ListDICOMImportJobs: newest first."""
        self.check_fault("ListDICOMImportJobs")
        return self._jobs.summaries(
            job_status=job_status, max_results=max_results, next_token=next_token
        )

    def get_image_set(self, image_set_id: str, version_id: str | None = None) -> dict[str, Any]:
        """GetImageSet."""
        self.check_fault("GetImageSet")
        return self._image_sets.get(image_set_id, version_id)

    def get_image_set_metadata(self, image_set_id: str, version_id: str | None = None) -> bytes:
        """GetImageSetMetadata: the gzip-compressed JSON document."""
        self.check_fault("GetImageSetMetadata")
        return self._image_sets.metadata_blob(image_set_id, version_id)

    def image_set_metadata(
        self, image_set_id: str, version_id: str | None = None
    ) -> dict[str, Any]:
        """The metadata document, decompressed and parsed (a convenience, not an API call)."""
        return dict(
            json.loads(gzip.decompress(self.get_image_set_metadata(image_set_id, version_id)))
        )

    def get_image_frame(self, image_set_id: str, image_frame_id: str) -> tuple[bytes, str]:
        """GetImageFrame: the stored frame and its content type."""
        self.check_fault("GetImageFrame")
        return self._image_sets.frame(image_set_id, image_frame_id)

    def list_image_set_versions(
        self,
        image_set_id: str,
        *,
        max_results: int | None = None,
        next_token: str | None = None,
    ) -> dict[str, Any]:
        """ListImageSetVersions: newest first."""
        self.check_fault("ListImageSetVersions")
        return self._image_sets.versions(
            image_set_id, max_results=max_results, next_token=next_token
        )

    def search_image_sets(
        self,
        search_criteria: dict[str, Any] | None = None,
        *,
        max_results: int | None = None,
        next_token: str | None = None,
    ) -> dict[str, Any]:
        """SearchImageSets: filters are ANDed; EQUAL on the DICOM ids and `isPrimary`,
        EQUAL or BETWEEN on `createdAt`, `updatedAt` and `DICOMStudyDateAndTime`."""
        self.check_fault("SearchImageSets")
        return search_image_sets(
            self._db, search_criteria, max_results=max_results, next_token=next_token
        )
