"""Crash test: kill -9 the receiver while several associations send; nothing acknowledged is lost.

Four pynetdicom associations send generated objects of 16 KB .. 2 MB. Every SOP Instance UID
whose C-STORE-RSP with status 0x0000 reached its sender is recorded on the client side. After
the kill, at a random moment:

- every acknowledged object is under objects/, and its data set bytes (after our file meta) are
  the bytes that were sent; every visible `*.dcm` parses fully and is an object that was sent
  (staging `.part` files are not objects);
- restarted on the same data folder, the receiver removes the staging leftovers, its start-up
  reconciler gives every committed object exactly one tracker row (those the crash left without
  one included), and it accepts new objects. The restart follows the kill at once.

The round is repeated at three moments (`CRASH_TEST_SEED` in the environment replays a run);
the slow variant repeats it twenty times.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import sqlite3
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage
from pynetdicom import AE
from pynetdicom.dsutils import encode

from tests.dicomfactory import secondary_capture
from tests.serverproc import ServerProcess, start_server, wait_for

SENDERS = 4
MIN_SIZE = 16 * 1024
MAX_SIZE = 2 * 1024 * 1024
MAX_KILL_DELAY = 1.5  # seconds after every association had its first success
TIMEOUT = 30.0
#: pynetdicom's own timeouts, well inside TIMEOUT: kill9() returns once the server process is
#: gone and the kernel has closed its sockets, yet pynetdicom now and then misses that close
#: (once in some 250 rounds) and waits out a response, then its release; with its timeouts at
#: TIMEOUT that looked like a hung sender.
SENDER_TIMEOUT = 8.0


@dataclass(frozen=True)
class Sent:
    sha256: str  # of the data set bytes put on the wire
    size: int


@dataclass
class Ledger:
    """What the senders know: every object sent, and which ones were acknowledged."""

    sent: dict[str, Sent] = field(default_factory=dict)
    acked: set[str] = field(default_factory=set)
    refused: dict[str, int] = field(default_factory=dict)
    acked_by_sender: dict[int, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def send(self, uid: str, raw: bytes) -> None:
        with self.lock:
            self.sent[uid] = Sent(hashlib.sha256(raw).hexdigest(), len(raw))

    def answer(self, sender: int, uid: str, status: int) -> None:
        with self.lock:
            if status == 0x0000:
                self.acked.add(uid)
                self.acked_by_sender[sender] = self.acked_by_sender.get(sender, 0) + 1
            else:
                self.refused[uid] = status


def random_size(rng: random.Random) -> int:
    """Log-uniform between MIN_SIZE and MAX_SIZE: many small objects, some large ones."""
    return int(MIN_SIZE * (MAX_SIZE / MIN_SIZE) ** rng.random())


def make_ae(calling_ae: str) -> AE:
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = SENDER_TIMEOUT
    ae.add_requested_context(SecondaryCaptureImageStorage, ExplicitVRLittleEndian)
    return ae


def send_until_broken(
    port: int, index: int, seed: int, ledger: Ledger, stop: threading.Event
) -> None:
    """One association sending objects until the server goes away (or `stop`)."""
    rng = random.Random(seed)
    ae = make_ae(f"CRASH{index}")
    assoc = ae.associate("127.0.0.1", port, ae_title="STORE_SCP")
    if not assoc.is_established:
        with ledger.lock:
            ledger.errors.append(f"sender {index}: association not established")
        return
    try:
        while not stop.is_set():
            ds = secondary_capture(rng, random_size(rng))
            raw = encode(ds, False, True)  # what send_c_store puts on the wire
            if raw is None:
                with ledger.lock:
                    ledger.errors.append(f"sender {index}: cannot encode a data set")
                return
            uid = str(ds.SOPInstanceUID)
            ledger.send(uid, raw)
            try:
                rsp = assoc.send_c_store(ds)
            except Exception:  # the association broke under us: expected after the kill
                return
            status = rsp.get("Status")
            if status is None:
                return  # no response: the server is gone
            ledger.answer(index, uid, int(status))
    finally:
        if assoc.is_established:
            assoc.release()
        ae.shutdown()


def send_new_objects(server: ServerProcess, ledger: Ledger, rng: random.Random, count: int) -> None:
    ae = make_ae("AFTERCRASH")
    assoc = ae.associate("127.0.0.1", server.port, ae_title="STORE_SCP")
    assert assoc.is_established, "the restarted server refused an association"
    try:
        for _ in range(count):
            ds = secondary_capture(rng, random_size(rng))
            raw = encode(ds, False, True)
            assert raw is not None
            ledger.send(str(ds.SOPInstanceUID), raw)
            rsp = assoc.send_c_store(ds)
            assert rsp.get("Status") == 0x0000, f"the restarted server answered {rsp}"
            ledger.answer(-1, str(ds.SOPInstanceUID), 0x0000)
    finally:
        assoc.release()
        ae.shutdown()


# -- checks ------------------------------------------------------------------------------------


@dataclass
class Objects:
    """Committed objects, verified once each (a committed object never changes)."""

    by_uid: dict[str, str] = field(default_factory=dict)  # SOP Instance UID -> key
    stat: dict[str, tuple[int, int]] = field(default_factory=dict)  # key -> (size, mtime_ns)


def check_objects(server: ServerProcess, ledger: Ledger, objects: Objects, why: str) -> None:
    """Every visible object is complete and was sent; every acknowledged object is visible."""
    root = server.objects_dir
    problems: list[str] = []
    seen: set[str] = set()
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if rel.parts[0] == ".staging" or path.is_dir():
            continue
        key = rel.as_posix()
        seen.add(key)
        if path.suffix != ".dcm":
            problems.append(f"{key}: a visible file that is not an object")
            continue
        st = path.stat()
        if objects.stat.get(key) == (st.st_size, st.st_mtime_ns):
            continue
        uid = path.stem
        sent = ledger.sent.get(uid)
        if sent is None:
            problems.append(f"{key}: not an object any sender sent")
            continue
        ds = dcmread(path)  # parses every element: a truncated file raises
        if len(ds.PixelData) != ds.Rows * ds.Columns:
            problems.append(f"{key}: pixel data truncated")
        meta = ds.file_meta
        if (
            ds.SOPInstanceUID != uid
            or meta.MediaStorageSOPInstanceUID != uid
            or meta.TransferSyntaxUID != ExplicitVRLittleEndian
        ):
            problems.append(f"{key}: file meta or data set names another object")
        raw = path.read_bytes()
        dataset = raw[132 + 12 + meta.FileMetaInformationGroupLength :]
        if (len(dataset), hashlib.sha256(dataset).hexdigest()) != (sent.size, sent.sha256):
            problems.append(f"{key}: data set bytes differ from what was sent")
        if uid in objects.by_uid and objects.by_uid[uid] != key:
            problems.append(f"{key}: a second object for {uid}")
        objects.by_uid[uid] = key
        objects.stat[key] = (st.st_size, st.st_mtime_ns)
    for key in set(objects.stat) - seen:
        problems.append(f"{key}: a committed object disappeared")
    missing = sorted(ledger.acked - objects.by_uid.keys())
    problems += [f"{uid}: acknowledged but not stored" for uid in missing]
    assert not problems, f"{why}:\n" + "\n".join(problems[:20])


_ROWS = (
    "SELECT key, COUNT(*), MAX(sop_instance_uid), MAX(sha256), MAX(size) FROM receipts GROUP BY key"
)


def tracker_rows(server: ServerProcess) -> dict[str, tuple[int, str, str, int]]:
    """key -> (rows, SOP Instance UID, sha256, size) in the tracker's `receipts` table.

    A running server's database is read through a read-only connection. A killed server's is
    read from a copy of its files, so that the originals reach the restarted server untouched
    (the copy replays the write-ahead log as the restarted server will).
    """
    db = server.data_dir / "tracker.sqlite3"
    if not db.exists():
        return {}
    if server.proc.poll() is None:
        conn = sqlite3.connect(f"{db.as_uri()}?mode=ro", uri=True, timeout=TIMEOUT)
        try:
            rows = conn.execute(_ROWS).fetchall()
        finally:
            conn.close()
    else:
        with tempfile.TemporaryDirectory() as tmp:
            for suffix in ("", "-wal"):
                src = Path(f"{db}{suffix}")
                if src.exists():
                    shutil.copyfile(src, Path(tmp) / f"tracker.sqlite3{suffix}")
            conn = sqlite3.connect(Path(tmp) / "tracker.sqlite3")
            try:
                rows = conn.execute(_ROWS).fetchall()
            finally:
                conn.close()
    return {key: (n, uid, digest, size) for key, n, uid, digest, size in rows}


def reconcile_summaries(server: ServerProcess) -> list[dict[str, object]]:
    out = []
    for line in server.log().splitlines():
        if '"reconcile: ' not in line:
            continue
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if str(record.get("msg", "")).startswith("reconcile: "):
            out.append(record)
    return out


def check_tracker(server: ServerProcess, ledger: Ledger, objects: Objects, why: str) -> None:
    rows = tracker_rows(server)
    committed = set(objects.stat)
    problems = [f"{key}: committed, no tracker row" for key in sorted(committed - rows.keys())]
    problems += [f"{key}: a tracker row, no object" for key in sorted(rows.keys() - committed)]
    for key, (n, uid, digest, size) in rows.items():
        if n != 1:
            problems.append(f"{key}: {n} tracker rows")
        sent = ledger.sent.get(uid)
        if key in committed and (sent is None or digest != sent.sha256):
            problems.append(f"{key}: tracker row does not describe the object sent")
        elif key in committed and size != objects.stat[key][0]:
            problems.append(f"{key}: tracker row has size {size}, object {objects.stat[key][0]}")
    assert not problems, f"{why}:\n" + "\n".join(problems[:20])


# -- the scenario ------------------------------------------------------------------------------


@dataclass
class Round:
    delay: float
    senders_active: int
    acked: int
    in_flight: int
    committed_unacked: int
    rowless: int
    leftovers: int


def kill_while_sending(
    server: ServerProcess, ledger: Ledger, rng: random.Random
) -> tuple[float, int]:
    """SENDERS associations send until kill -9 hits the server, a random time after each had
    its first success. Returns (that time, associations sending at the kill, monotonic time of
    the kill)."""
    stop = threading.Event()
    threads = [
        threading.Thread(
            target=send_until_broken,
            args=(server.port, i, rng.randrange(2**32), ledger, stop),
            name=f"crash-sender-{i}",
            daemon=True,
        )
        for i in range(SENDERS)
    ]
    ledger.acked_by_sender.clear()
    for t in threads:
        t.start()
    try:
        wait_for(
            lambda: len(ledger.acked_by_sender) == SENDERS or ledger.errors,
            "every association's first success",
            TIMEOUT,
        )
        assert not ledger.errors, ledger.errors
        delay = rng.uniform(0.0, MAX_KILL_DELAY)
        time.sleep(delay)
        active = sum(t.is_alive() for t in threads)
        server.kill9()
    finally:
        stop.set()
        for t in threads:
            t.join(TIMEOUT)
    assert not any(t.is_alive() for t in threads), "a sender hung after the kill"
    assert active == SENDERS, f"only {active} associations were still sending at the kill"
    assert not ledger.errors, ledger.errors
    assert not ledger.refused, f"the server refused objects: {ledger.refused}"
    return delay, active


def crash_round(
    servers: list[ServerProcess], ledger: Ledger, objects: Objects, rng: random.Random, n: int
) -> Round:
    """Senders, kill -9 at a random moment, checks, restart, checks. The last server of
    `servers` is the running one; the restarted one is appended."""
    server = servers[-1]
    acked_before = len(ledger.acked)
    sent_before = set(ledger.sent)
    delay, active = kill_while_sending(server, ledger, rng)

    why = f"round {n}, after kill -9 at +{delay:.3f} s"
    check_objects(server, ledger, objects, why)
    new = set(ledger.sent) - sent_before
    answered = ledger.acked | ledger.refused.keys()
    committed_unacked = sum(1 for uid in new if uid in objects.by_uid and uid not in answered)
    rows_before = tracker_rows(server)
    rowless = len(set(objects.stat) - rows_before.keys())
    leftovers = [p for p in server.staging_files() if p.name.endswith(".part")]

    # Restart on the same data folder at once, as a supervisor would.
    summaries = len(reconcile_summaries(server))
    server = start_server(server.data_dir)
    servers.append(server)
    why = f"round {n}, after the restart"
    remaining = [p.name for p in leftovers if p.exists()]
    assert not remaining, f"{why}: staging leftovers not removed: {remaining}"
    wait_for(
        lambda: len(reconcile_summaries(server)) > summaries, "the reconciler's summary", TIMEOUT
    )
    summary = reconcile_summaries(server)[-1]
    assert summary.get("read_errors") == 0 and summary.get("incomplete_headers") == 0, summary
    assert summary.get("registered") == rowless, (
        f"{why}: {rowless} committed objects had no row, the reconciler registered {summary}"
    )
    check_tracker(server, ledger, objects, why)

    # It accepts new objects, stores them and tracks them.
    send_new_objects(server, ledger, rng, 3)
    check_objects(server, ledger, objects, f"{why}, new objects")
    wait_for(
        lambda: set(objects.stat) <= tracker_rows(server).keys(),
        "tracker rows of the new objects",
        TIMEOUT,
    )
    check_tracker(server, ledger, objects, f"{why}, new objects")
    return Round(
        delay=delay,
        senders_active=active,
        acked=len(ledger.acked) - acked_before - 3,
        in_flight=len(new) - len(answered & new),
        committed_unacked=committed_unacked,
        rowless=rowless,
        leftovers=len(leftovers),
    )


def run_crash_rounds(tmp_path: Path, rounds: int) -> list[Round]:
    seed = int(os.environ.get("CRASH_TEST_SEED") or random.randrange(2**32))
    rng = random.Random(seed)
    ledger, objects = Ledger(), Objects()
    data_dir = tmp_path / "srv"
    servers = [start_server(data_dir)]
    results: list[Round] = []
    try:
        for n in range(1, rounds + 1):
            try:
                results.append(crash_round(servers, ledger, objects, rng, n))
            except AssertionError as exc:
                raise AssertionError(f"CRASH_TEST_SEED={seed}: {exc}") from None
        assert sum(r.acked for r in results) > 0
        server = servers[-1]
        server.stop()
        assert server.proc.returncode == 0, server.log()[-2000:]
        check_tracker(server, ledger, objects, "after a clean stop")
    finally:
        for server in servers:
            server.kill9()
    print(f"CRASH_TEST_SEED={seed}")
    for r in results:
        print(r)
    shutil.rmtree(data_dir, ignore_errors=True)  # kept only when the test failed
    return results


@pytest.fixture(autouse=True)
def _quiet_pynetdicom() -> Iterator[None]:
    """pynetdicom logs every aborted association at ERROR: expected here."""
    import logging

    logger = logging.getLogger("pynetdicom")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    yield
    logger.setLevel(level)


def test_kill9_at_three_moments_loses_nothing_acknowledged(tmp_path: Path) -> None:
    results = run_crash_rounds(tmp_path, 3)
    assert len({r.delay for r in results}) == 3  # three different moments


def test_immediate_restart_removes_the_staging_leftovers(tmp_path: Path) -> None:
    """A supervisor restarts a crashed receiver at once: its staging files must go too."""
    rng = random.Random()
    ledger = Ledger()
    servers = [start_server(tmp_path / "srv")]
    try:
        kill_while_sending(servers[0], ledger, rng)
        leftovers = [p for p in servers[0].staging_files() if p.name.endswith(".part")]
        if not leftovers:
            pytest.skip("the kill left no staging file this time")
        servers.append(start_server(servers[0].data_dir))
        kept = [p.name for p in leftovers if p.exists()]
        assert not kept, f"staging leftovers kept by the restarted server: {kept}"
    finally:
        for server in servers:
            server.kill9()


@pytest.mark.slow
def test_kill9_twenty_times(tmp_path: Path) -> None:
    run_crash_rounds(tmp_path, 20)
