"""Durability order: every object is fsynced, renamed and its folder fsynced before its success.

kill -9 cannot show power-loss safety; the order of the system calls can. The receiver runs
with strace attached, receives objects over one association, and the log is checked by
`strace_order` (see its docstring for the exact rules). The same analysis on a receiver run with
STORE_SCP_FSYNC=false must find the fsyncs missing, which shows the check can fail.
"""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import struct
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid
from pynetdicom import AE
from pynetdicom.dsutils import encode

from tests.dicomfactory import secondary_capture
from tests.integration.strace_order import analyze_trace, check_durability_order, strace_command
from tests.serverproc import DCMTK, ServerProcess, start_server

N_OBJECTS = 20

# -- the parser on handcrafted traces ------------------------------------------------------------

ROOT = "/srv/data/objects"
STAGING = f"{ROOT}/.staging/abcd-0.part"
UID = "1.2.826.0.1.3680043.8.498.1"
FOLDER = f"{ROOT}/batch1/1.2.3/1.2.3.4"
KEY_PATH = f"{FOLDER}/{UID}.dcm"


def _element(tag: int, value: bytes) -> bytes:
    return struct.pack("<HHI", tag >> 16, tag & 0xFFFF, len(value)) + value


def _uid_value(uid: str) -> bytes:
    raw = uid.encode()
    return raw + b"\x00" if len(raw) % 2 else raw


def store_rsp_pdu(uid: str, status: int = 0x0000, context_id: int = 1) -> bytes:
    """A P-DATA-TF holding a whole C-STORE-RSP command set, as a receiver sends it."""
    body = (
        _element(0x00000002, _uid_value(SecondaryCaptureImageStorage))
        + _element(0x00000100, struct.pack("<H", 0x8001))
        + _element(0x00000120, struct.pack("<H", 1))
        + _element(0x00000800, struct.pack("<H", 0x0101))
        + _element(0x00000900, struct.pack("<H", status))
        + _element(0x00001000, _uid_value(uid))
    )
    command = _element(0x00000000, struct.pack("<I", len(body))) + body
    pdv = struct.pack(">IBB", len(command) + 2, context_id, 0x03) + command
    return struct.pack(">BBI", 0x04, 0, len(pdv)) + pdv


def hexs(data: bytes | str) -> str:
    """An strace -xx string literal."""
    raw = data.encode() if isinstance(data, str) else data
    return '"' + "".join(f"\\x{b:02x}" for b in raw) + '"'


RSP = store_rsp_pdu(UID)

# (tid, call) in log order; timestamps are added by `trace()`.
GOOD: list[tuple[int, str]] = [
    (100, "accept4(15, NULL, NULL, SOCK_CLOEXEC|SOCK_NONBLOCK) = 17"),
    (100, f"openat(AT_FDCWD, {hexs(STAGING)}, O_WRONLY|O_CREAT|O_EXCL|O_CLOEXEC, 0600) = 19"),
    (100, f"write(19, {hexs(b'DICM')}, 4) = 4"),
    (100, "close(19) = 0"),
    (101, f"openat(AT_FDCWD, {hexs(STAGING)}, O_RDONLY|O_CLOEXEC) = 19"),
    (101, "fsync(19 <unfinished ...>"),
    (100, f"write(9, {hexs(bytes(8))}, 8) = 8"),  # another thread runs meanwhile
    (101, "<... fsync resumed>) = 0"),
    (101, "close(19) = 0"),
    (101, f'mkdir("{ROOT}/batch1", 0777) = 0'),  # plain (not -xx) strings are understood too
    (101, f"openat(AT_FDCWD, {hexs(ROOT)}, O_RDONLY|O_CLOEXEC|O_DIRECTORY) = 20"),
    (101, "fsync(20) = 0"),
    (101, "close(20) = 0"),
    (101, f"rename({hexs(STAGING)}, {hexs(KEY_PATH)}) = 0"),
    (101, f"openat(AT_FDCWD, {hexs(FOLDER)}, O_RDONLY|O_CLOEXEC|O_DIRECTORY) = 19"),
    (101, "fsync(19) = 0"),
    (101, "close(19)         = 0"),
    (100, f"write(17, {hexs(RSP)}, {len(RSP)}) = {len(RSP)}"),
]


def trace(tmp_path: Path, calls: list[tuple[int, str]]) -> Path:
    path = tmp_path / "trace.txt"
    start = 36000.0
    lines = []
    for i, (tid, text) in enumerate(calls):
        t = start + i * 0.0001
        stamp = time.strftime("%H:%M:%S", time.gmtime(t)) + f".{round((t % 1) * 1e6):06d}"
        lines.append(f"{tid:<5} {stamp} {text}\n")
    path.write_text("".join(lines))
    return path


def index(text: str) -> int:
    return next(i for i, (_, call) in enumerate(GOOD) if call.startswith(text))


def test_parser_accepts_a_durable_commit(tmp_path: Path) -> None:
    analysis = analyze_trace(trace(tmp_path, GOOD), expected_uids=[UID])
    assert analysis.violations == []
    assert analysis.problems == []
    assert [r.sop_instance_uid for r in analysis.responses] == [UID]
    (commit,) = analysis.commits
    assert commit.staging == STAGING and commit.key_path == KEY_PATH
    # The interrupted fsync keeps its entry and its completion line.
    assert commit.file_flush is not None
    assert (commit.file_flush.start, commit.file_flush.end) == (6, 8)
    assert commit.dir_flush is not None and commit.dir_flush.start == 16


def test_parser_uses_the_completion_of_an_interrupted_fsync(tmp_path: Path) -> None:
    # The folder's fsync is entered before the response but finishes after it was written.
    assert GOOD[-3][1] == "fsync(19) = 0"
    calls = [
        *GOOD[:-3],
        (101, "fsync(19 <unfinished ...>"),
        GOOD[-1],
        (101, "<... fsync resumed>) = 0"),
        (101, "close(19) = 0"),
    ]
    violations = check_durability_order(trace(tmp_path, calls), expected_uids=[UID])
    assert violations == [
        f"{UID} (C-STORE-RSP at line {len(GOOD) - 1}): "
        "the destination folder was fsynced only after the response"
    ]


def test_parser_frees_a_descriptor_when_its_close_starts(tmp_path: Path) -> None:
    # Seen with concurrent commits: thread 102 closes descriptor 19 and thread 101 gets the
    # number 19 for the staging file before the close is logged as finished.
    i = index(f"openat(AT_FDCWD, {hexs(STAGING)}, O_RDONLY")
    calls = [
        *GOOD[:i],
        (102, f"openat(AT_FDCWD, {hexs(ROOT)}, O_RDONLY|O_CLOEXEC|O_DIRECTORY) = 19"),
        (102, "close(19 <unfinished ...>"),
        (101, f"openat(AT_FDCWD, {hexs(STAGING)}, O_RDONLY|O_CLOEXEC) = 19"),
        (102, "<... close resumed>) = 0"),
        *GOOD[i + 1 :],
    ]
    # GOOD's thread 100 closes 19 (its write descriptor) first; 102 then reuses the number.
    analysis = analyze_trace(trace(tmp_path, calls), expected_uids=[UID])
    assert analysis.violations == [] and analysis.problems == []
    (commit,) = analysis.commits
    assert commit.file_flush is not None


def test_parser_keeps_a_number_reused_while_a_close_was_unfinished(tmp_path: Path) -> None:
    # Another thread's close of 19 is entered, the kernel frees 19, the folder's openat gets it,
    # and only then is the close's completion logged: it must not forget the folder's 19.
    folder_open = index(f"openat(AT_FDCWD, {hexs(FOLDER)}")
    calls = [
        *GOOD[:folder_open],
        (102, f"openat(AT_FDCWD, {hexs('/srv/other')}, O_RDONLY|O_CLOEXEC) = 19"),
        (102, "close(19 <unfinished ...>"),
        GOOD[folder_open],
        (102, "<... close resumed>) = 0"),
        *GOOD[folder_open + 1 :],
    ]
    analysis = analyze_trace(trace(tmp_path, calls), expected_uids=[UID])
    assert analysis.violations == []
    (commit,) = analysis.commits
    assert commit.dir_flush is not None


def test_parser_finds_missing_fsyncs(tmp_path: Path) -> None:
    calls = [c for c in GOOD if not c[1].startswith(("fsync", "<... fsync"))]
    violations = check_durability_order(trace(tmp_path, calls), expected_uids=[UID])
    assert len(violations) == 3
    assert "no fsync of the staging file" in violations[0]
    assert "no fsync of the destination folder after the rename" in violations[1]
    assert "folder batch1 created, parent not fsynced" in violations[2]


def test_parser_finds_an_fsync_before_the_last_write(tmp_path: Path) -> None:
    calls = list(GOOD)
    late_write = (100, f"write(21, {hexs(b'more')}, 4) = 4")
    reopen = (100, f"openat(AT_FDCWD, {hexs(STAGING)}, O_WRONLY|O_CLOEXEC) = 21")
    i = index("<... fsync resumed>") + 1  # written again after its fsync
    calls[i:i] = [reopen, late_write, (100, "close(21) = 0")]
    violations = check_durability_order(trace(tmp_path, calls), expected_uids=[UID])
    assert len(violations) == 1
    assert "the staging file was fsynced before its last write" in violations[0]


def test_parser_finds_a_rename_after_the_response(tmp_path: Path) -> None:
    calls = list(GOOD)
    rsp = calls.pop()
    calls.insert(index("rename("), rsp)
    violations = check_durability_order(trace(tmp_path, calls), expected_uids=[UID])
    assert violations == [
        f"{UID} (C-STORE-RSP at line {index('rename(') + 1}): "
        f"the rename to {UID}.dcm finished after the response was sent"
    ]


def test_parser_reads_writev_and_split_pdus(tmp_path: Path) -> None:
    # The response leaves in two syscalls; its first byte decides when it was sent.
    calls = list(GOOD)
    calls.pop()
    head, tail = RSP[:10], RSP[10:]
    calls.append((100, f"writev(17, [{{iov_base={hexs(head)}, iov_len={len(head)}}}], 1) = 10"))
    calls.append((100, f"sendto(17, {hexs(tail)}, {len(tail)}, 0, NULL, 0) = {len(tail)}"))
    analysis = analyze_trace(trace(tmp_path, calls), expected_uids=[UID])
    assert analysis.violations == []
    assert analysis.responses[0].call.name == "writev"


def test_parser_needs_a_successful_response(tmp_path: Path) -> None:
    calls = list(GOOD)
    failed = store_rsp_pdu(UID, status=0xA700)
    calls[-1] = (100, f"write(17, {hexs(failed)}, {len(failed)}) = {len(failed)}")
    assert check_durability_order(trace(tmp_path, calls), expected_uids=[UID]) == [
        f"{UID}: no successful C-STORE-RSP found in the trace"
    ]
    assert check_durability_order(trace(tmp_path, [])) == [
        "no successful C-STORE-RSP found in the trace"
    ]
    # Bytes to a descriptor that was not accepted are not a response.
    calls[-1] = (100, f"write(18, {hexs(RSP)}, {len(RSP)}) = {len(RSP)}")
    assert check_durability_order(trace(tmp_path, calls)) == [
        "no successful C-STORE-RSP found in the trace"
    ]


# -- the receiver under strace ------------------------------------------------------------------


@dataclass
class Traced:
    server: ServerProcess
    trace: Path
    thread_groups: dict[int, int]
    sent: dict[str, str]  # SOP Instance UID -> SHA-256 of the data set bytes sent


def _traced_tasks(pid: int) -> tuple[bool, list[int]]:
    tids = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    for tid in tids:
        try:
            status = Path(f"/proc/{pid}/task/{tid}/status").read_text()
        except FileNotFoundError:
            continue
        if "\nTracerPid:\t0\n" in status:
            return False, tids
    return True, tids


@pytest.fixture
def traced_server(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Traced]:
    strace = shutil.which("strace")
    if strace is None:
        pytest.fail("strace is not installed: apt-get install strace (scripts/test.sh does)")
    fsync = request.param
    server = start_server(
        tmp_path / "srv",
        env={"STORE_SCP_PROCESSES": "1", "STORE_SCP_FSYNC": "true" if fsync else "false"},
    )
    trace_path = tmp_path / "strace.txt"
    tracer: subprocess.Popen[bytes] | None = None
    try:
        pid = server.proc.pid
        tracer = subprocess.Popen(
            strace_command(trace_path, [pid], strace=strace),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 15
        while True:
            attached, tids = _traced_tasks(pid)
            if attached:
                break
            if tracer.poll() is not None:
                err = tracer.stderr.read().decode(errors="replace") if tracer.stderr else ""
                pytest.skip(f"strace cannot attach to a process in this environment: {err}")
            if time.monotonic() > deadline:
                pytest.fail("strace did not attach within 15 s")
            time.sleep(0.01)
        yield Traced(server, trace_path, dict.fromkeys(tids, pid), {})
    finally:
        server.stop()
        if tracer is not None:
            try:
                tracer.wait(timeout=20)
            except subprocess.TimeoutExpired:
                tracer.kill()
                tracer.wait()


def send_objects(traced: Traced, count: int) -> None:
    """`count` objects of 16 KB .. 512 KB over one association; every one must succeed."""
    rng = random.Random(count)
    ae = AE(ae_title="ORDER_TEST")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    ae.add_requested_context(SecondaryCaptureImageStorage, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", traced.server.port, ae_title="STORE_SCP")
    assert assoc.is_established, "association not accepted"
    try:
        for _ in range(count):
            ds = secondary_capture(rng, int(16 * 1024 * 32 ** rng.random()))
            raw = encode(ds, False, True)
            assert raw is not None
            rsp = assoc.send_c_store(ds)
            assert rsp.get("Status") == 0x0000, f"C-STORE answered {rsp}"
            traced.sent[str(ds.SOPInstanceUID)] = hashlib.sha256(raw).hexdigest()
    finally:
        assoc.release()


@pytest.mark.parametrize("traced_server", [True], indirect=True, ids=["fsync"])
def test_every_object_is_durable_before_its_success(traced_server: Traced) -> None:
    send_objects(traced_server, N_OBJECTS)
    traced_server.server.stop()  # flushes the log: strace ends with its tracee
    assert len(traced_server.server.stored_files()) == N_OBJECTS
    analysis = analyze_trace(
        traced_server.trace,
        expected_uids=traced_server.sent,
        thread_groups=traced_server.thread_groups,
    )
    assert analysis.violations == []
    assert analysis.problems == []
    acknowledged = [r for r in analysis.responses if r.stored]
    assert sorted(r.sop_instance_uid for r in acknowledged) == sorted(traced_server.sent)
    assert len(analysis.commits) == N_OBJECTS
    for commit in analysis.commits:
        assert commit.file_flush is not None and commit.dir_flush is not None
        assert commit.file_flush.end < commit.rename.start
        assert commit.rename.end < commit.dir_flush.start
        assert commit.dir_flush.end < commit.response.call.start
    # The bench's entry point agrees.
    assert check_durability_order(traced_server.trace, expected_uids=traced_server.sent) == []


@pytest.mark.parametrize("traced_server", [True], indirect=True, ids=["fsync"])
def test_concurrent_commits_into_one_folder_are_each_durable(
    traced_server: Traced, tmp_path: Path
) -> None:
    """Several associations commit in worker threads into one series folder, where they may
    share folder fsyncs (group commit): each must still be covered by one that started after
    its own rename and ended before its response. Four DCMTK storescu processes send."""
    rng = random.Random(4)
    study, series = generate_uid(), generate_uid()
    folders = []
    for sender in range(4):
        folder = tmp_path / f"sender{sender}"
        folder.mkdir()
        folders.append(folder)
        for n in range(8):
            ds = secondary_capture(rng, int(16 * 1024 * 32 ** rng.random()))
            ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
            raw = encode(ds, False, True)
            assert raw is not None
            traced_server.sent[str(ds.SOPInstanceUID)] = hashlib.sha256(raw).hexdigest()
            ds.save_as(folder / f"{n}.dcm", enforce_file_format=True)
    storescu = [
        str(DCMTK / "storescu"),
        "-aet",
        "ORDER_TEST",
        "-aec",
        "STORE_SCP",
        "+sd",
        "127.0.0.1",
    ]
    senders = [
        subprocess.Popen(
            [*storescu, str(traced_server.server.port), str(folder)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env={**os.environ, "TCP_NODELAY": "1"},
        )
        for folder in folders
    ]
    for proc in senders:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err.decode(errors="replace")
    traced_server.server.stop()
    assert len(traced_server.sent) == 32
    analysis = analyze_trace(
        traced_server.trace,
        expected_uids=traced_server.sent,
        thread_groups=traced_server.thread_groups,
    )
    assert analysis.violations == [] and analysis.problems == []
    assert len(analysis.commits) == 32
    for commit in analysis.commits:
        assert commit.dir_flush is not None
        assert commit.rename.end < commit.dir_flush.start
        assert commit.dir_flush.end < commit.response.call.start


@pytest.mark.parametrize("traced_server", [False], indirect=True, ids=["no-fsync"])
def test_without_fsync_the_analysis_finds_none(traced_server: Traced) -> None:
    send_objects(traced_server, N_OBJECTS)
    traced_server.server.stop()
    analysis = analyze_trace(
        traced_server.trace,
        expected_uids=traced_server.sent,
        thread_groups=traced_server.thread_groups,
    )
    objects_dir = str(traced_server.server.objects_dir)
    # The receiver's responses and renames are all seen ...
    assert len([r for r in analysis.responses if r.stored]) == N_OBJECTS
    assert len([r for r in analysis.renames if r.dst.startswith(objects_dir + "/")]) == N_OBJECTS
    # ... but not one fsync of an object or a folder of objects (the tracker may still sync).
    assert [f for f in analysis.flushes if f.path and f.path.startswith(objects_dir)] == []
    for uid in traced_server.sent:
        mine = [v for v in analysis.violations if v.startswith(f"{uid} ")]
        assert any("no fsync of the staging file" in v for v in mine), mine
        assert any("no fsync of the destination folder" in v for v in mine), mine
