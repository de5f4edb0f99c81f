"""The embedded datastore's HealthImaging API over real HTTP: boto3's medical-imaging client and
the HealthImagingDatastore adapter against it, errors parsed by botocore into the model's
exception classes, requests and responses held to the model. No mocks of boto3."""

from __future__ import annotations

import asyncio
import gzip
import io
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import numpy as np
import pydicom
import pytest
from botocore.exceptions import ClientError
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.pixels import iter_pixels
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

from store_scp.datastore.api import check_shape, service_model, start_api_server
from store_scp.datastore.base import DatastoreError, JobStatus
from store_scp.datastore.healthimaging import HealthImagingDatastore, to_datastore_error
from store_scp.datastore.local import EXPLICIT_VR_LITTLE_ENDIAN, LocalDatastore
from store_scp.storage.local import LocalObjectStore
from tests.framedecode import decode_stored_frame
from tests.healthimaging_client import local_client
from tests.integration.moto_server import aws_env, moto_endpoint  # noqa: F401

ROLE = "arn:aws:iam::123456789012:role/store-scp-import"


def bundled_file(name: str) -> Path:
    """A test file shipped inside pydicom's own package."""
    path = get_testdata_file(name)
    assert isinstance(path, str), name
    return Path(path)


TIMEOUT_S = 30.0


@dataclass
class Api:
    url: str
    datastore: LocalDatastore
    store: LocalObjectStore

    @property
    def datastore_id(self) -> str:
        return self.datastore.datastore_id


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    root = tmp_path_factory.mktemp("healthimaging-api")
    store = LocalObjectStore(root / "store", fsync=False)
    datastore = LocalDatastore(root / "datastore", poll_interval=0.02, fsync=False)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="api-loop", daemon=True)
    thread.start()
    runner, port = asyncio.run_coroutine_threadsafe(
        start_api_server(datastore, "127.0.0.1", 0, test_hooks=True), loop
    ).result(10)
    try:
        yield Api(f"http://127.0.0.1:{port}", datastore, store)
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
        datastore.close()


@pytest.fixture(autouse=True)
def _no_faults_left(api: Api) -> Iterator[None]:
    yield
    api.datastore.clear_faults()


@pytest.fixture
def client(api: Api) -> Any:
    return local_client(api.url, retries={"total_max_attempts": 1})


@pytest.fixture
def adapter(api: Api, aws_env: dict[str, str]) -> HealthImagingDatastore:  # noqa: F811
    return HealthImagingDatastore(api.datastore_id, endpoint_url=api.url, region="us-east-1")


def p10(study_uid: str, series_uid: str, *, frames: int = 1, seed: int = 0) -> bytes:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = UID("1.2.840.10008.5.1.4.1.1.2")
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
    ds.PatientID, ds.PatientName, ds.Modality, ds.SeriesNumber = "PAT-HTTP", "DOE^JOHN", "CT", 3
    ds.Rows, ds.Columns, ds.NumberOfFrames = 20, 30, frames
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    arr = np.random.default_rng(seed).integers(0, 4095, (frames, 20, 30), dtype="<u2")
    ds.PixelData = arr.tobytes()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def put(store: LocalObjectStore, key: str, data: bytes) -> None:
    staging = store.staging_dir / f"{generate_uid()}.part"
    staging.write_bytes(data)
    store.commit(staging, key)


def wait_completed(client: Any, datastore_id: str, job_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + TIMEOUT_S
    while True:
        props = client.get_dicom_import_job(datastoreId=datastore_id, jobId=job_id)
        props = props["jobProperties"]
        if props["jobStatus"] in ("COMPLETED", "FAILED"):
            return dict(props)
        assert time.monotonic() < deadline
        time.sleep(0.02)


def error_of(exc: ClientError) -> tuple[str, int, str]:
    resp = exc.response
    headers = resp["ResponseMetadata"]["HTTPHeaders"]
    return (
        resp["Error"]["Code"],
        resp["ResponseMetadata"]["HTTPStatusCode"],
        headers.get("x-amzn-errortype", ""),
    )


# --- the operations --------------------------------------------------------------------------


def test_import_search_metadata_and_frames_through_boto3(api: Api, client: Any) -> None:
    study, series = generate_uid(), generate_uid()
    sources: dict[str, bytes] = {
        "ct.dcm": Path(bundled_file("CT_small.dcm")).read_bytes(),
        "jpeg.dcm": Path(bundled_file("SC_rgb_jpeg_dcmtk.dcm")).read_bytes(),
        "multi.dcm": p10(study, series, frames=3, seed=1),
        "single.dcm": p10(study, series, seed=2),
    }
    for name, data in sources.items():
        put(api.store, f"http1/{name}", data)

    started = client.start_dicom_import_job(
        jobName="http1",
        clientToken="http1-token",
        datastoreId=api.datastore_id,
        dataAccessRoleArn=ROLE,
        inputS3Uri=api.store.uri("http1/"),
        outputS3Uri=api.store.uri("outputs/"),
    )
    assert started["jobStatus"] == "SUBMITTED" and started["datastoreId"] == api.datastore_id
    assert started["submittedAt"].year >= 2024
    props = wait_completed(client, api.datastore_id, started["jobId"])
    assert props["jobStatus"] == "COMPLETED"
    assert props["jobName"] == "http1" and props["dataAccessRoleArn"] == ROLE
    assert props["inputS3Uri"] == api.store.uri("http1/")
    assert props["endedAt"] >= props["submittedAt"]

    jobs = client.list_dicom_import_jobs(datastoreId=api.datastore_id, jobStatus="COMPLETED")
    assert started["jobId"] in {j["jobId"] for j in jobs["jobSummaries"]}
    paginator = client.get_paginator("list_dicom_import_jobs")
    paged = [
        j["jobId"]
        for page in paginator.paginate(
            datastoreId=api.datastore_id, PaginationConfig={"PageSize": 1}
        )
        for j in page["jobSummaries"]
    ]
    assert started["jobId"] in paged and len(paged) == len(set(paged))

    found = client.search_image_sets(
        datastoreId=api.datastore_id,
        searchCriteria={
            "filters": [{"operator": "EQUAL", "values": [{"DICOMStudyInstanceUID": study}]}]
        },
    )["imageSetsMetadataSummaries"]
    [summary] = found
    assert summary["DICOMTags"]["DICOMSeriesInstanceUID"] == series
    assert summary["isPrimary"] is True and summary["version"] == 1
    by_patient = client.search_image_sets(
        datastoreId=api.datastore_id,
        searchCriteria={
            "filters": [{"operator": "EQUAL", "values": [{"DICOMPatientId": "PAT-HTTP"}]}]
        },
    )["imageSetsMetadataSummaries"]
    assert {s["imageSetId"] for s in by_patient} == {summary["imageSetId"]}
    by_series = client.search_image_sets(
        datastoreId=api.datastore_id,
        searchCriteria={
            "filters": [{"operator": "EQUAL", "values": [{"DICOMSeriesInstanceUID": series}]}]
        },
    )["imageSetsMetadataSummaries"]
    assert [s["imageSetId"] for s in by_series] == [summary["imageSetId"]]
    everything = [
        s["imageSetId"]
        for page in client.get_paginator("search_image_sets").paginate(
            datastoreId=api.datastore_id, PaginationConfig={"PageSize": 1}
        )
        for s in page["imageSetsMetadataSummaries"]
    ]
    assert len(everything) >= 3 and len(everything) == len(set(everything))

    frames_checked = 0
    for image_set_id in everything:
        image_set = client.get_image_set(datastoreId=api.datastore_id, imageSetId=image_set_id)
        assert image_set["imageSetState"] == "ACTIVE" and image_set["versionId"] == "1"
        resp = client.get_image_set_metadata(datastoreId=api.datastore_id, imageSetId=image_set_id)
        assert resp["contentEncoding"] == "gzip"
        assert resp["contentType"] == "application/json"
        metadata = json.loads(gzip.decompress(resp["imageSetMetadataBlob"].read()))
        assert metadata["ImageSetID"] == image_set_id
        for series_entry in metadata["Study"]["Series"].values():
            for sop_uid, instance in series_entry["Instances"].items():
                name = next(
                    n
                    for n, d in sources.items()
                    if pydicom.dcmread(io.BytesIO(d)).SOPInstanceUID == sop_uid
                )
                src = pydicom.dcmread(io.BytesIO(sources[name]))
                want = list(iter_pixels(io.BytesIO(sources[name]), raw=True))
                assert len(instance["ImageFrames"]) == len(want)
                for frame, expected in zip(instance["ImageFrames"], want, strict=True):
                    got = client.get_image_frame(
                        datastoreId=api.datastore_id,
                        imageSetId=image_set_id,
                        imageFrameInformation={"imageFrameId": frame["ID"]},
                    )
                    stored_ts = instance["StoredTransferSyntaxUID"]
                    expected_type = {
                        "1.2.840.10008.1.2.4.202": "image/jph",
                        "1.2.840.10008.1.2.4.50": "image/jpeg",
                        EXPLICIT_VR_LITTLE_ENDIAN: "application/octet-stream",
                    }[stored_ts]
                    assert got["contentType"] == expected_type
                    pixels = decode_stored_frame(src, stored_ts, got["imageFrameBlob"].read())
                    assert np.array_equal(pixels, expected), name
                    frames_checked += 1
        old = client.get_image_set_metadata(
            datastoreId=api.datastore_id, imageSetId=image_set_id, versionId="1"
        )
        assert json.loads(gzip.decompress(old["imageSetMetadataBlob"].read())) == metadata
        with pytest.raises(client.exceptions.ResourceNotFoundException):
            client.get_image_set(
                datastoreId=api.datastore_id, imageSetId=image_set_id, versionId="7"
            )
        versions = client.list_image_set_versions(
            datastoreId=api.datastore_id, imageSetId=image_set_id
        )["imageSetPropertiesList"]
        assert [v["versionId"] for v in versions] == ["1"]
    assert frames_checked == 1 + 1 + 3 + 1

    [ds_summary] = client.list_datastores()["datastoreSummaries"]
    assert ds_summary["datastoreId"] == api.datastore_id
    props = client.get_datastore(datastoreId=api.datastore_id)["datastoreProperties"]
    assert props["datastoreStatus"] == "ACTIVE"


def test_the_adapter_drives_the_local_api(api: Api, adapter: HealthImagingDatastore) -> None:
    put(api.store, "http2/a.dcm", p10(generate_uid(), generate_uid()))
    args = {
        "job_name": "http2",
        "client_token": "http2-token",
        "input_uri": api.store.uri("http2/"),
        "output_uri": api.store.uri("outputs/"),
        "role_arn": ROLE,
    }
    job_id = adapter.start_import_job(**args)
    assert adapter.start_import_job(**args) == job_id  # the client token is idempotent
    deadline = time.monotonic() + TIMEOUT_S
    while (job := adapter.get_import_job(job_id)).status not in (
        JobStatus.COMPLETED,
        JobStatus.FAILED,
    ):
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert job.status == JobStatus.COMPLETED and job.job_name == "http2"
    assert job.submitted_at and job.ended_at and job.ended_at >= job.submitted_at
    assert job.output_uri == api.store.uri("outputs/")
    prefix = adapter.job_output_prefix(job)
    assert prefix == api.datastore.job_output_prefix(api.datastore.get_import_job(job_id))
    key_prefix = f"outputs/{api.datastore_id}-DicomImport-{job_id}/"
    assert prefix.endswith(key_prefix)
    keys = set(api.store.list_keys(key_prefix))
    assert f"{key_prefix}job-output-manifest.json" in keys
    success = api.store.open(f"{key_prefix}SUCCESS/success.ndjson").read().decode().splitlines()
    assert json.loads(success[0])["inputFile"] == "http2/a.dcm"


# --- errors ----------------------------------------------------------------------------------


def test_errors_reach_botocore_as_the_model_exceptions(
    api: Api, client: Any, adapter: HealthImagingDatastore
) -> None:
    put(api.store, "http3/a.dcm", p10(generate_uid(), generate_uid()))
    start = {
        "jobName": "http3",
        "clientToken": "http3-token",
        "datastoreId": api.datastore_id,
        "dataAccessRoleArn": ROLE,
        "inputS3Uri": api.store.uri("http3/"),
        "outputS3Uri": api.store.uri("outputs/"),
    }
    port_args = {
        "job_name": "http3",
        "client_token": "http3-token",
        "input_uri": api.store.uri("http3/"),
        "output_uri": api.store.uri("outputs/"),
        "role_arn": ROLE,
    }

    api.datastore.throttle_next_starts(2)
    with pytest.raises(client.exceptions.ThrottlingException) as thrown:
        client.start_dicom_import_job(**start)
    assert error_of(thrown.value) == ("ThrottlingException", 429, "ThrottlingException")
    with pytest.raises(DatastoreError) as err:
        adapter.start_import_job(**port_args)
    assert err.value.code == "ThrottlingException" and err.value.retryable

    api.datastore.inject_errors("StartDICOMImportJob", "ServiceQuotaExceededException")
    with pytest.raises(DatastoreError) as err:
        adapter.start_import_job(**port_args)
    assert err.value.code == "ServiceQuotaExceededException" and err.value.retryable
    with pytest.raises(client.exceptions.ServiceQuotaExceededException):
        api.datastore.inject_errors("StartDICOMImportJob", "ServiceQuotaExceededException")
        client.start_dicom_import_job(**start)

    job_id = client.start_dicom_import_job(**start)["jobId"]
    with pytest.raises(client.exceptions.ConflictException) as thrown:
        client.start_dicom_import_job(**{**start, "inputS3Uri": api.store.uri("elsewhere/")})
    assert error_of(thrown.value)[:2] == ("ConflictException", 409)
    with pytest.raises(DatastoreError) as err:
        adapter.start_import_job(**{**port_args, "input_uri": api.store.uri("elsewhere/")})
    assert err.value.code == "ConflictException" and err.value.retryable

    with pytest.raises(client.exceptions.ResourceNotFoundException) as thrown:
        client.get_dicom_import_job(datastoreId=api.datastore_id, jobId="0" * 32)
    assert error_of(thrown.value)[:2] == ("ResourceNotFoundException", 404)
    with pytest.raises(DatastoreError) as err:
        adapter.get_import_job("0" * 32)
    assert err.value.code == "ResourceNotFoundException" and not err.value.retryable
    with pytest.raises(client.exceptions.ResourceNotFoundException):
        client.get_dicom_import_job(datastoreId="f" * 32, jobId=job_id)  # another datastore
    with pytest.raises(client.exceptions.ResourceNotFoundException):
        client.get_image_set(datastoreId=api.datastore_id, imageSetId="a" * 32)

    api.datastore.inject_errors("GetDICOMImportJob", "InternalServerException")
    with pytest.raises(DatastoreError) as err:
        adapter.get_import_job(job_id)
    assert err.value.code == "InternalServerException" and err.value.retryable
    # An error the operation does not declare in the model is never served as such.
    api.datastore.inject_errors("GetDICOMImportJob", "ServiceQuotaExceededException")
    with pytest.raises(client.exceptions.InternalServerException) as thrown:
        client.get_dicom_import_job(datastoreId=api.datastore_id, jobId=job_id)
    assert error_of(thrown.value)[1] == 500

    with pytest.raises(client.exceptions.AccessDeniedException) as thrown:
        client.delete_image_set(datastoreId=api.datastore_id, imageSetId="a" * 32)
    assert error_of(thrown.value)[:2] == ("AccessDeniedException", 403)
    mapped = to_datastore_error(thrown.value)
    assert mapped.code == "AccessDeniedException" and not mapped.retryable


def test_requests_are_validated_against_the_model(api: Api, client: Any) -> None:
    def rejected(call: Any, **kwargs: Any) -> str:
        with pytest.raises(client.exceptions.ValidationException) as thrown:
            call(**kwargs)
        code, status, header = error_of(thrown.value)
        assert (code, status, header) == ("ValidationException", 400, "ValidationException")
        return str(thrown.value.response["Error"]["Message"])

    ds_id = api.datastore_id
    assert "BOGUS" in rejected(client.list_dicom_import_jobs, datastoreId=ds_id, jobStatus="BOGUS")
    assert "maximum" in rejected(client.list_dicom_import_jobs, datastoreId=ds_id, maxResults=51)
    assert "pattern" in rejected(client.list_dicom_import_jobs, datastoreId="NOT-AN-ID")
    start = {
        "jobName": "v",
        "clientToken": "v-token",
        "datastoreId": ds_id,
        "dataAccessRoleArn": ROLE,
        "inputS3Uri": api.store.uri("v/"),
        "outputS3Uri": api.store.uri("outputs/"),
    }
    assert "pattern" in rejected(client.start_dicom_import_job, **{**start, "jobName": "bad name!"})
    assert "pattern" in rejected(
        client.start_dicom_import_job, **{**start, "inputS3Uri": "https://example.invalid/x/"}
    )
    assert "pattern" in rejected(
        client.start_dicom_import_job, **{**start, "dataAccessRoleArn": "arn:aws:iam::1:role/x"}
    )
    three = [{"DICOMPatientId": "a"}, {"DICOMPatientId": "b"}, {"DICOMPatientId": "c"}]
    assert "maximum" in rejected(
        client.search_image_sets,
        datastoreId=ds_id,
        searchCriteria={"filters": [{"operator": "BETWEEN", "values": three}]},
    )
    # Within the model but meaningless: the datastore itself refuses it.
    assert "EQUAL" in rejected(
        client.search_image_sets,
        datastoreId=ds_id,
        searchCriteria={"filters": [{"operator": "EQUAL", "values": three[:2]}]},
    )

    # Requests botocore would never send, straight over HTTP.
    url = f"{api.url}/startDICOMImportJob/datastore/{ds_id}"
    for body, expected in (
        (b"not json", "not valid JSON"),
        (json.dumps({"clientToken": "x"}).encode(), "Missing required parameter"),
        (
            json.dumps(
                {**{k: v for k, v in start.items() if k != "datastoreId"}, "extra": 1}
            ).encode(),
            "Unknown parameter",
        ),
    ):
        request = urllib.request.Request(url, data=body, method="POST")
        with pytest.raises(urllib.error.HTTPError) as http_error:
            urllib.request.urlopen(request, timeout=10)
        assert http_error.value.code == 400
        assert http_error.value.headers["x-amzn-ErrorType"] == "ValidationException"
        assert expected in json.loads(http_error.value.read())["message"]
    with pytest.raises(urllib.error.HTTPError) as http_error:
        urllib.request.urlopen(f"{api.url}/no/such/operation", timeout=10)
    assert http_error.value.code == 404
    assert http_error.value.headers["x-amzn-ErrorType"] == "UnknownOperationException"


def test_responses_are_held_to_the_model(
    api: Api, client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = service_model()
    shape = model.operation_model("GetDICOMImportJob").output_shape
    good = {
        "jobProperties": {
            "jobId": "a" * 32,
            "jobName": "j",
            "jobStatus": "COMPLETED",
            "datastoreId": api.datastore_id,
            "dataAccessRoleArn": ROLE,
            "inputS3Uri": "s3://bucket/in/",
            "outputS3Uri": "s3://bucket/out/",
        }
    }
    assert check_shape(shape, good) == []
    bad = {"jobProperties": {**good["jobProperties"], "jobStatus": "DONE", "message": "a;b"}}
    del bad["jobProperties"]["jobName"]
    problems = check_shape(shape, bad)
    assert any("jobStatus" in p for p in problems)
    assert any("jobName" in p for p in problems)
    assert any("message" in p for p in problems)

    # A handler that produced a response outside the model answers InternalServerException.
    monkeypatch.setattr(api.datastore, "get_dicom_import_job", lambda job_id: bad["jobProperties"])
    with pytest.raises(client.exceptions.InternalServerException):
        client.get_dicom_import_job(datastoreId=api.datastore_id, jobId="a" * 32)


def test_an_unreachable_endpoint_is_a_retryable_error(aws_env: dict[str, str]) -> None:  # noqa: F811
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    adapter = HealthImagingDatastore(
        "a" * 32, endpoint_url=f"http://127.0.0.1:{port}", region="us-east-1", connect_timeout=2
    )
    with pytest.raises(DatastoreError) as err:
        adapter.get_import_job("b" * 32)
    assert err.value.retryable


# --- a datastore served by another process ---------------------------------------------------


def test_a_datastore_served_by_a_separate_process(
    tmp_path: Path,
    aws_env: dict[str, str],  # noqa: F811
) -> None:
    store = LocalObjectStore(tmp_path / "store", fsync=False)
    put(store, "p/a.dcm", p10(generate_uid(), generate_uid()))
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "store_scp.datastore.api",
            "--root",
            str(tmp_path / "datastore"),
            "--test-hooks",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
        env=env,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().decode()
        assert line.startswith("listening on http://127.0.0.1:"), line
        url = line.split()[-1]
        adapter = HealthImagingDatastore(
            "5c9d1ca15707e0000000000000000001", endpoint_url=url, region="us-east-1"
        )
        hook = urllib.request.Request(
            f"{url}/_store-scp/test-hooks",
            data=json.dumps({"hook": "throttle_next_starts", "args": {"count": 1}}).encode(),
            method="POST",
        )
        assert urllib.request.urlopen(hook, timeout=10).status == 204
        args = {
            "job_name": "p",
            "client_token": "p",
            "input_uri": store.uri("p/"),
            "output_uri": store.uri("outputs/"),
            "role_arn": ROLE,
        }
        with pytest.raises(DatastoreError) as err:
            adapter.start_import_job(**args)
        assert err.value.code == "ThrottlingException" and err.value.retryable
        job_id = adapter.start_import_job(**args)
        deadline = time.monotonic() + TIMEOUT_S
        while (job := adapter.get_import_job(job_id)).status != JobStatus.COMPLETED:
            assert job.status != JobStatus.FAILED, job.message
            assert time.monotonic() < deadline
            time.sleep(0.05)
        key = f"outputs/{adapter.datastore_id}-DicomImport-{job_id}/job-output-manifest.json"
        manifest = json.loads(store.open(key).read())
        assert manifest["jobSummary"]["numberOfImportedFiles"] == 1
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    assert proc.returncode == 0


# --- S3 input and output -----------------------------------------------------------------------


def test_a_job_reads_and_writes_s3_uris(
    tmp_path: Path,
    aws_env: dict[str, str],  # noqa: F811
    moto_endpoint: str,  # noqa: F811
) -> None:
    s3 = boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1")
    bucket = f"landing-{generate_uid()[-12:].replace('.', '')}"
    s3.create_bucket(Bucket=bucket)
    study, series = generate_uid(), generate_uid()
    s3.put_object(Bucket=bucket, Key="in/b1/a.dcm", Body=p10(study, series))
    s3.put_object(Bucket=bucket, Key="in/b1/junk.bin", Body=b"junk")
    datastore = LocalDatastore(
        tmp_path / "ds", s3_endpoint_url=moto_endpoint, poll_interval=0.02, fsync=False
    )
    try:
        job_id = datastore.start_import_job(
            job_name="s3",
            client_token="s3",
            input_uri=f"s3://{bucket}/in/b1/",
            output_uri=f"s3://{bucket}/out/",
            role_arn=ROLE,
        )
        deadline = time.monotonic() + TIMEOUT_S
        while (job := datastore.get_import_job(job_id)).status not in ("COMPLETED", "FAILED"):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert job.status == JobStatus.COMPLETED, job.message
        prefix = datastore.job_output_prefix(job)
        assert prefix == f"s3://{bucket}/out/{datastore.datastore_id}-DicomImport-{job_id}/"
        key = prefix.removeprefix(f"s3://{bucket}/")
        manifest = json.loads(
            s3.get_object(Bucket=bucket, Key=key + "job-output-manifest.json")["Body"].read()
        )
        assert manifest["jobSummary"]["numberOfImportedFiles"] == 1
        success = s3.get_object(Bucket=bucket, Key=key + "SUCCESS/success.ndjson")["Body"].read()
        failure = s3.get_object(Bucket=bucket, Key=key + "FAILURE/failure.ndjson")["Body"].read()
        # As HealthImaging writes it: the object's key in the bucket.
        assert json.loads(success)["inputFile"] == "in/b1/a.dcm"
        assert json.loads(failure)["inputFile"] == "in/b1/junk.bin"
    finally:
        datastore.close()
