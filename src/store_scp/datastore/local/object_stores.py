"""The object stores an import job reads its input from and writes its outputs to, by URI.

`file:///.../objects/<prefix>` is a LocalObjectStore's folder (the embedded default);
`s3://bucket/<key prefix>` is an S3 bucket, read and written with boto3 at `s3_endpoint_url`
(any S3 endpoint; None: AWS), with the credentials and region of the environment, as
HealthImaging would with its data-access role. `inputFile` in a job's outputs is the object's
key in its store: for S3 the key in the bucket, as HealthImaging writes it.
"""

from __future__ import annotations

import contextlib
import secrets
import threading
from pathlib import Path
from urllib.parse import unquote, urlparse

from store_scp.storage.base import ObjectStore
from store_scp.storage.local import LocalObjectStore


class ObjectStoresByUri:
    """`resolve(uri)` -> (ObjectStore, key prefix); one store per local root or bucket."""

    def __init__(self, root: Path, *, s3_endpoint_url: str | None = None, fsync: bool = True):
        self.root = root  # the datastore's folder: S3 downloads are staged under it
        self.s3_endpoint_url = s3_endpoint_url
        self.fsync = fsync
        self._stores: dict[str, ObjectStore] = {}
        self._lock = threading.Lock()

    def resolve(self, uri: str) -> tuple[ObjectStore, str]:
        parsed = urlparse(uri)
        if parsed.scheme == "file":
            if parsed.netloc not in ("", "localhost"):
                raise ValueError(f"file URI on another host: {uri}")
            path = Path(unquote(parsed.path))
            for candidate in (path, *path.parents):
                if candidate.name == "objects" and (candidate / ".staging").is_dir():
                    root = str(candidate.parent)
                    with self._lock:
                        store = self._stores.get(root)
                        if store is None:
                            store = LocalObjectStore(candidate.parent, fsync=self.fsync)
                            self._stores[root] = store
                    rel = path.relative_to(candidate).as_posix()
                    return store, ("" if rel == "." else rel.strip("/") + "/")
            raise ValueError(f"{uri} is not inside a local object store")
        if parsed.scheme == "s3":
            from store_scp.storage.s3 import S3ObjectStore

            bucket = parsed.netloc
            with self._lock:
                store = self._stores.get(f"s3://{bucket}")
                if store is None:
                    store = S3ObjectStore(
                        bucket,
                        staging_dir=self.root / "s3-staging",
                        endpoint_url=self.s3_endpoint_url,
                        checksum_algorithm=None,
                    )
                    self._stores[f"s3://{bucket}"] = store
            key = parsed.path.lstrip("/")
            return store, key
        raise ValueError(f"unsupported URI scheme: {uri}")

    def close(self) -> None:
        with self._lock:
            for store in self._stores.values():
                closer = getattr(store, "close", None)
                if callable(closer):
                    with contextlib.suppress(Exception):
                        closer()
            self._stores.clear()


def put(store: ObjectStore, key: str, data: bytes) -> None:
    """Write one small object (a job output) through the store's staging folder."""
    staging = store.staging_dir / f"out-{secrets.token_hex(8)}.part"
    with open(staging, "wb") as f:
        f.write(data)
    try:
        store.commit(staging, key)
    except BaseException:
        store.discard(staging)
        raise
