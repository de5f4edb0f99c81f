"""The Datastore port: where import jobs turn batches of DICOM files into image sets.

Adapters: datastore.healthimaging (AWS HealthImaging through boto3, also pointed at the
embedded datastore's own HTTP API) and datastore.local (the embedded HealthImaging-compatible
datastore, in process). The pipeline reads job outputs through the ObjectStore, exactly where
HealthImaging writes them: `{output_uri}/{datastore_id}-DicomImport-{job_id}/`.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol


class JobStatus(StrEnum):
    SUBMITTED = "SUBMITTED"
    IN_PROGRESS = "IN_PROGRESS"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"


class DatastoreError(Exception):
    """A call the datastore refused or could not answer. `retryable` says whether the same
    call may succeed later (throttling, quota, conflict with a job still starting, 5xx)."""

    def __init__(self, code: str, message: str, *, retryable: bool) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.retryable = retryable


@dataclass(frozen=True, slots=True)
class ImportJob:
    job_id: str
    job_name: str
    status: JobStatus
    input_uri: str
    output_uri: str
    submitted_at: float | None = None
    ended_at: float | None = None
    message: str = ""


class Datastore(Protocol):
    datastore_id: str

    def start_import_job(
        self,
        *,
        job_name: str,
        client_token: str,
        input_uri: str,
        output_uri: str,
        role_arn: str,
    ) -> str:
        """Start an import of every DICOM file under `input_uri`; returns the job id. The same
        `client_token` never starts a second job. Raises DatastoreError."""
        ...

    def get_import_job(self, job_id: str) -> ImportJob:
        """The job's current status. Raises DatastoreError."""
        ...

    def job_output_prefix(self, job: ImportJob) -> str:
        """Where the job's outputs are: `{output_uri}/{datastore_id}-DicomImport-{job_id}/`."""
        ...
