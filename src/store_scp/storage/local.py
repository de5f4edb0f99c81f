"""ObjectStore adapter for a folder on the local disk (the embedded default).

Layout under `root`::

    objects/<key>          committed objects, one file per key
    objects/.staging/<owner>/  staging files (`*.part`) of one process, on the same file
                               system as the objects (see storage.staging)

A commit is made durable the way a careful database does it: fsync the staging file, create any
missing folders of the key (fsyncing the parent of each new folder), rename the file into place,
then fsync the destination folder. Only then does `commit` return, so a C-STORE success answered
after it refers to an object that survives a crash or a power loss.

Keys are relative POSIX paths (`batch/study/series/instance.dcm`). Path components that start
with a dot and names ending in `.part` are reserved for the store's own staging and temporary
files: such keys are refused, and `list_keys` never yields such entries.

Committing a key that already exists replaces the object atomically: readers see the old or the
new bytes, never a mix. The store does not make keys unique; callers do (the receiver puts every
receipt under its own batch prefix and key).

`copy` and `put_bytes` write a staging file and commit it, so they are exactly as durable.
`move` is a rename: the object is under one key at every moment; both folders are fsynced
before it returns. `delete` fsyncs the folder too, so a deletion recorded in the tracker stays
done after a power loss. Folders emptied by `move` and `delete` are removed (a commit into a
folder removed meanwhile creates it again).
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from store_scp.storage.base import CommittedObject, StorageError
from store_scp.storage.dirsync import FolderSync
from store_scp.storage.staging import STAGING_SUFFIX, claim_staging_dir

__all__ = [
    "STAGING_SUFFIX",
    "LocalObjectStore",
    "validate_key",
    "validate_prefix",
]

log = logging.getLogger(__name__)


_STAGING_DIRNAME = ".staging"

#: Bound on the cache of folders known to exist durably; past it the cache starts over (a folder
#: then costs one more fsync of its parent, nothing else).
_MAX_KNOWN_DIRS = 100_000

#: Tries of creating a key's folders and renaming into them while other processes prune.
_PLACE_ROUNDS = 50

_FILE_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_CLOEXEC", 0)


def validate_key(key: str) -> str:
    """Return `key` if it is a valid object key, else raise ValueError.

    A key is a relative POSIX path: no leading `/`, no empty, `.` or `..` component, no backslash
    or NUL, no component starting with `.` and no final `.part` suffix (both reserved).
    """
    if not isinstance(key, str) or not key:
        raise ValueError("object key must be a non-empty string")
    if key[0] == "/":
        raise ValueError(f"object key must be relative: {key!r}")
    if "\\" in key or "\x00" in key:
        raise ValueError(f"object key contains a backslash or NUL: {key!r}")
    for part in key.split("/"):
        if not part:
            raise ValueError(f"object key has an empty component: {key!r}")
        if part[0] == ".":
            raise ValueError(f"object key component starts with '.' (reserved): {key!r}")
    if key.endswith(STAGING_SUFFIX):
        raise ValueError(f"object key ends with {STAGING_SUFFIX!r} (reserved): {key!r}")
    return key


def validate_prefix(prefix: str) -> str:
    """Return `prefix` if it is '' or the start of a valid key (a trailing '/' is allowed)."""
    if prefix == "":
        return prefix
    body = prefix[:-1] if prefix.endswith("/") else prefix
    if not body:
        raise ValueError(f"invalid prefix: {prefix!r}")
    if body.endswith(STAGING_SUFFIX):
        # A partial name may legitimately end this way only as a prefix of a longer name.
        validate_key(body + "_")
    else:
        validate_key(body)
    return prefix


def _errno_name(exc: OSError) -> str:
    if exc.errno is None:
        return type(exc).__name__
    name = errno.errorcode.get(exc.errno, f"errno {exc.errno}")
    return f"{name} ({os.strerror(exc.errno)})"


class LocalObjectStore:
    """Objects in `root/objects/<key>`; staging files in `root/objects/.staging/`.

    `fsync=False` skips every fsync: commits are then NOT durable (a power loss can lose or
    truncate acknowledged objects). It exists for benchmarks only; never use it in production.

    Thread-safe: `commit` may run concurrently from several worker threads.
    """

    def __init__(self, root: Path, *, fsync: bool = True) -> None:
        self.root = Path(root).absolute()
        self.objects_dir = self.root / "objects"
        self.staging_root = self.objects_dir / _STAGING_DIRNAME
        self.fsync = fsync
        self._objects = str(self.objects_dir)
        # Folders that exist and whose entry in their parent has been made durable.
        self._known_dirs: set[str] = set()
        self._folder_sync = FolderSync()
        try:
            self._ensure_dir_chain(str(self.staging_root))
            # This process's own staging folder; leftovers of dead processes are removed.
            self.staging_dir = claim_staging_dir(self.staging_root)
        except OSError as exc:
            raise StorageError(
                f"cannot create the object folders under {self.root}: {_errno_name(exc)}"
            ) from exc

    def __repr__(self) -> str:
        return f"LocalObjectStore(root={str(self.root)!r}, fsync={self.fsync})"

    # -- internals -------------------------------------------------------------------------

    def _fsync_dir(self, path: str) -> None:
        self._folder_sync.sync(path)  # shared with concurrent commits into the same folder

    def _ensure_dir_chain(self, path: str) -> None:
        """Make `path` and its missing ancestors exist durably (raises OSError)."""
        known = self._known_dirs
        inside = self._objects + os.sep
        chain: list[str] = []
        d = path
        while d not in known:
            if d != self._objects and not d.startswith(inside) and os.path.isdir(d):
                break  # an existing folder above the objects tree: not ours to make durable
            chain.append(d)
            parent = os.path.dirname(d)
            if parent == d:  # reached '/'
                break
            d = parent
        # Create top-down: the parent exists before its child.
        for d in reversed(chain):
            try:
                os.mkdir(d)
            except FileExistsError:
                # One lstat: between two checks another thread may prune and create it again.
                try:
                    mode = os.lstat(d).st_mode
                except FileNotFoundError:  # pruned right then: the caller tries again
                    raise FileNotFoundError(errno.ENOENT, "folder removed meanwhile") from None
                if not stat.S_ISDIR(mode):
                    raise
            # Also for a folder that already existed but is not yet known: its entry may not be
            # durable yet (another thread may have just created it, or a crash interrupted).
            if self.fsync:
                parent = os.path.dirname(d)
                if parent != d:
                    self._fsync_dir(parent)
            if len(known) >= _MAX_KNOWN_DIRS:
                known.clear()
                known.add(self._objects)
            known.add(d)

    def _forget_dirs(self, folder: str) -> None:
        """Drop `folder` and its ancestors below the objects folder from the cache."""
        d = folder
        while d != self._objects and d.startswith(self._objects):
            self._known_dirs.discard(d)
            d = os.path.dirname(d)

    def _path(self, key: str) -> str:
        return os.path.join(self._objects, validate_key(key))

    def _place(self, src: str, dest: str, what: str) -> None:
        """Rename `src` to `dest`, creating the folders of `dest` durably first. A folder removed
        meanwhile (emptied and pruned by another thread or process) is created again. Raises
        FileNotFoundError when `src` is missing, StorageError for any other failure."""
        folder = os.path.dirname(dest)
        for round_ in range(_PLACE_ROUNDS):
            step = "creation of the key's folders"
            try:
                if folder not in self._known_dirs:
                    self._ensure_dir_chain(folder)
                step = "rename into place"
                os.rename(src, dest)
                return
            except FileNotFoundError as exc:
                if not os.path.exists(src):
                    raise
                if round_ == _PLACE_ROUNDS - 1:
                    raise StorageError(f"{what}: {step} failed: {_errno_name(exc)}") from exc
                self._forget_dirs(folder)
            except OSError as exc:
                raise StorageError(f"{what}: {step} failed: {_errno_name(exc)}") from exc

    def _new_staging(self, key: str) -> Path:
        fd, name = tempfile.mkstemp(dir=self.staging_dir, prefix="w-", suffix=STAGING_SUFFIX)
        os.close(fd)
        return Path(name)

    def _prune(self, folder: str) -> None:
        """Remove `folder` and its ancestors below the objects folder while they are empty.
        Not fsynced: an empty folder that comes back after a crash is harmless."""
        d = folder
        while d != self._objects and d.startswith(self._objects + os.sep):
            self._known_dirs.discard(d)
            try:
                os.rmdir(d)
            except OSError:
                return  # not empty (or gone): its ancestors are not empty either
            d = os.path.dirname(d)

    # -- the ObjectStore port ----------------------------------------------------------------

    def commit(self, staging: Path, key: str) -> CommittedObject:
        """Move `staging` to `key` durably. On StorageError the staging file stays in place."""
        dest = self._path(key)
        folder = os.path.dirname(dest)
        src = os.fspath(staging)
        step = "fsync of the staging file"
        try:
            if self.fsync:
                fd = os.open(src, _FILE_OPEN_FLAGS)
                try:
                    os.fsync(fd)
                    size = os.fstat(fd).st_size
                finally:
                    os.close(fd)
            else:
                step = "stat of the staging file"
                size = os.stat(src).st_size
        except OSError as exc:
            raise StorageError(f"commit of {key}: {step} failed: {_errno_name(exc)}") from exc
        try:
            self._place(src, dest, f"commit of {key}")
        except FileNotFoundError as exc:
            raise StorageError(
                f"commit of {key}: rename into place failed: {_errno_name(exc)}"
            ) from exc
        if self.fsync:
            try:
                self._fsync_dir(folder)
            except OSError as exc:
                # Visible but not durable: take it back so that nothing unacknowledged is seen.
                try:
                    os.rename(dest, src)
                except OSError:
                    log.error("commit of %s: could not withdraw a non-durable object", key)
                raise StorageError(
                    f"commit of {key}: fsync of the destination folder failed: {_errno_name(exc)}"
                ) from exc
        return CommittedObject(key=key, size=size)

    def discard(self, staging: Path) -> None:
        try:
            os.unlink(staging)
        except FileNotFoundError:
            pass
        except Exception as exc:
            log.warning("could not discard a staging file: %s", exc)

    def list_keys(self, prefix: str = "") -> Iterator[str]:
        """Every committed key starting with `prefix` (a string prefix, as in S3), unordered."""
        validate_prefix(prefix)
        base_rel = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        start = os.path.join(self._objects, base_rel) if base_rel else self._objects
        stack = [(start, base_rel + "/" if base_rel else "")]
        while stack:
            folder, rel = stack.pop()
            try:
                it = os.scandir(folder)
            except (FileNotFoundError, NotADirectoryError):
                continue
            except OSError as exc:
                raise StorageError(f"listing of {prefix!r} failed: {_errno_name(exc)}") from exc
            with it:
                for entry in it:
                    name = entry.name
                    if name[0] == "." or name.endswith(STAGING_SUFFIX):
                        continue
                    key = rel + name
                    try:
                        is_dir = entry.is_dir(follow_symlinks=False)
                    except OSError:
                        continue
                    if is_dir:
                        sub = key + "/"
                        if sub.startswith(prefix) or prefix.startswith(sub):
                            stack.append((entry.path, sub))
                    elif key.startswith(prefix):
                        yield key

    def open(self, key: str) -> BinaryIO:
        """Read a committed object. A missing key raises FileNotFoundError."""
        path = self._path(key)
        try:
            return open(path, "rb")
        except FileNotFoundError:
            raise
        except OSError as exc:
            raise StorageError(f"open of {key} failed: {_errno_name(exc)}") from exc

    def delete(self, key: str) -> None:
        """Remove an object durably (its folder is fsynced); a missing key is fine."""
        path = self._path(key)
        try:
            os.unlink(path)
        except FileNotFoundError:
            return
        except OSError as exc:
            raise StorageError(f"delete of {key} failed: {_errno_name(exc)}") from exc
        try:
            if self.fsync:
                self._fsync_dir(os.path.dirname(path))
        except OSError as exc:
            raise StorageError(
                f"delete of {key}: fsync of its folder failed: {_errno_name(exc)}"
            ) from exc
        self._prune(os.path.dirname(path))

    def exists(self, key: str) -> bool:
        return os.path.isfile(self._path(key))

    def put_bytes(
        self, key: str, data: bytes, *, content_type: str = "application/octet-stream"
    ) -> None:
        """Commit `data` under `key` through a staging file (`content_type` is for S3)."""
        validate_key(key)
        staging = self._new_staging(key)
        try:
            with open(staging, "wb") as f:
                f.write(data)
            self.commit(staging, key)
        except OSError as exc:
            raise StorageError(f"write of {key} failed: {_errno_name(exc)}") from exc
        finally:
            self.discard(staging)  # gone already after a commit

    def copy(self, src: str, dst: str) -> None:
        """Copy into a staging file, then commit it under `dst`."""
        source = self._path(src)
        validate_key(dst)
        staging = self._new_staging(dst)
        try:
            shutil.copyfile(source, staging)
            self.commit(staging, dst)
        except FileNotFoundError as exc:
            if os.path.exists(source):
                raise StorageError(f"copy of {src} to {dst} failed: staging file vanished") from exc
            raise
        except OSError as exc:
            raise StorageError(f"copy of {src} to {dst} failed: {_errno_name(exc)}") from exc
        finally:
            self.discard(staging)

    def move(self, src: str, dst: str) -> None:
        """Rename `src` to `dst`, then fsync the destination folder and the source folder."""
        source, dest = self._path(src), self._path(dst)
        folder, source_folder = os.path.dirname(dest), os.path.dirname(source)
        try:
            self._place(source, dest, f"move of {src} to {dst}")
        except FileNotFoundError:
            if os.path.isfile(dest):
                return  # moved already: a replay
            raise FileNotFoundError(errno.ENOENT, f"no object {src}") from None
        step = "fsync of the destination folder"
        try:
            if self.fsync:
                self._fsync_dir(folder)
                step = "fsync of the source folder"
                self._fsync_dir(source_folder)
        except OSError as exc:
            raise StorageError(
                f"move of {src} to {dst}: {step} failed: {_errno_name(exc)}"
            ) from exc
        self._prune(source_folder)

    def uri(self, prefix: str) -> str:
        """`file://` URI of the folder of `prefix`, ending with '/'."""
        rel = validate_prefix(prefix).rstrip("/")
        folder = self.objects_dir / rel if rel else self.objects_dir
        return folder.as_uri().rstrip("/") + "/"
