"""ObjectStore adapter for Amazon S3 (or any S3 HTTP endpoint): the landing bucket.

Objects live at `s3://<bucket>/<prefix>/<key>`. Staging files stay on the local disk in
`staging_dir`; `commit` uploads one with a managed transfer (a single PUT below
`multipart_threshold`, a multipart upload above it) and returns only after S3 answered the PUT
or the CompleteMultipartUpload, i.e. once the object is durable in S3. A failed multipart upload
is aborted by the transfer manager, so a partial object is never visible.

Every upload carries server-side encryption (`aws:kms` with the given key, else `AES256`) and a
SHA-256 checksum that S3 verifies on arrival. Objects are stored exactly as received: never with
a `Content-Encoding` (AWS HealthImaging rejects gzip-encoded input).

`copy` is a server-side copy (CopyObject, or UploadPartCopy above the multipart threshold) with
the same encryption and checksum; `move` is a copy followed by a delete, so the object is under
one key or both at every moment.

Keys follow the same rules as the local store (see `store_scp.storage.local.validate_key`), so a
key valid for one adapter is valid for the other.
"""

from __future__ import annotations

import io
import logging
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import boto3
from boto3.exceptions import Boto3Error
from boto3.s3.transfer import S3Transfer, TransferConfig, create_transfer_manager
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from store_scp.storage.base import CommittedObject, StorageError
from store_scp.storage.local import validate_key, validate_prefix
from store_scp.storage.staging import claim_staging_dir

__all__ = ["S3ObjectStore"]

log = logging.getLogger(__name__)

_MIB = 1024 * 1024
#: S3's smallest part size (all parts but the last).
_MIN_PART = 5 * _MIB
_MAX_PART = 64 * _MIB
_NOT_FOUND = {"NoSuchKey", "404", "NotFound"}


def _error_code(exc: BaseException) -> str:
    """The S3 error code of `exc` (or of the error it wraps), else the exception's class name."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, ClientError):
            err = cur.response.get("Error", {})
            code = str(err.get("Code") or "")
            message = str(err.get("Message") or "")
            if code and message:
                return f"{code} ({message})"
            return code or message or type(cur).__name__
        cur = cur.__cause__ or cur.__context__
    return type(exc).__name__


def _is_not_found(exc: ClientError) -> bool:
    return str(exc.response.get("Error", {}).get("Code", "")) in _NOT_FOUND


class _BodyReader(io.RawIOBase):
    """Adapts a botocore StreamingBody to a raw binary stream (errors become StorageError)."""

    def __init__(self, body: Any, what: str) -> None:
        super().__init__()
        self._body = body
        self._what = what

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        try:
            data = self._body.read(len(view))
        except (BotoCoreError, ClientError, OSError) as exc:
            raise StorageError(f"read of {self._what} failed: {_error_code(exc)}") from exc
        n = len(data)
        view[:n] = data
        return n

    def close(self) -> None:
        if not self.closed:
            try:
                self._body.close()
            finally:
                super().close()


class S3ObjectStore:
    """Objects in an S3 bucket under `prefix`; staging files in the local `staging_dir`.

    Thread-safe: `commit` may run concurrently from several worker threads (one shared client
    and transfer manager). Call `close()` at shutdown to stop the transfer threads.

    `checksum_algorithm` (default "SHA256") asks S3 to verify a checksum of every upload; set it
    to None only for an S3-compatible endpoint that does not support additional checksums.
    """

    def __init__(
        self,
        bucket: str,
        *,
        prefix: str = "",
        staging_dir: Path,
        client: Any = None,
        endpoint_url: str | None = None,
        region: str | None = None,
        kms_key_id: str | None = None,
        multipart_threshold: int = 64 * _MIB,
        checksum_algorithm: str | None = "SHA256",
    ) -> None:
        if not bucket or "/" in bucket:
            raise ValueError(f"invalid bucket name: {bucket!r}")
        if multipart_threshold < _MIN_PART:
            raise ValueError(f"multipart_threshold must be at least {_MIN_PART} bytes")
        stripped = prefix.strip("/")
        if stripped:
            validate_key(stripped)
        self.bucket = bucket
        self.prefix = stripped
        self._key_base = stripped + "/" if stripped else ""
        self.staging_dir = Path(staging_dir)
        if client is None:
            client = boto3.client(
                "s3",
                endpoint_url=endpoint_url,
                region_name=region,
                config=Config(
                    retries={"max_attempts": 5, "mode": "standard"},
                    disable_request_compression=True,
                    connect_timeout=10,
                    read_timeout=60,
                    max_pool_connections=32,
                ),
            )
        self._client = client
        self._extra_args: dict[str, str] = {"ContentType": "application/dicom"}
        if kms_key_id:
            self._extra_args["ServerSideEncryption"] = "aws:kms"
            self._extra_args["SSEKMSKeyId"] = kms_key_id
        else:
            self._extra_args["ServerSideEncryption"] = "AES256"
        if checksum_algorithm:
            self._extra_args["ChecksumAlgorithm"] = checksum_algorithm
        chunk = max(_MIN_PART, min(multipart_threshold, _MAX_PART))
        self._transfer_config = TransferConfig(
            multipart_threshold=multipart_threshold,
            multipart_chunksize=chunk,
            max_concurrency=8,
            use_threads=True,
            preferred_transfer_client="classic",
        )
        self._manager = create_transfer_manager(client, self._transfer_config)
        self._transfer = S3Transfer(manager=self._manager)
        self._closed = False
        self._close_lock = threading.Lock()
        try:
            # This process's own staging folder; leftovers of dead processes are removed.
            self.staging_dir = claim_staging_dir(Path(staging_dir))
        except OSError as exc:
            raise StorageError(f"cannot create the staging folder: {exc.strerror}") from exc

    def __repr__(self) -> str:
        return f"S3ObjectStore(bucket={self.bucket!r}, prefix={self.prefix!r})"

    def close(self) -> None:
        """Shut the transfer manager down (idempotent)."""
        with self._close_lock:
            if not self._closed:
                self._closed = True
                self._manager.shutdown()

    def _full_key(self, key: str) -> str:
        return self._key_base + validate_key(key)

    def _where(self, full_key: str) -> str:
        return f"s3://{self.bucket}/{full_key}"

    # -- the ObjectStore port ----------------------------------------------------------------

    def commit(self, staging: Path, key: str) -> CommittedObject:
        """Upload `staging` to `key`; the staging file is removed only after a success.

        On StorageError the staging file is left in place for the caller to discard.
        """
        full = self._full_key(key)
        try:
            size = os.stat(staging).st_size
            self._transfer.upload_file(
                os.fspath(staging), self.bucket, full, extra_args=dict(self._extra_args)
            )
        except OSError as exc:
            raise StorageError(
                f"commit of {self._where(full)}: staging file unreadable: {exc.strerror}"
            ) from exc
        except (Boto3Error, BotoCoreError, ClientError) as exc:
            raise StorageError(
                f"commit of {self._where(full)}: upload failed: {_error_code(exc)}"
            ) from exc
        try:
            os.unlink(staging)
        except OSError as exc:
            log.warning("committed object's staging file could not be removed: %s", exc.strerror)
        return CommittedObject(key=key, size=size)

    def discard(self, staging: Path) -> None:
        try:
            os.unlink(staging)
        except FileNotFoundError:
            pass
        except Exception as exc:
            log.warning("could not discard a staging file: %s", exc)

    def list_keys(self, prefix: str = "") -> Iterator[str]:
        """Every committed key starting with `prefix` (string prefix), in S3's (sorted) order."""
        full_prefix = self._key_base + validate_prefix(prefix)
        base_len = len(self._key_base)
        paginator = self._client.get_paginator("list_objects_v2")
        try:
            for page in paginator.paginate(Bucket=self.bucket, Prefix=full_prefix):
                for obj in page.get("Contents", ()):
                    yield obj["Key"][base_len:]
        except (BotoCoreError, ClientError) as exc:
            raise StorageError(
                f"listing of {self._where(full_prefix)} failed: {_error_code(exc)}"
            ) from exc

    def open(self, key: str) -> BinaryIO:
        """A streaming reader of the object. A missing key raises FileNotFoundError."""
        full = self._full_key(key)
        try:
            resp = self._client.get_object(Bucket=self.bucket, Key=full)
        except ClientError as exc:
            if _is_not_found(exc):
                raise FileNotFoundError(f"no object {self._where(full)}") from exc
            raise StorageError(f"open of {self._where(full)} failed: {_error_code(exc)}") from exc
        except BotoCoreError as exc:
            raise StorageError(f"open of {self._where(full)} failed: {_error_code(exc)}") from exc
        return io.BufferedReader(_BodyReader(resp["Body"], self._where(full)), 1024 * 1024)

    def delete(self, key: str) -> None:
        full = self._full_key(key)
        try:
            self._client.delete_object(Bucket=self.bucket, Key=full)
        except ClientError as exc:
            if _is_not_found(exc):
                return
            raise StorageError(f"delete of {self._where(full)} failed: {_error_code(exc)}") from exc
        except BotoCoreError as exc:
            raise StorageError(f"delete of {self._where(full)} failed: {_error_code(exc)}") from exc

    def exists(self, key: str) -> bool:
        full = self._full_key(key)
        try:
            self._client.head_object(Bucket=self.bucket, Key=full)
        except ClientError as exc:
            if _is_not_found(exc):
                return False
            raise StorageError(f"head of {self._where(full)} failed: {_error_code(exc)}") from exc
        except BotoCoreError as exc:
            raise StorageError(f"head of {self._where(full)} failed: {_error_code(exc)}") from exc
        return True

    def put_bytes(
        self, key: str, data: bytes, *, content_type: str = "application/octet-stream"
    ) -> None:
        full = self._full_key(key)
        args = dict(self._extra_args, ContentType=content_type)
        try:
            self._client.put_object(Bucket=self.bucket, Key=full, Body=data, **args)
        except (BotoCoreError, ClientError) as exc:
            raise StorageError(f"write of {self._where(full)} failed: {_error_code(exc)}") from exc

    def copy(self, src: str, dst: str) -> None:
        source, full = self._full_key(src), self._full_key(dst)
        args = {k: v for k, v in self._extra_args.items() if k != "ContentType"}
        try:
            self._manager.copy(
                {"Bucket": self.bucket, "Key": source}, self.bucket, full, extra_args=args
            ).result()
        except ClientError as exc:
            if _is_not_found(exc):
                raise FileNotFoundError(f"no object {self._where(source)}") from exc
            raise StorageError(
                f"copy of {self._where(source)} to {full} failed: {_error_code(exc)}"
            ) from exc
        except (Boto3Error, BotoCoreError) as exc:
            raise StorageError(
                f"copy of {self._where(source)} to {full} failed: {_error_code(exc)}"
            ) from exc

    def move(self, src: str, dst: str) -> None:
        try:
            self.copy(src, dst)
        except FileNotFoundError:
            if self.exists(dst):
                return  # moved already: a replay
            raise
        self.delete(src)

    def uri(self, prefix: str) -> str:
        """`s3://bucket/<store prefix>/<prefix>/`."""
        rel = validate_prefix(prefix).rstrip("/")
        path = "/".join(p for p in (self.prefix, rel) if p)
        return f"s3://{self.bucket}/{path}/" if path else f"s3://{self.bucket}/"
