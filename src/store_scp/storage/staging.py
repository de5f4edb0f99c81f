"""Staging folders: one per process, owned through a lock the kernel releases at death.

Each process writes its staging files into its own folder `<parent>/<owner>/` and holds an
exclusive flock on `<parent>/<owner>.lock` for as long as it lives. At start-up a process
removes every staging folder whose lock it can take (its owner died: crash, kill -9), folders
with no lock file at all, and loose `*.part` files. A live process's files are never touched,
and a restart right after a crash removes the crash's leftovers: no clock is involved.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import secrets
import shutil
from pathlib import Path

log = logging.getLogger(__name__)

STAGING_SUFFIX = ".part"
_LOCK_SUFFIX = ".lock"
_HELD: list[int] = []  # lock descriptors held for the life of the process
_OPEN_LOCK = os.O_RDONLY | os.O_CLOEXEC  # read-only: a held lock never blocks a remount


def _try_lock(path: Path) -> int | None:
    """A descriptor holding the exclusive lock on `path`, or None if someone holds it."""
    try:
        fd = os.open(path, _OPEN_LOCK)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def _count_parts(folder: Path) -> int:
    try:
        return sum(1 for p in folder.iterdir() if p.name.endswith(STAGING_SUFFIX))
    except OSError:
        return 0


def remove_dead_staging(parent: Path) -> int:
    """Remove staging files of dead processes under `parent`; returns how many files."""
    removed = 0
    try:
        names = {entry.name: entry.is_dir(follow_symlinks=False) for entry in os.scandir(parent)}
    except FileNotFoundError:
        return 0
    for name, is_dir in names.items():
        path = parent / name
        try:
            if name.endswith(_LOCK_SUFFIX):
                fd = _try_lock(path)
                if fd is None:
                    continue  # a live owner
                folder = parent / name[: -len(_LOCK_SUFFIX)]
                removed += _count_parts(folder)
                shutil.rmtree(folder, ignore_errors=True)
                os.unlink(path)
                os.close(fd)
            elif is_dir and f"{name}{_LOCK_SUFFIX}" not in names:
                # An owner's lock file goes before its folder is made and after it is removed:
                # a folder without one is a leftover of an interrupted clean-up.
                removed += _count_parts(path)
                shutil.rmtree(path, ignore_errors=True)
            elif name.endswith(STAGING_SUFFIX):
                os.unlink(path)
                removed += 1
        except OSError as exc:
            log.warning("could not remove a leftover staging file: %s", exc.strerror)
    if removed:
        log.warning("removed %d leftover staging file(s) of a process that died", removed)
    return removed


def claim_staging_dir(parent: Path) -> Path:
    """Clean up after dead processes, then make and lock this process's staging folder."""
    parent.mkdir(parents=True, exist_ok=True)
    remove_dead_staging(parent)
    while True:
        name = f"{os.getpid():x}-{secrets.token_hex(4)}"
        lock = parent / f"{name}{_LOCK_SUFFIX}"
        with open(lock, "xb"):
            pass
        fd = os.open(lock, _OPEN_LOCK)
        fcntl.flock(fd, fcntl.LOCK_EX)
        # Another process's clean-up may have taken the lock between create and flock and
        # removed it: then this name is lost, try another.
        try:
            same = os.fstat(fd).st_ino == os.stat(lock).st_ino
        except FileNotFoundError:
            same = False
        if same:
            folder = parent / name
            folder.mkdir()
            _HELD.append(fd)
            return folder
        with contextlib.suppress(OSError):
            os.close(fd)
