"""LocalObjectStore on the real file system: visibility, key rules, durability order, failures."""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from store_scp.storage.base import StorageError
from store_scp.storage.local import LocalObjectStore

KEY = "batch-1/1.2.840.1/1.2.840.1.2/1.2.840.1.2.3.dcm"


def stage(store: LocalObjectStore, data: bytes) -> Path:
    """Create a staging file the way the receiver does."""
    fd, name = tempfile.mkstemp(dir=store.staging_dir, suffix=".part")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    return Path(name)


def visible_files(store: LocalObjectStore) -> list[str]:
    """Every regular file under objects/ except the staging folder, by relative path."""
    out = []
    for dirpath, dirnames, filenames in os.walk(store.objects_dir):
        if Path(dirpath) == store.objects_dir:
            dirnames[:] = [d for d in dirnames if d != ".staging"]
        for name in filenames:
            out.append(os.path.relpath(os.path.join(dirpath, name), store.objects_dir))
    return sorted(out)


@pytest.fixture
def store(tmp_path: Path) -> LocalObjectStore:
    return LocalObjectStore(tmp_path / "data")


# -- visibility ------------------------------------------------------------------------------


def test_layout(tmp_path: Path) -> None:
    st = LocalObjectStore(tmp_path / "data")
    assert st.objects_dir == tmp_path / "data" / "objects"
    # One staging folder per process, under objects/.staging/
    assert st.staging_dir.parent == tmp_path / "data" / "objects" / ".staging"
    assert st.staging_dir.is_dir()
    assert os.stat(st.staging_dir).st_dev == os.stat(st.objects_dir).st_dev


def test_commit_makes_the_object_visible_with_identical_bytes(store: LocalObjectStore) -> None:
    data = os.urandom(16 * 1024) + b"\x00\r\n" + os.urandom(3)
    staging = stage(store, data)
    assert list(store.list_keys()) == []

    committed = store.commit(staging, KEY)

    assert committed.key == KEY
    assert committed.size == len(data)
    assert not staging.exists(), "the staging file is consumed"
    assert (store.objects_dir / KEY).read_bytes() == data
    with store.open(KEY) as f:
        assert f.read() == data
    assert list(store.list_keys()) == [KEY]
    assert list(store.staging_dir.iterdir()) == []


def test_empty_object(store: LocalObjectStore) -> None:
    committed = store.commit(stage(store, b""), "b/empty.dcm")
    assert committed.size == 0
    assert (store.objects_dir / "b/empty.dcm").read_bytes() == b""


def test_staging_and_temporary_files_are_never_listed(store: LocalObjectStore) -> None:
    pending = stage(store, b"in flight")
    store.commit(stage(store, b"done"), "b1/s/done.dcm")
    # Leftovers that other tools might drop in the tree.
    (store.objects_dir / "b1" / "s" / ".tmp-editor").write_bytes(b"x")
    (store.objects_dir / "b1" / "s" / "copy.dcm.part").write_bytes(b"x")
    (store.objects_dir / ".hidden").mkdir()
    (store.objects_dir / ".hidden" / "y.dcm").write_bytes(b"y")

    assert list(store.list_keys()) == ["b1/s/done.dcm"]
    assert list(store.list_keys("b1/")) == ["b1/s/done.dcm"]
    assert pending.exists()


def test_list_keys_prefix_is_a_string_prefix(store: LocalObjectStore) -> None:
    keys = ["b1/s1/a.dcm", "b1/s2/b.dcm", "b10/s1/c.dcm", "b2/s1/d.dcm", "top.dcm"]
    for key in keys:
        store.commit(stage(store, key.encode()), key)
    assert sorted(store.list_keys()) == sorted(keys)
    assert sorted(store.list_keys("b1/")) == ["b1/s1/a.dcm", "b1/s2/b.dcm"]
    assert sorted(store.list_keys("b1")) == ["b1/s1/a.dcm", "b1/s2/b.dcm", "b10/s1/c.dcm"]
    assert sorted(store.list_keys("b1/s1")) == ["b1/s1/a.dcm"]
    assert list(store.list_keys("b3/")) == []
    assert list(store.list_keys("top")) == ["top.dcm"]
    for bad in ["/etc/", "../", "b1/../b2/", ".staging/"]:
        with pytest.raises(ValueError):
            list(store.list_keys(bad))


def test_commit_replaces_an_existing_key(store: LocalObjectStore) -> None:
    store.commit(stage(store, b"first"), KEY)
    store.commit(stage(store, b"second"), KEY)
    with store.open(KEY) as f:
        assert f.read() == b"second"
    assert list(store.list_keys()) == [KEY]


@pytest.mark.parametrize(
    "key",
    [
        "",
        "/abs/x.dcm",
        "../x.dcm",
        "a/../../x.dcm",
        "a/..",
        "a//b.dcm",
        "a/",
        "a/./b.dcm",
        ".staging/x.dcm",
        "a/.hidden",
        "a/x.part",
        "a\\b.dcm",
        "a\x00b.dcm",
    ],
)
def test_bad_keys_are_rejected(store: LocalObjectStore, key: str) -> None:
    staging = stage(store, b"x")
    with pytest.raises(ValueError):
        store.commit(staging, key)
    with pytest.raises(ValueError):
        store.open(key)
    with pytest.raises(ValueError):
        store.delete(key)
    assert staging.exists()
    assert visible_files(store) == []


def test_open_delete_and_uri(store: LocalObjectStore) -> None:
    store.commit(stage(store, b"abc"), "b1/x.dcm")
    store.commit(stage(store, b"def"), "b1/y.dcm")
    store.delete("b1/x.dcm")
    store.delete("b1/x.dcm")  # missing is fine
    store.delete("never/was.dcm")
    assert list(store.list_keys()) == ["b1/y.dcm"]
    with pytest.raises(FileNotFoundError):
        store.open("b1/x.dcm")

    assert store.uri("b1") == (store.objects_dir / "b1").as_uri() + "/"
    assert store.uri("b1/") == (store.objects_dir / "b1").as_uri() + "/"
    assert store.uri("") == store.objects_dir.as_uri() + "/"
    assert store.uri("b1").startswith("file:///")
    with pytest.raises(ValueError):
        store.uri("../elsewhere")


def test_discard_never_raises(store: LocalObjectStore) -> None:
    staging = stage(store, b"x")
    store.discard(staging)
    assert not staging.exists()
    store.discard(staging)
    store.discard(store.staging_dir / "does-not-exist.part")
    store.discard(store.staging_dir)  # a folder: unlink fails, discard swallows it


def test_commit_of_a_missing_staging_file_raises(store: LocalObjectStore) -> None:
    with pytest.raises(StorageError, match="ENOENT"):
        store.commit(store.staging_dir / "gone.part", KEY)
    assert visible_files(store) == []


def test_folder_removed_behind_the_cache_is_recreated(store: LocalObjectStore) -> None:
    store.commit(stage(store, b"1"), "b1/s/one.dcm")
    shutil.rmtree(store.objects_dir / "b1")  # by another process, or by hand
    store.commit(stage(store, b"2"), "b1/s/two.dcm")
    assert list(store.list_keys()) == ["b1/s/two.dcm"]


def test_concurrent_commits_into_new_folders(store: LocalObjectStore) -> None:
    payloads = {
        f"b{i % 3}/st{i % 5}/se{i % 7}/{i:04d}.dcm": os.urandom(100 + i) for i in range(300)
    }

    def commit(item: tuple[str, bytes]) -> None:
        store.commit(stage(store, item[1]), item[0])

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(commit, payloads.items()))
    assert sorted(store.list_keys()) == sorted(payloads)
    for key, data in payloads.items():
        assert (store.objects_dir / key).read_bytes() == data


def test_reopening_a_store_keeps_committed_objects(tmp_path: Path) -> None:
    first = LocalObjectStore(tmp_path / "data")
    first.commit(stage(first, b"kept"), KEY)
    second = LocalObjectStore(tmp_path / "data")
    assert list(second.list_keys()) == [KEY]
    second.commit(stage(second, b"more"), KEY.replace(".dcm", "-2.dcm"))
    assert len(list(second.list_keys())) == 2


# -- start-up cleanup --------------------------------------------------------------------------


def test_leftover_part_files_are_removed_at_start_up(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "data" / "objects" / ".staging"
    dead = root / "dead-owner"
    dead.mkdir(parents=True)
    (root / "dead-owner.lock").write_bytes(b"")  # nobody holds its lock: its owner died
    old = [dead / f"tmpcrash{i}.part" for i in range(3)]
    for path in old:
        path.write_bytes(b"half an object")
    loose = root / "tmploose.part"  # an old layout's leftover
    loose.write_bytes(b"half")
    live = root / "live-owner"
    live.mkdir()
    lock_fd = os.open(root / "live-owner.lock", os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(lock_fd, fcntl.LOCK_EX)  # a live process holds it
    inflight = live / "tmpinflight.part"
    inflight.write_bytes(b"being received")
    other = root / "notes.txt"
    other.write_bytes(b"not a staging file")
    try:
        with caplog.at_level(logging.INFO, logger="store_scp.storage.staging"):
            st = LocalObjectStore(tmp_path / "data")
        assert not dead.exists()
        assert not (root / "dead-owner.lock").exists()
        assert not loose.exists()
        assert inflight.exists(), "a live process's staging file must never be removed"
        assert other.exists()
        assert list(st.list_keys()) == []
        messages = " ".join(r.getMessage() for r in caplog.records)
        assert "4" in messages
        assert "tmpcrash" not in messages, "log a count, never names"
    finally:
        os.close(lock_fd)


def test_a_restart_right_after_a_crash_removes_its_leftovers(tmp_path: Path) -> None:
    """No clock involved: a process killed a moment ago has released its lock."""
    script = (
        "import sys, os, signal\n"
        "from pathlib import Path\n"
        "from store_scp.storage.local import LocalObjectStore\n"
        "st = LocalObjectStore(Path(sys.argv[1]))\n"
        "(st.staging_dir / 'x.part').write_bytes(b'partial')\n"
        "print(st.staging_dir, flush=True)\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "data")], capture_output=True, text=True
    )
    assert out.returncode == -signal.SIGKILL
    crashed = Path(out.stdout.strip())
    assert (crashed / "x.part").exists()
    LocalObjectStore(tmp_path / "data")
    assert not crashed.exists()


def test_two_stores_in_one_process_have_separate_staging(tmp_path: Path) -> None:
    a = LocalObjectStore(tmp_path / "data")
    b = LocalObjectStore(tmp_path / "data")
    assert a.staging_dir != b.staging_dir
    assert a.staging_dir.exists(), "a live store's folder survives another store's clean-up"


# -- copy, move, put_bytes, exists ----------------------------------------------------------


def test_copy_and_put_bytes_commit_new_objects(store: LocalObjectStore) -> None:
    data = os.urandom(3000)
    store.commit(stage(store, data), KEY)
    store.copy(KEY, f"retry/r1/{KEY}")
    store.put_bytes(f"quarantine/{KEY}.json", b'{"reason": "x"}')
    assert store.exists(KEY) and store.exists(f"retry/r1/{KEY}")
    with store.open(f"retry/r1/{KEY}") as f:
        assert f.read() == data
    with store.open(f"quarantine/{KEY}.json") as f:
        assert f.read() == b'{"reason": "x"}'
    store.put_bytes(f"quarantine/{KEY}.json", b"{}")  # replaces
    with store.open(f"quarantine/{KEY}.json") as f:
        assert f.read() == b"{}"
    with pytest.raises(FileNotFoundError):
        store.copy("b9/none.dcm", "retry/r1/none.dcm")
    assert not store.exists("b9/none.dcm")
    assert not store.exists("retry/r1/none.dcm")
    assert list(store.staging_dir.iterdir()) == []  # nothing left behind


def test_move_is_a_rename_and_replays(store: LocalObjectStore) -> None:
    data = b"object bytes"
    store.commit(stage(store, data), KEY)
    store.move(KEY, f"quarantine/{KEY}")
    assert sorted(store.list_keys()) == [f"quarantine/{KEY}"]
    with store.open(f"quarantine/{KEY}") as f:
        assert f.read() == data
    store.move(KEY, f"quarantine/{KEY}")  # a replay after a crash: nothing to do
    assert sorted(store.list_keys()) == [f"quarantine/{KEY}"]
    with pytest.raises(FileNotFoundError):
        store.move("b9/none.dcm", "quarantine/b9/none.dcm")
    # The emptied batch folders are gone; the objects folder and the staging folder stay.
    assert not (store.objects_dir / "batch-1").exists()
    assert store.staging_dir.exists()
    # A commit into a folder pruned behind the cache of this store recreates it.
    store.commit(stage(store, b"again"), KEY)
    with store.open(KEY) as f:
        assert f.read() == b"again"


def test_commits_survive_folders_pruned_at_the_same_time(tmp_path: Path) -> None:
    # Two stores on one root stand for a receiver and a cleaning worker: each empties and
    # prunes the study folder the other is creating series folders in.
    stores = [LocalObjectStore(tmp_path / "data", fsync=False) for _ in range(2)]

    def churn(n: int) -> None:
        st = stores[n]
        for i in range(400):
            key = f"b1/study/se-{n}-{i}/one.dcm"
            st.commit(stage(st, b"x"), key)
            st.delete(key)

    with ThreadPoolExecutor(2) as pool:
        for future in [pool.submit(churn, n) for n in range(2)]:
            future.result()  # no StorageError
    assert list(stores[0].list_keys()) == []


def test_delete_prunes_empty_folders_only(store: LocalObjectStore) -> None:
    store.commit(stage(store, b"a"), "b1/st/se/one.dcm")
    store.commit(stage(store, b"b"), "b1/st/other/two.dcm")
    store.delete("b1/st/se/one.dcm")
    assert not (store.objects_dir / "b1/st/se").exists()
    assert (store.objects_dir / "b1/st/other/two.dcm").exists()
    store.delete("b1/st/other/two.dcm")
    assert not (store.objects_dir / "b1").exists()
    assert store.objects_dir.exists()


# -- durability order ------------------------------------------------------------------------


class SyscallRecorder:
    """Records fsync (file or dir, inode) and rename calls, in order, across threads."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[tuple[str, str, int]] = []
        self._lock = threading.Lock()
        real_fsync, real_rename = os.fsync, os.rename

        def fsync(fd: int) -> None:
            st = os.fstat(fd)
            kind = "dir" if stat.S_ISDIR(st.st_mode) else "file"
            real_fsync(fd)
            with self._lock:
                self.calls.append(("fsync", kind, st.st_ino))

        def rename(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
            real_rename(src, dst)
            with self._lock:
                self.calls.append(("rename", os.fspath(dst), os.stat(dst).st_ino))

        monkeypatch.setattr(os, "fsync", fsync)
        monkeypatch.setattr(os, "rename", rename)

    def take(self) -> list[tuple[str, str, int]]:
        calls, self.calls = self.calls, []
        return calls


def ino(path: Path) -> int:
    return os.stat(path).st_ino


def test_fsync_file_then_rename_then_fsync_folder(
    store: LocalObjectStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    rec = SyscallRecorder(monkeypatch)
    staging = stage(store, os.urandom(16 * 1024))
    file_ino = ino(staging)

    store.commit(staging, "b1/st/se/one.dcm")
    calls = rec.take()

    dest = store.objects_dir / "b1/st/se/one.dcm"
    folder = dest.parent
    # The staging file first, the rename, and the destination folder last.
    assert calls[0] == ("fsync", "file", file_ino)
    assert calls[-2] == ("rename", str(dest), file_ino)
    assert calls[-1] == ("fsync", "dir", ino(folder))
    # Every new folder's entry is made durable in its parent, before the rename.
    new_folder_parents = {ino(store.objects_dir), ino(store.objects_dir / "b1"), ino(folder.parent)}
    assert {c[2] for c in calls[1:-2]} == new_folder_parents
    assert all(c[:2] == ("fsync", "dir") for c in calls[1:-2])

    # Next object in the same folder: no folder work at all, just the three steps.
    staging = stage(store, b"second")
    file_ino = ino(staging)
    store.commit(staging, "b1/st/se/two.dcm")
    assert rec.take() == [
        ("fsync", "file", file_ino),
        ("rename", str(folder / "two.dcm"), file_ino),
        ("fsync", "dir", ino(folder)),
    ]


def test_move_is_durable_at_both_ends(
    store: LocalObjectStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.commit(stage(store, b"x"), "b1/st/se/one.dcm")
    store.commit(stage(store, b"y"), "b1/st/se/two.dcm")
    source_folder = ino(store.objects_dir / "b1/st/se")
    rec = SyscallRecorder(monkeypatch)
    store.move("b1/st/se/one.dcm", "quarantine/b1/st/se/one.dcm")
    dest = store.objects_dir / "quarantine/b1/st/se/one.dcm"
    calls = rec.take()
    # The new name is durable (its folders, then the rename, then its folder), then the old
    # folder without the name.
    assert calls[-3] == ("rename", str(dest), ino(dest))
    assert calls[-2] == ("fsync", "dir", ino(dest.parent))
    assert calls[-1] == ("fsync", "dir", source_folder)
    assert all(c[:2] == ("fsync", "dir") for c in calls[:-3])
    store.delete("b1/st/se/two.dcm")
    assert rec.take() == [("fsync", "dir", source_folder)]


def test_no_fsync_at_all_when_disabled(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rec = SyscallRecorder(monkeypatch)
    st = LocalObjectStore(tmp_path / "data", fsync=False)
    st.commit(stage(st, b"a"), "b1/st/se/one.dcm")
    st.commit(stage(st, b"b"), "b1/st/se/two.dcm")
    calls = rec.take()
    assert [c[0] for c in calls] == ["rename", "rename"]
    assert sorted(st.list_keys()) == ["b1/st/se/one.dcm", "b1/st/se/two.dcm"]


# -- failures --------------------------------------------------------------------------------


def test_rename_failure_raises_storage_error_and_nothing_is_visible(
    store: LocalObjectStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full(src: object, dst: object) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "rename", full)
    marker = b"PATIENT-NAME-MARKER"
    staging = stage(store, marker * 10)
    with pytest.raises(StorageError) as info:
        store.commit(staging, KEY)
    message = str(info.value)
    assert "ENOSPC" in message
    assert "rename" in message
    assert "PATIENT-NAME-MARKER" not in message
    assert staging.exists(), "a failed commit leaves the staging file for the caller to discard"
    assert list(store.list_keys()) == []
    assert visible_files(store) == []


def test_file_fsync_failure_raises_before_anything_is_visible(
    store: LocalObjectStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    def eio(fd: int) -> None:
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(os, "fsync", eio)
    staging = stage(store, b"x")
    with pytest.raises(StorageError, match=r"fsync of the staging file failed: EIO"):
        store.commit(staging, KEY)
    assert staging.exists()
    assert visible_files(store) == []


def test_folder_fsync_failure_after_rename_withdraws_the_object(
    store: LocalObjectStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.commit(stage(store, b"warm"), "b1/warm.dcm")  # the folder exists and is cached
    real_fsync = os.fsync

    def fail_on_dirs(fd: int) -> None:
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fail_on_dirs)
    staging = stage(store, b"not durable")
    with pytest.raises(StorageError, match=r"destination folder failed: EIO"):
        store.commit(staging, "b1/new.dcm")
    assert list(store.list_keys()) == ["b1/warm.dcm"]
    assert staging.read_bytes() == b"not durable", "put back for the caller to discard"


NOBODY = 65534


def _commit_as_nobody(st: LocalObjectStore, staging: Path, key: str) -> str:
    """Run `st.commit` in a forked child that dropped root; return how it ended."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: never return into pytest
        code = 2
        try:
            os.close(read_fd)
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            try:
                st.commit(staging, key)
                outcome = "committed"
            except StorageError as exc:
                outcome = f"StorageError: {exc}"
            os.write(write_fd, outcome.encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as f:
        outcome = f.read().decode()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, outcome
    return outcome


def test_read_only_folder_raises_storage_error() -> None:
    """A folder the process may not write to (root ignores modes: checked as 'nobody')."""
    base = Path(tempfile.mkdtemp(prefix="store-ro-"))
    try:
        st = LocalObjectStore(base / "data")
        st.commit(stage(st, b"a"), "b1/a.dcm")
        staging = stage(st, b"b")
        if os.geteuid() == 0:
            for dirpath, _dirs, files in os.walk(base):
                os.chown(dirpath, NOBODY, NOBODY)
                for name in files:
                    os.chown(os.path.join(dirpath, name), NOBODY, NOBODY)
        os.chmod(st.objects_dir / "b1", 0o555)
        try:
            if os.geteuid() == 0:
                outcome = _commit_as_nobody(st, staging, "b1/b.dcm")
            else:
                try:
                    st.commit(staging, "b1/b.dcm")
                    outcome = "committed"
                except StorageError as exc:
                    outcome = f"StorageError: {exc}"
        finally:
            os.chmod(st.objects_dir / "b1", 0o755)
        assert outcome.startswith("StorageError:"), outcome
        assert "rename into place failed: EACCES" in outcome
        assert staging.exists()
        assert list(st.list_keys()) == ["b1/a.dcm"]
    finally:
        shutil.rmtree(base)


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A small tmpfs (1 MiB, 64 inodes) mounted for one test; skipped where mount is refused."""
    mnt = tmp_path / "tmpfs"
    mnt.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root and mount(8)")
    res = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m,nr_inodes=64", "tmpfs", str(mnt)],
        capture_output=True,
        text=True,
    )
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {res.stderr.strip() or res.returncode}")
    try:
        yield mnt
    finally:
        if subprocess.run(["umount", str(mnt)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_full_file_system_raises_storage_error(tmpfs: Path) -> None:
    st = LocalObjectStore(tmpfs / "data")
    st.commit(stage(st, b"before"), "b1/before.dcm")
    staging = stage(st, b"y" * 4096)
    filler = tmpfs / "filler"
    filler.mkdir()
    with pytest.raises(OSError) as info:  # use up every inode
        for i in range(1000):
            (filler / str(i)).touch()
    assert info.value.errno == errno.ENOSPC

    with pytest.raises(StorageError, match="ENOSPC"):
        st.commit(staging, "b2/st/se/new.dcm")  # needs new folders: no inode left
    assert staging.exists()
    assert list(st.list_keys()) == ["b1/before.dcm"]
    assert visible_files(st) == ["b1/before.dcm"]
    st.discard(staging)
    assert not staging.exists()


def test_read_only_file_system_raises_storage_error(tmpfs: Path) -> None:
    st = LocalObjectStore(tmpfs / "data")
    st.commit(stage(st, b"before"), "b1/before.dcm")
    into_existing = stage(st, b"a")
    into_new = stage(st, b"b")
    subprocess.run(["mount", "-o", "remount,ro", str(tmpfs)], check=True)
    try:
        with pytest.raises(StorageError, match="EROFS"):
            st.commit(into_existing, "b1/existing-folder.dcm")
        with pytest.raises(StorageError, match="EROFS"):
            st.commit(into_new, "b9/new-folder.dcm")
        assert list(st.list_keys()) == ["b1/before.dcm"]
    finally:
        subprocess.run(["mount", "-o", "remount,rw", str(tmpfs)], check=True)
    assert into_existing.exists()
    assert into_new.exists()
    assert visible_files(st) == ["b1/before.dcm"]
