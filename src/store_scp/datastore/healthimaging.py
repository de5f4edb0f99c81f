"""Datastore adapter for AWS HealthImaging, through `boto3.client("medical-imaging")`.

The same adapter drives the real service and the embedded datastore's HTTP API
(`store_scp.datastore.api`): give `endpoint_url` for the latter. botocore sends the image-set
operations to a `runtime-` host prefix; with an `endpoint_url` the prefix is turned off
(`Config(inject_host_prefix=False)`), so one local endpoint serves every operation.

Errors become `DatastoreError(code, message, retryable=...)`: throttling, quota, conflict,
internal errors, any other 5xx and connection failures are retryable; validation, not found and
access denied are not. There is no retry loop here, and botocore's own retries are off by
default (`sdk_retries=0`): the pipeline retries with backoff and jitter, and one loop is enough.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, ParamValidationError

from store_scp.datastore.base import DatastoreError, ImportJob, JobStatus

__all__ = ["HealthImagingDatastore", "to_datastore_error"]

_RETRYABLE_CODES = frozenset(
    {
        "ThrottlingException",
        "ServiceQuotaExceededException",
        "ConflictException",
        "InternalServerException",
        "ServiceUnavailableException",
        "RequestTimeout",
        "RequestTimeoutException",
    }
)
_PERMANENT_CODES = frozenset(
    {"ValidationException", "ResourceNotFoundException", "AccessDeniedException"}
)


def to_datastore_error(exc: ClientError | BotoCoreError) -> DatastoreError:
    """A botocore error as a DatastoreError with the right `retryable`."""
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        code = str(error.get("Code") or "Unknown")
        message = str(error.get("Message") or exc)
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        if code in _PERMANENT_CODES:
            retryable = False
        else:
            retryable = code in _RETRYABLE_CODES or status >= 500 or status == 429
        return DatastoreError(code, message, retryable=retryable)
    # No answer at all (connection refused or reset, timeout): the same call may work later.
    if isinstance(exc, ParamValidationError):
        # Our own request is wrong (e.g. no data-access role ARN configured): retrying the
        # same call can never succeed.
        return DatastoreError("ValidationException", str(exc), retryable=False)
    return DatastoreError(type(exc).__name__, str(exc), retryable=True)


def _epoch(value: Any) -> float | None:
    if isinstance(value, datetime):
        return value.timestamp()
    if isinstance(value, int | float):
        return float(value)
    return None


class HealthImagingDatastore:
    """The Datastore port on `boto3.client("medical-imaging")`."""

    def __init__(
        self,
        datastore_id: str,
        *,
        client: Any = None,
        endpoint_url: str | None = None,
        region: str | None = None,
        sdk_retries: int = 0,
        connect_timeout: float = 10.0,
        read_timeout: float = 60.0,
    ) -> None:
        self.datastore_id = datastore_id
        if client is None:
            config = Config(
                retries={"total_max_attempts": 1 + sdk_retries, "mode": "standard"},
                connect_timeout=connect_timeout,
                read_timeout=read_timeout,
                inject_host_prefix=endpoint_url is None,
            )
            client = boto3.client(
                "medical-imaging", endpoint_url=endpoint_url, region_name=region, config=config
            )
        self.client = client

    def __repr__(self) -> str:
        return f"HealthImagingDatastore(datastore_id={self.datastore_id!r})"

    def start_import_job(
        self,
        *,
        job_name: str,
        client_token: str,
        input_uri: str,
        output_uri: str,
        role_arn: str,
    ) -> str:
        try:
            resp = self.client.start_dicom_import_job(
                jobName=job_name,
                clientToken=client_token,
                datastoreId=self.datastore_id,
                dataAccessRoleArn=role_arn,
                inputS3Uri=input_uri,
                outputS3Uri=output_uri,
            )
        except (ClientError, BotoCoreError) as exc:
            raise to_datastore_error(exc) from exc
        return str(resp["jobId"])

    def get_import_job(self, job_id: str) -> ImportJob:
        try:
            resp = self.client.get_dicom_import_job(datastoreId=self.datastore_id, jobId=job_id)
        except (ClientError, BotoCoreError) as exc:
            raise to_datastore_error(exc) from exc
        props = resp["jobProperties"]
        return ImportJob(
            job_id=str(props["jobId"]),
            job_name=str(props.get("jobName", "")),
            status=JobStatus(props["jobStatus"]),
            input_uri=str(props.get("inputS3Uri", "")),
            output_uri=str(props.get("outputS3Uri", "")),
            submitted_at=_epoch(props.get("submittedAt")),
            ended_at=_epoch(props.get("endedAt")),
            message=str(props.get("message") or ""),
        )

    def job_output_prefix(self, job: ImportJob) -> str:
        return f"{job.output_uri.rstrip('/')}/{self.datastore_id}-DicomImport-{job.job_id}/"
