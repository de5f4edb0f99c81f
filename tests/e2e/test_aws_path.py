"""End to end on the on-premises gateway's AWS path, over real HTTP: DCMTK storescu ->
`store-scp serve` with objects in S3, tracking in DynamoDB and import jobs on a HealthImaging
endpoint -> every instance IMPORTED.

S3 and DynamoDB are a moto server; HealthImaging is the local datastore's API process in front
of the same S3 endpoint (`--s3-endpoint-url`), so the jobs really read their input from, and
write their outputs to, the bucket. Everything the server touches is configured through its
environment, as on a gateway.
"""

from __future__ import annotations

import gzip
import json
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config
from pydicom.uid import generate_uid

from store_scp.datastore.local import DEFAULT_DATASTORE_ID
from store_scp.pipeline.results import FAILURE, MANIFEST, SUCCESS
from tests.e2e.test_pipeline_embedded import make_series, wait_imported, where
from tests.integration.moto_server import FAKE_AWS_ENV, aws_env, moto_endpoint  # noqa: F401
from tests.serverproc import run_cli, start_server, storescu

ROLE_ARN = "arn:aws:iam::123456789012:role/store-scp-import"


@pytest.fixture
def healthimaging(
    tmp_path: Path,
    aws_env: dict[str, str],  # noqa: F811
    moto_endpoint: str,  # noqa: F811
) -> Iterator[str]:
    """The local datastore's HealthImaging API in its own process, in front of moto's S3."""
    api = [sys.executable, "-m", "store_scp.datastore.api"]
    proc = subprocess.Popen(
        [*api, "--root", str(tmp_path / "datastore"), "--s3-endpoint-url", moto_endpoint],
        stdout=subprocess.PIPE,
        stderr=(tmp_path / "datastore.log").open("ab"),
        text=True,
    )
    assert proc.stdout is not None
    match = re.search(r"http://[\d.]+:\d+", proc.stdout.readline())
    assert match, (tmp_path / "datastore.log").read_text()
    yield match.group(0)
    proc.terminate()
    assert proc.wait(30) == 0


@pytest.fixture
def gateway_env(
    tmp_path: Path,
    moto_endpoint: str,  # noqa: F811
    healthimaging: str,
) -> dict[str, str]:
    """The environment of an on-premises gateway: S3 + DynamoDB + HealthImaging."""
    bucket = f"landing-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=moto_endpoint).create_bucket(Bucket=bucket)
    return {
        **FAKE_AWS_ENV,
        "AWS_CONFIG_FILE": str(tmp_path / "no-aws-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "no-aws-credentials"),
        "AWS_EC2_METADATA_DISABLED": "true",
        "STORE_SCP_PIPELINE": "embedded",
        "STORE_SCP_OBJECT_STORE": "s3",
        "STORE_SCP_S3_BUCKET": bucket,
        "STORE_SCP_S3_PREFIX": "landing",
        "STORE_SCP_S3_ENDPOINT_URL": moto_endpoint,
        "STORE_SCP_TRACKER": "dynamodb",
        "STORE_SCP_DYNAMODB_TABLE_PREFIX": f"scp-{uuid.uuid4().hex[:12]}",
        "STORE_SCP_DYNAMODB_ENDPOINT_URL": moto_endpoint,
        "STORE_SCP_DATASTORE": "healthimaging",
        "STORE_SCP_HEALTHIMAGING_DATASTORE_ID": DEFAULT_DATASTORE_ID,
        "STORE_SCP_HEALTHIMAGING_ENDPOINT_URL": healthimaging,
        "STORE_SCP_HEALTHIMAGING_REGION": "us-east-1",
        "STORE_SCP_IMPORT_ROLE_ARN": ROLE_ARN,
        "STORE_SCP_SEAL_QUIET_SECONDS": "1",
        "STORE_SCP_IMPORT_START_RATE": "5",
    }


def test_a_study_goes_through_s3_dynamodb_and_healthimaging(
    tmp_path: Path, gateway_env: dict[str, str], healthimaging: str
) -> None:
    env = gateway_env
    bucket, tables = env["STORE_SCP_S3_BUCKET"], env["STORE_SCP_DYNAMODB_TABLE_PREFIX"]

    # Without its tables the gateway refuses to start, and says how to create them.
    missing = run_cli(env, "where", "1.2.3")
    assert missing.returncode == 1
    assert f"tables missing: {tables}-receipts" in missing.stderr
    assert "store-scp create-tables" in missing.stderr
    created = run_cli(env, "create-tables")
    assert created.returncode == 0, created.stderr
    assert len(created.stdout.splitlines()) == 6
    assert run_cli(env, "create-tables").stdout == ""  # idempotent

    server = start_server(tmp_path / "srv", env=env)
    try:
        study = generate_uid()
        files = make_series(tmp_path / "s1", study, "P-AWS", 3)
        files += make_series(tmp_path / "s2", study, "P-AWS", 2)
        storescu(server.port, files)
        items = wait_imported(server, study, 5)
    finally:
        assert server.stop() == 0
    assert {i["state"] for i in items} == {"IMPORTED"}, items
    assert all(i["is_primary"] is True and i["image_set_id"] for i in items)
    assert not (tmp_path / "srv" / "tracker.sqlite3").exists()  # tracked in DynamoDB only

    # The objects are in the bucket, under their batch in the landing prefix.
    s3 = boto3.client("s3", endpoint_url=env["STORE_SCP_S3_ENDPOINT_URL"])
    keys = {
        o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="landing/").get("Contents", [])
    }
    batches = {str(i["key"]).split("/")[0] for i in items}
    assert {f"landing/{i['key']}" for i in items} <= keys

    # Each job imported its batch prefix of the bucket and wrote its outputs to the bucket.
    client = boto3.client(
        "medical-imaging",
        endpoint_url=healthimaging,
        config=Config(inject_host_prefix=False),
    )
    summaries = client.list_dicom_import_jobs(datastoreId=DEFAULT_DATASTORE_ID)["jobSummaries"]
    jobs = [
        client.get_dicom_import_job(datastoreId=DEFAULT_DATASTORE_ID, jobId=s["jobId"])[
            "jobProperties"
        ]
        for s in summaries
    ]
    assert {j["inputS3Uri"] for j in jobs} == {f"s3://{bucket}/landing/{b}/" for b in batches}
    assert {j["outputS3Uri"] for j in jobs} == {f"s3://{bucket}/landing/import-output/"}
    assert {j["dataAccessRoleArn"] for j in jobs} == {ROLE_ARN}
    for job in jobs:
        manifest = f"landing/import-output/{DEFAULT_DATASTORE_ID}-DicomImport-{job['jobId']}/"
        assert manifest + "job-output-manifest.json" in keys
    listed = json.loads(run_cli(env, "jobs", "--json").stdout)["jobs"]
    assert {j["job_id"] for j in listed} == {j["jobId"] for j in jobs}
    assert all(j["status"] == "COMPLETED" and j["counts"]["imported"] for j in listed)

    # GetImageSetMetadata lists every instance under its study and series.
    sent = {str(i["sop_instance_uid"]): str(i["series_instance_uid"]) for i in items}
    seen: dict[str, str] = {}
    for image_set_id in {str(i["image_set_id"]) for i in items}:
        blob = client.get_image_set_metadata(
            datastoreId=DEFAULT_DATASTORE_ID, imageSetId=image_set_id
        )["imageSetMetadataBlob"].read()
        meta: dict[str, Any] = json.loads(gzip.decompress(blob))
        assert meta["Study"]["DICOM"]["StudyInstanceUID"] == study
        for series_uid, series in meta["Study"]["Series"].items():
            seen.update({sop: series_uid for sop in series["Instances"]})
    assert seen == sent
    assert {str(i["sop_instance_uid"]) for i in where(server, study)} == set(sent)


def test_a_separate_worker_writes_job_outputs_to_the_configured_location(
    tmp_path: Path, gateway_env: dict[str, str], healthimaging: str
) -> None:
    """A receive-only gateway and `store-scp worker` share S3 and DynamoDB; the job outputs
    go to another bucket (STORE_SCP_IMPORT_OUTPUT_URI) and are read back from there."""
    outputs = f"outputs-{uuid.uuid4().hex[:12]}"
    s3 = boto3.client("s3", endpoint_url=gateway_env["STORE_SCP_S3_ENDPOINT_URL"])
    s3.create_bucket(Bucket=outputs)
    env = {**gateway_env, "STORE_SCP_IMPORT_OUTPUT_URI": f"s3://{outputs}/hi"}
    assert run_cli(env, "create-tables").returncode == 0

    server = start_server(tmp_path / "srv", env={**env, "STORE_SCP_PIPELINE": "off"})
    study = generate_uid()
    files = make_series(tmp_path / "s", study, "P-W", 2)
    storescu(server.port, files)
    assert server.stop() == 0
    assert {i["state"] for i in where(server, study)} == {"RECEIVED"}
    worker = subprocess.Popen(
        [sys.executable, "-m", "store_scp.cli", "worker", "--data-dir", str(tmp_path / "wrk")],
        env=server.env | {"STORE_SCP_PIPELINE": "embedded"},
        stderr=(tmp_path / "worker.log").open("ab"),
    )
    try:
        items = wait_imported(server, study, 2)
    finally:
        worker.terminate()
        assert worker.wait(30) == 0
    assert {i["state"] for i in items} == {"IMPORTED"}, (tmp_path / "worker.log").read_text()
    [job] = json.loads(run_cli(server.env, "jobs", "--json").stdout)["jobs"]
    prefix = f"hi/{DEFAULT_DATASTORE_ID}-DicomImport-{job['job_id']}/"
    assert job["output_uri"] == f"s3://{outputs}/{prefix}"
    written = {o["Key"] for o in s3.list_objects_v2(Bucket=outputs).get("Contents", [])}
    assert written == {prefix + name for name in (MANIFEST, SUCCESS, FAILURE)}
