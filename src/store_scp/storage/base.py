"""The ObjectStore port: where received objects become durable.

The receiver streams every object into a *staging file* on the local disk, then asks the store
to commit it under its final key. Only a commit that returned makes an object visible; a
discarded or crashed staging file never is. All methods block: the asyncio driver calls them in
a worker thread.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Protocol


class StorageError(Exception):
    """The object could not be made durable (disk full, I/O error, S3 error, timeout)."""


@dataclass(frozen=True, slots=True)
class CommittedObject:
    key: str
    size: int


class ObjectStore(Protocol):
    """Adapters: storage.local.LocalObjectStore, storage.s3.S3ObjectStore."""

    #: A folder on the local disk where staging files are created. For the local store it is
    #: on the same file system as the objects, so that commit is a rename.
    staging_dir: Path

    def commit(self, staging: Path, key: str) -> CommittedObject:
        """Make the staging file durable under `key`; the staging file is consumed.

        Returns only once the object survives a crash or power loss. Raises StorageError.
        """
        ...

    def discard(self, staging: Path) -> None:
        """Remove a staging file that will never be committed. Never raises."""
        ...

    def list_keys(self, prefix: str = "") -> Iterator[str]:
        """Every committed key under `prefix` (no staging files)."""
        ...

    def open(self, key: str) -> BinaryIO:
        """Read a committed object."""
        ...

    def delete(self, key: str) -> None:
        """Remove a committed object; a missing key is not an error."""
        ...

    def exists(self, key: str) -> bool:
        """True if an object is committed under `key`."""
        ...

    def put_bytes(
        self, key: str, data: bytes, *, content_type: str = "application/octet-stream"
    ) -> None:
        """Commit small `data` under `key` (replacing any object there), as durably as
        `commit`. Raises StorageError."""
        ...

    def copy(self, src: str, dst: str) -> None:
        """Commit a copy of the object `src` under `dst` (replacing any object there), as
        durably as `commit`. Raises FileNotFoundError if `src` is missing, else StorageError."""
        ...

    def move(self, src: str, dst: str) -> None:
        """Move the object `src` to `dst`: durable under `dst` before it leaves `src`, so a crash
        at any moment leaves it under one key or both, never under none. With `src` missing and
        `dst` present (a move replayed after a crash) there is nothing to do. Raises
        FileNotFoundError if neither exists, else StorageError."""
        ...

    def uri(self, prefix: str) -> str:
        """A URI for a prefix (file:///... or s3://bucket/prefix/), for import jobs and logs."""
        ...
