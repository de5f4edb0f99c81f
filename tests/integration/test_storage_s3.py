"""S3ObjectStore against a real S3 HTTP endpoint (moto in server mode, started by the tests)."""

from __future__ import annotations

import base64
import hashlib
import os
import tempfile
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError

from store_scp.storage.base import StorageError
from store_scp.storage.s3 import S3ObjectStore
from tests.integration.moto_server import aws_env, moto_endpoint  # noqa: F401

MIB = 1024 * 1024
PREFIX = "landing"


@pytest.fixture
def s3(aws_env: dict[str, str], moto_endpoint: str) -> Any:  # noqa: F811
    return boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1")


@pytest.fixture
def bucket(s3: Any) -> str:
    name = f"landing-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=name)
    return name


@pytest.fixture
def store(bucket: str, moto_endpoint: str, tmp_path: Path) -> Iterator[S3ObjectStore]:  # noqa: F811
    st = S3ObjectStore(
        bucket,
        prefix=PREFIX,
        staging_dir=tmp_path / "staging",
        endpoint_url=moto_endpoint,
        region="us-east-1",
        multipart_threshold=5 * MIB,
    )
    yield st
    st.close()


def stage(store: S3ObjectStore, data: bytes) -> Path:
    fd, name = tempfile.mkstemp(dir=store.staging_dir, suffix=".part")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    return Path(name)


def read_back(store: S3ObjectStore, key: str) -> bytes:
    with store.open(key) as f:
        return f.read()


def test_commit_small_object_round_trips(store: S3ObjectStore, s3: Any, bucket: str) -> None:
    data = os.urandom(16 * 1024)
    staging = stage(store, data)
    committed = store.commit(staging, "b1/1.2.3/1.2.3.4/1.2.3.4.5.dcm")

    assert committed.key == "b1/1.2.3/1.2.3.4/1.2.3.4.5.dcm"
    assert committed.size == len(data)
    assert not staging.exists(), "the staging file is consumed by a successful commit"
    assert read_back(store, committed.key) == data
    raw = s3.get_object(Bucket=bucket, Key=f"{PREFIX}/{committed.key}")["Body"].read()
    assert raw == data

    head = s3.head_object(Bucket=bucket, Key=f"{PREFIX}/{committed.key}", ChecksumMode="ENABLED")
    assert head["ServerSideEncryption"] == "AES256"
    assert head["ContentType"] == "application/dicom"
    assert "ContentEncoding" not in head
    assert head["ChecksumSHA256"] == base64.b64encode(hashlib.sha256(data).digest()).decode()


def test_commit_multipart_object_round_trips(store: S3ObjectStore, s3: Any, bucket: str) -> None:
    data = os.urandom(12 * MIB)
    staging = stage(store, data)
    committed = store.commit(staging, "b1/st/se/big.dcm")

    assert committed.size == len(data)
    assert not staging.exists()
    head = s3.head_object(Bucket=bucket, Key=f"{PREFIX}/b1/st/se/big.dcm")
    assert head["ETag"].strip('"').endswith("-3"), "12 MiB in 5 MiB parts is a 3-part upload"
    assert head["ContentLength"] == len(data)
    assert "ContentEncoding" not in head
    assert read_back(store, "b1/st/se/big.dcm") == data
    assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


def test_object_at_the_threshold_is_one_put(store: S3ObjectStore, s3: Any, bucket: str) -> None:
    data = os.urandom(5 * MIB - 1)
    store.commit(stage(store, data), "b1/edge.dcm")
    head = s3.head_object(Bucket=bucket, Key=f"{PREFIX}/b1/edge.dcm")
    assert "-" not in head["ETag"]
    assert read_back(store, "b1/edge.dcm") == data


def test_list_keys_strips_the_store_prefix_and_filters(
    store: S3ObjectStore, s3: Any, bucket: str
) -> None:
    keys = ["b1/s1/a.dcm", "b1/s2/b.dcm", "b10/s1/c.dcm", "b2/s1/d.dcm"]
    for key in keys:
        store.commit(stage(store, key.encode()), key)
    # Outside the store prefix, and a prefix that merely starts the same: never listed.
    s3.put_object(Bucket=bucket, Key="other/b1/x.dcm", Body=b"x")
    s3.put_object(Bucket=bucket, Key="landing-old/b1/y.dcm", Body=b"y")

    assert sorted(store.list_keys()) == keys
    assert sorted(store.list_keys("b1/")) == ["b1/s1/a.dcm", "b1/s2/b.dcm"]
    assert sorted(store.list_keys("b1")) == ["b1/s1/a.dcm", "b1/s2/b.dcm", "b10/s1/c.dcm"]
    assert list(store.list_keys("b3/")) == []
    with pytest.raises(ValueError):
        list(store.list_keys("../other/"))


def test_list_keys_follows_pages(store: S3ObjectStore, s3: Any, bucket: str) -> None:
    keys = [f"b1/s/{i:05d}.dcm" for i in range(1005)]  # more than one 1000-key page

    def put(key: str) -> None:
        s3.put_object(Bucket=bucket, Key=f"{PREFIX}/{key}", Body=b"")

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(put, keys))
    assert sorted(store.list_keys("b1/")) == keys


def test_sse_kms_settings_are_applied(
    bucket: str,
    s3: Any,
    moto_endpoint: str,  # noqa: F811
    tmp_path: Path,
) -> None:
    kms = boto3.client("kms", endpoint_url=moto_endpoint, region_name="us-east-1")
    key_id = kms.create_key(Description="landing bucket key")["KeyMetadata"]["KeyId"]
    store = S3ObjectStore(
        bucket,
        prefix=PREFIX,
        staging_dir=tmp_path / "staging",
        client=s3,
        kms_key_id=key_id,
    )
    try:
        data = os.urandom(4096)
        store.commit(stage(store, data), "b1/kms.dcm")
        head = s3.head_object(Bucket=bucket, Key=f"{PREFIX}/b1/kms.dcm")
        assert head["ServerSideEncryption"] == "aws:kms"
        assert key_id in head["SSEKMSKeyId"]
        assert read_back(store, "b1/kms.dcm") == data
    finally:
        store.close()


def test_missing_bucket_raises_storage_error_and_nothing_is_visible(
    s3: Any,
    moto_endpoint: str,  # noqa: F811
    tmp_path: Path,
) -> None:
    name = f"missing-{uuid.uuid4().hex[:12]}"
    store = S3ObjectStore(
        name, prefix=PREFIX, staging_dir=tmp_path / "staging", endpoint_url=moto_endpoint
    )
    try:
        marker = b"PATIENT-NAME-MARKER-" * 100
        staging = stage(store, marker)
        with pytest.raises(StorageError) as info:
            store.commit(staging, "b1/x.dcm")
        message = str(info.value)
        assert "NoSuchBucket" in message
        assert "PATIENT-NAME-MARKER" not in message
        assert staging.exists(), "a failed commit leaves the staging file for the caller"
        store.discard(staging)
        assert not staging.exists()
        store.discard(staging)  # a second discard never raises

        with pytest.raises(StorageError, match="NoSuchBucket"):
            list(store.list_keys())
        s3.create_bucket(Bucket=name)
        assert list(store.list_keys()) == []
    finally:
        store.close()


def test_failed_multipart_upload_is_aborted_and_invisible(
    bucket: str, s3: Any, tmp_path: Path
) -> None:
    store = S3ObjectStore(
        bucket,
        prefix=PREFIX,
        staging_dir=tmp_path / "staging",
        client=s3,
        multipart_threshold=5 * MIB,
    )
    calls: list[int] = []

    def fail_second_part(params: dict[str, Any], **_: Any) -> None:
        calls.append(params["PartNumber"])
        if params["PartNumber"] == 2:
            raise ClientError(
                {"Error": {"Code": "InternalError", "Message": "injected failure"}}, "UploadPart"
            )

    s3.meta.events.register("before-parameter-build.s3.UploadPart", fail_second_part)
    try:
        staging = stage(store, os.urandom(12 * MIB))
        with pytest.raises(StorageError, match="InternalError"):
            store.commit(staging, "b1/broken.dcm")
        assert 2 in calls
        assert staging.exists()
        assert list(store.list_keys()) == []
        assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    finally:
        s3.meta.events.unregister("before-parameter-build.s3.UploadPart", fail_second_part)
        store.close()


def test_open_missing_key_raises_file_not_found(store: S3ObjectStore) -> None:
    with pytest.raises(FileNotFoundError):
        store.open("b1/nothing.dcm")


def test_delete(store: S3ObjectStore, s3: Any, bucket: str) -> None:
    store.commit(stage(store, b"abc"), "b1/del.dcm")
    store.commit(stage(store, b"def"), "b1/keep.dcm")
    store.delete("b1/del.dcm")
    assert list(store.list_keys()) == ["b1/keep.dcm"]
    with pytest.raises(FileNotFoundError):
        store.open("b1/del.dcm")
    store.delete("b1/del.dcm")  # missing is fine
    with pytest.raises(ClientError):
        s3.head_object(Bucket=bucket, Key=f"{PREFIX}/b1/del.dcm")


def test_copy_move_put_bytes_and_exists(store: S3ObjectStore, s3: Any, bucket: str) -> None:
    data = os.urandom(7000)
    store.commit(stage(store, data), "b1/st/se/one.dcm")
    store.copy("b1/st/se/one.dcm", "retry/r1/b1/st/se/one.dcm")
    assert read_back(store, "retry/r1/b1/st/se/one.dcm") == data
    head = s3.head_object(Bucket=bucket, Key=f"{PREFIX}/retry/r1/b1/st/se/one.dcm")
    assert head["ServerSideEncryption"] == "AES256"  # the copy is encrypted like the original
    store.move("b1/st/se/one.dcm", "quarantine/b1/st/se/one.dcm")
    store.move("b1/st/se/one.dcm", "quarantine/b1/st/se/one.dcm")  # a replay: nothing to do
    assert read_back(store, "quarantine/b1/st/se/one.dcm") == data
    store.put_bytes("quarantine/b1/st/se/one.dcm.json", b"{}", content_type="application/json")
    head = s3.head_object(Bucket=bucket, Key=f"{PREFIX}/quarantine/b1/st/se/one.dcm.json")
    assert head["ContentType"] == "application/json"
    assert sorted(store.list_keys()) == [
        "quarantine/b1/st/se/one.dcm",
        "quarantine/b1/st/se/one.dcm.json",
        "retry/r1/b1/st/se/one.dcm",
    ]
    assert store.exists("quarantine/b1/st/se/one.dcm")
    assert not store.exists("b1/st/se/one.dcm")
    with pytest.raises(FileNotFoundError):
        store.copy("b1/none.dcm", "retry/r1/none.dcm")
    with pytest.raises(FileNotFoundError):
        store.move("b1/none.dcm", "quarantine/b1/none.dcm")


def test_bad_keys_are_rejected(store: S3ObjectStore) -> None:
    staging = stage(store, b"x")
    for key in ["", "/abs.dcm", "a/../b.dcm", "a//b.dcm", "a/", ".staging/x", "x.part"]:
        with pytest.raises(ValueError):
            store.commit(staging, key)
    assert staging.exists()
    assert list(store.list_keys()) == []


def test_uri(store: S3ObjectStore, bucket: str, moto_endpoint: str, tmp_path: Path) -> None:  # noqa: F811
    assert store.uri("b1") == f"s3://{bucket}/{PREFIX}/b1/"
    assert store.uri("b1/") == f"s3://{bucket}/{PREFIX}/b1/"
    assert store.uri("") == f"s3://{bucket}/{PREFIX}/"
    bare = S3ObjectStore(bucket, staging_dir=tmp_path / "s2", endpoint_url=moto_endpoint)
    try:
        assert bare.uri("b1") == f"s3://{bucket}/b1/"
        assert bare.uri("") == f"s3://{bucket}/"
    finally:
        bare.close()


def test_concurrent_commits(store: S3ObjectStore) -> None:
    payloads = {f"b1/s/{i:03d}.dcm": os.urandom(1024 + i) for i in range(64)}

    def commit(item: tuple[str, bytes]) -> None:
        key, data = item
        store.commit(stage(store, data), key)

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(commit, payloads.items()))
    assert sorted(store.list_keys()) == sorted(payloads)
    for key, data in payloads.items():
        assert read_back(store, key) == data
    assert list(store.staging_dir.iterdir()) == []


def test_stale_staging_files_are_removed_at_start(
    bucket: str,
    moto_endpoint: str,  # noqa: F811
    tmp_path: Path,
) -> None:
    staging_dir = tmp_path / "staging"
    (staging_dir / "dead-owner").mkdir(parents=True)
    (staging_dir / "dead-owner.lock").write_bytes(b"")  # its owner died
    old = staging_dir / "dead-owner" / "tmpold.part"
    old.write_bytes(b"partial")
    store = S3ObjectStore(bucket, staging_dir=staging_dir, endpoint_url=moto_endpoint)
    store.close()
    assert not old.exists()
    assert store.staging_dir.parent == staging_dir
