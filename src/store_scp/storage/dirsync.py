"""Folder fsyncs shared by the commits that need them at the same moment (group commit).

Several associations committing into one folder each need an fsync of that folder after their
rename. One fsync started after a rename covers it, and every other rename made before that
fsync started: so while one thread syncs a folder, the commits that arrive meanwhile wait, and
the next fsync (started once the current one is done) answers all of them. Under one
association nothing changes (one fsync per commit); under many, fsyncs per folder drop to
about one per flush latency.

An fsync error is given to every commit its fsync was to cover, never retried on their behalf:
after a failed fsync, Linux may report a later one as successful although the data is lost.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from dataclasses import dataclass

_DIR_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_CLOEXEC", 0)


def fsync_folder(path: str) -> None:
    fd = os.open(path, _DIR_OPEN_FLAGS)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass
class _Folder:
    requested: int = 0  # requests numbered in arrival order
    synced: int = 0  # every request up to this one is covered by a finished fsync
    failed: int = 0  # every request above `synced` up to this one gets `error`
    error: OSError | None = None
    running: bool = False


class FolderSync:
    def __init__(self, fsync: Callable[[str], None] = fsync_folder) -> None:
        self._fsync = fsync
        self._cond = threading.Condition()
        self._folders: dict[str, _Folder] = {}

    def sync(self, path: str) -> None:
        """Return once an fsync of `path` that started after this call has finished.
        Raises the OSError of that fsync."""
        with self._cond:
            folder = self._folders.setdefault(path, _Folder())
            folder.requested += 1
            mine = folder.requested
            while True:
                if folder.synced >= mine:
                    return
                if folder.failed >= mine:
                    assert folder.error is not None
                    raise folder.error
                if not folder.running:
                    break
                self._cond.wait()
            folder.running = True
            covers = folder.requested
        error: OSError | None = None
        try:
            self._fsync(path)
        except OSError as exc:
            error = exc
        with self._cond:
            folder.running = False
            if error is None:
                folder.synced = covers
            else:
                folder.failed, folder.error = covers, error
            if folder.requested == covers and self._folders.get(path) is folder:
                del self._folders[path]  # nobody waits on it: forget the folder
            self._cond.notify_all()
        if error is not None:
            raise error
