"""kill -9 at each named step from C-STORE to image set, cleanup and retry, then a restart
without the fail point.

Each case arms one fail point (`store_scp.failpoints`), checks that the process died of SIGKILL
at exactly that point, restarts it unarmed and waits until the work settles. Then: every object
whose C-STORE success reached the sender has a receipt; every committed object has a receipt
in a final state (IMPORTED, or the FAILED the case injected); the datastore holds one import
job per batch prefix, ever; every imported SOP instance is in exactly one image set, once.
Every object is at its key (IMPORTED, kept), or in quarantine with its note (FAILED), or gone
only when IMPORTED and its deletion recorded; each outcome's cleanup is done once; nothing
else is left in the object store (no retry copy outlives its receipt's cleanup).

The datastore runs in its own process (as HealthImaging would) and is never killed: its jobs
keep running while the worker is down. Receiver steps are killed in `store-scp serve` with the
pipeline on; worker steps in `store-scp worker` over data that a receive-only server left
behind: one batch sealed at its shutdown, one orphaned by a kill -9 in the middle of an
association (some of its objects committed without a tracker row). Cleanup steps are killed
in the worker too; retry steps in `store-scp retry` (re-run after the kill, or finished by the
worker) and in the worker that makes a killed retry's missing copies.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import generate_uid

from store_scp import failpoints
from store_scp.tracking.base import ReceiptStatus, State
from store_scp.tracking.sqlite import SqliteTracker
from tests.e2e.test_pipeline_embedded import make_series
from tests.e2e.test_worker_crash import DATASTORE_ID, hook, start_datastore
from tests.healthimaging_client import local_client
from tests.serverproc import DCMTK, start_server

#: Receiver fail points and the hit that fires (the 3rd object of a 4-object association).
RECEIVER_POINTS = {"receive.committed": 3, "receive.answered": 3, "receive.sealed": 1}
#: Worker fail points, each with the datastore fault (or setting) that leads there;
#: `worker.job_failed` on both of its ways: the job ended FAILED, or its start was refused for
#: good. Deletion of imported objects with them kept 0 days; quarantine after a FAILED job.
WORKER_CASES = [
    ("worker.orphan_sealed", None),
    ("worker.admitted", None),
    ("worker.job_recorded", None),
    ("worker.job_started", None),
    ("worker.job_ended", None),
    ("worker.outputs_read", None),
    ("worker.results_partial", "file_fails"),
    ("worker.job_failed", "job_fails"),
    ("worker.job_failed", "start_refused"),
    ("cleanup.deleted", "keep_0_days"),
    ("cleanup.note_written", "job_fails"),
    ("cleanup.moved", "job_fails"),
]
#: Retry fail points and who is killed there: `store-scp retry` (then run again), or the worker
#: that makes the copies a retry killed at `retry.admitted` left undone. The count of hits.
RETRY_CASES = [
    ("retry.opened", "retry", 1),
    ("retry.admitted", "retry", 1),
    ("retry.copied", "retry", 2),
    ("retry.sealed", "retry", 1),
    ("retry.copied", "worker", 2),
]
SETTLE_SECONDS = 60
#: How long a killed worker's claim on a cleanup holds (120 s by default).
CLEANUP_LEASE_SECONDS = 1


def test_every_fail_point_has_a_case() -> None:
    cases = {*RECEIVER_POINTS, *(p for p, _ in WORKER_CASES), *(p for p, _, _ in RETRY_CASES)}
    assert cases == set(failpoints.POINTS)


# --- helpers -----------------------------------------------------------------------------------


def pipeline_env(url: str) -> dict[str, str]:
    """The pipeline on the separate datastore; short quiet period and lease to keep it fast."""
    return {
        "STORE_SCP_DATASTORE": "healthimaging",
        "STORE_SCP_HEALTHIMAGING_DATASTORE_ID": DATASTORE_ID,
        "STORE_SCP_HEALTHIMAGING_ENDPOINT_URL": url,
        "STORE_SCP_HEALTHIMAGING_REGION": "us-east-1",
        "STORE_SCP_IMPORT_ROLE_ARN": "arn:aws:iam::000000000000:role/ImportRole",
        "STORE_SCP_IMPORT_START_RATE": "20",
        "STORE_SCP_SEAL_QUIET_SECONDS": "1",
        "STORE_SCP_BATCH_LEASE_SECONDS": "3",
        "STORE_SCP_CLEANUP_LEASE_SECONDS": str(CLEANUP_LEASE_SECONDS),
        "AWS_ACCESS_KEY_ID": "x",
        "AWS_SECRET_ACCESS_KEY": "x",
    }


def sop_uid(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)


def storescu(port: int, files: list[Path]) -> set[str]:
    """Send `files` in one association; the SOP Instance UIDs whose success reached us."""
    out = subprocess.run(
        [str(DCMTK / "storescu"), "-v", "-aec", "STORE_SCP", "127.0.0.1", str(port)]
        + [str(f) for f in files],
        capture_output=True,
        text=True,
        timeout=60,
    )
    acked: set[str] = set()
    current = None
    for line in (out.stdout + out.stderr).splitlines():
        if line.startswith("I: Sending file: "):
            current = Path(line.removeprefix("I: Sending file: "))
        elif line.startswith("I: Received Store Response (Success)"):
            assert current is not None
            acked.add(sop_uid(current))
    return acked


def assert_killed_at(point: str, returncode: int | None, log: str) -> None:
    """Died of SIGKILL, sent by the fail point itself (not by a crash elsewhere)."""
    assert returncode == -9, f"exit {returncode}, not kill -9 at {point}:\n{log[-3000:]}"
    assert f"failpoint {point}: kill -9" in log, log[-3000:]


def stored_keys(data_dir: Path) -> set[str]:
    objects = data_dir / "objects"
    return {
        p.relative_to(objects).as_posix()
        for p in objects.rglob("*.dcm")
        if ".staging" not in p.parts
    }


def wait_settled(
    data_dir: Path, keys: set[str], *, log: Path, deleting: bool = False
) -> dict[str, ReceiptStatus]:
    """Until every receipt is final, each of `keys` (the objects committed before the kill)
    has one, every job has its results and every cleanup that is due is recorded (FAILED
    receipts, and IMPORTED ones when `deleting`: kept 0 days); the receipts of `keys`."""
    tracker = SqliteTracker(data_dir / "tracker.sqlite3")
    try:
        deadline = time.monotonic() + SETTLE_SECONDS
        while True:
            counts = tracker.counts_by_state()
            statuses = {k: tracker.receipt_status(k) for k in keys}
            jobs = tracker.jobs()
            # Claimed or not: a claim of a killed worker is due once its lease lapses.
            due = tracker.cleanup_due(
                keep_imported_seconds=0 if deleting else None, now=time.time() + 3600, limit=1
            )
            if (
                counts[State.RECEIVED] == counts[State.IMPORTING] == 0
                and all(statuses.values())
                and all(job.results_at is not None for job in jobs)
                and not due
            ):
                return {k: s for k, s in statuses.items() if s is not None}
            if time.monotonic() > deadline:
                states = {k: s.state if s else None for k, s in statuses.items()}
                raise AssertionError(
                    f"not settled in {SETTLE_SECONDS} s: {counts} {states} due {due} "
                    f"{[(j.batch_id, j.status, j.results_at) for j in jobs]}\n"
                    + log.read_text(errors="replace")[-3000:]
                )
            time.sleep(0.2)
    finally:
        tracker.close()


def check_outcome(
    url: str, data_dir: Path, statuses: dict[str, ReceiptStatus], acked: set[str]
) -> None:
    """Nothing lost, one job per batch prefix, each imported instance once in an image set."""
    received = {s.sop_instance_uid for s in statuses.values()}
    assert acked <= received, f"acknowledged but without a receipt: {acked - received}"

    client = local_client(url)
    summaries = client.list_dicom_import_jobs(datastoreId=DATASTORE_ID)["jobSummaries"]
    inputs = Counter(
        client.get_dicom_import_job(datastoreId=DATASTORE_ID, jobId=j["jobId"])["jobProperties"][
            "inputS3Uri"
        ]
        for j in summaries
    )
    assert all(n == 1 for n in inputs.values()), f"a prefix was imported twice: {inputs}"
    tracker = SqliteTracker(data_dir / "tracker.sqlite3")
    try:
        job_batches = {j.batch_id for j in tracker.jobs() if j.job_id}
    finally:
        tracker.close()
    assert {uri.rstrip("/").rsplit("/", 1)[1] for uri in inputs} == job_batches

    in_image_sets: Counter[str] = Counter()
    for page in client.get_paginator("search_image_sets").paginate(datastoreId=DATASTORE_ID):
        for summary in page["imageSetsMetadataSummaries"]:
            blob = client.get_image_set_metadata(
                datastoreId=DATASTORE_ID, imageSetId=summary["imageSetId"]
            )["imageSetMetadataBlob"].read()
            for series in json.loads(gzip.decompress(blob))["Study"]["Series"].values():
                in_image_sets.update(list(series["Instances"]))
    imported = {s.sop_instance_uid for s in statuses.values() if s.state is State.IMPORTED}
    assert set(in_image_sets) == imported
    assert all(n == 1 for n in in_image_sets.values()), in_image_sets


def same_object(path: Path, status: ReceiptStatus) -> bool:
    """`path` holds the receipt's bytes: its size, and the SHA-256 of the dataset after the
    file meta (what the receipt's digest covers)."""
    data = path.read_bytes()
    meta = pydicom.filereader.read_file_meta_info(path)
    # Preamble, "DICM", the group length element (12 bytes), then the rest of the meta.
    offset = 128 + 4 + 12 + int(meta.FileMetaInformationGroupLength)
    return (len(data), hashlib.sha256(data[offset:]).hexdigest()) == (status.size, status.sha256)


def check_objects(data_dir: Path, statuses: dict[str, ReceiptStatus], *, deleting: bool) -> None:
    """Each object at its key (IMPORTED, kept), in quarantine with its note (FAILED), or
    deleted (IMPORTED, kept 0 days) with the deletion recorded; nothing else in the store
    (job outputs aside): no retry copy, no stray quarantine."""
    objects = data_dir / "objects"
    expected: set[str] = set()
    for key, s in statuses.items():
        if s.state is State.IMPORTED and deleting:
            assert s.cleanup_action == "deleted", (key, s.cleanup_action)
        elif s.state is State.IMPORTED:
            assert s.cleanup_action is None, (key, s.cleanup_action)
            assert same_object(objects / key, s), key
            expected.add(key)
        else:
            assert s.state is State.FAILED, (key, s.state)
            assert s.cleanup_action == f"quarantined:quarantine/{key}", (key, s.cleanup_action)
            assert same_object(objects / "quarantine" / key, s), key
            note = json.loads((objects / "quarantine" / f"{key}.json").read_text())
            assert (note["receipt_key"], note["reason"], note["attempt"]) == (
                key,
                s.reason,
                s.attempt,
            )
            expected |= {f"quarantine/{key}", f"quarantine/{key}.json"}
    stored = {
        p.relative_to(objects).as_posix()
        for p in objects.rglob("*")
        if p.is_file()
        and ".staging" not in p.parts
        and p.relative_to(objects).parts[0] != "import-output"
    }
    assert stored == expected, {"missing": expected - stored, "left": stored - expected}


def check_cleaned_up_once(data_dir: Path, statuses: dict[str, ReceiptStatus], log: Path) -> None:
    """Every outcome of every attempt that was cleaned up has its cleanup recorded, and the
    log says it was done once (a killed worker never logs the cleanup it did not record)."""
    done: Counter[tuple[str, str]] = Counter()
    for line in log.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            event = json.loads(line)
            if event.get("msg") == "object cleaned up":
                done[event["key"], event["action"]] += 1
    tracker = SqliteTracker(data_dir / "tracker.sqlite3")
    try:
        recorded = Counter(
            (a.key, a.cleanup_action)
            for key in statuses
            for a in tracker.attempts(key)
            if a.cleanup_action is not None
        )
    finally:
        tracker.close()
    assert done == recorded
    for key, s in statuses.items():
        if s.cleanup_action is not None:
            assert recorded[key, s.cleanup_action] == 1


@pytest.fixture
def datastore(tmp_path: Path) -> Iterator[str]:
    """A datastore in its own process, never killed; its API URL."""
    proc, url = start_datastore(tmp_path / "datastore")
    try:
        yield url
    finally:
        proc.terminate()
        proc.wait(30)


# --- receiver steps: `store-scp serve` with the pipeline on --------------------------------------


@pytest.mark.parametrize("point", list(RECEIVER_POINTS))
def test_serve_killed_at_a_receiver_step(point: str, datastore: str, tmp_path: Path) -> None:
    env = {"STORE_SCP_PIPELINE": "embedded", **pipeline_env(datastore)}
    armed = {failpoints.ENV: f"{point}:{RECEIVER_POINTS[point]}"}
    srv = start_server(tmp_path / "srv", env={**env, **armed})
    files = make_series(tmp_path / "s", generate_uid(), "P-SERVE", 4)
    acked = storescu(srv.port, files)
    try:
        srv.proc.wait(30)
    finally:
        srv.stop()
    assert_killed_at(point, srv.proc.returncode, srv.log())
    committed = stored_keys(srv.data_dir)
    if point == "receive.committed":  # the 3rd object is durable, never acknowledged
        assert (len(acked), len(committed)) == (2, 3)
    elif point == "receive.answered":  # its success is on the wire, maybe not yet read
        assert len(acked) >= 2 and len(committed) == 3
    else:
        assert (len(acked), len(committed)) == (4, 4)

    srv = start_server(tmp_path / "srv", env=env)
    try:
        statuses = wait_settled(srv.data_dir, committed, log=srv.log_path)
    finally:
        assert srv.stop() == 0
    assert {s.state for s in statuses.values()} == {State.IMPORTED}
    check_outcome(datastore, srv.data_dir, statuses, acked)
    check_objects(srv.data_dir, statuses, deleting=False)


# --- worker steps: `store-scp worker` on what a receive-only server left -------------------------


@dataclass(frozen=True)
class Received:
    data_dir: Path  # a template: each case works on its own copy
    committed: set[str]  # object keys
    acked: set[str]  # SOP Instance UIDs
    first_file_sop: str  # of the batch sealed at shutdown


@pytest.fixture(scope="module")
def received(tmp_path_factory: pytest.TempPathFactory) -> Received:
    root = tmp_path_factory.mktemp("received")
    env = {"STORE_SCP_PIPELINE": "off", "STORE_SCP_BATCH_LEASE_SECONDS": "3"}
    srv = start_server(root / "data", env=env)
    sealed = make_series(root / "a", generate_uid(), "P-A", 3)
    acked = storescu(srv.port, sealed)
    assert srv.stop() == 0  # its batch is sealed at shutdown

    armed = {failpoints.ENV: "receive.answered:3"}
    srv = start_server(root / "data", env={**env, **armed})
    acked |= storescu(srv.port, make_series(root / "b", generate_uid(), "P-B", 3))
    srv.proc.wait(30)
    assert_killed_at("receive.answered", srv.proc.returncode, srv.log())
    committed = stored_keys(root / "data")
    assert len(acked) >= 5 and len(committed) == 6
    return Received(root / "data", committed, acked, sop_uid(sealed[0]))


WORKER = [sys.executable, "-m", "store_scp.cli", "worker"]


def worker_env(url: str, data_dir: Path, *, deleting: bool) -> dict[str, str]:
    env = {**os.environ, **pipeline_env(url), "STORE_SCP_DATA_DIR": str(data_dir)}
    if deleting:
        env["STORE_SCP_KEEP_IMPORTED_DAYS"] = "0"
    return env


@pytest.mark.parametrize(
    ("point", "fault"), [pytest.param(p, f, id=f"{p}-{f}" if f else p) for p, f in WORKER_CASES]
)
def test_worker_killed_at_a_pipeline_step(
    point: str, fault: str | None, received: Received, datastore: str, tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    shutil.copytree(received.data_dir, data_dir)
    if fault == "file_fails":
        hook(datastore, "fail_files", pattern=f"*{received.first_file_sop}.dcm")
    elif fault == "job_fails":
        hook(datastore, "fail_next_jobs", count=1)
    elif fault == "start_refused":
        hook(
            datastore,
            "inject_errors",
            operation="StartDICOMImportJob",
            code="AccessDeniedException",
        )
    deleting = fault == "keep_0_days"
    env = worker_env(datastore, data_dir, deleting=deleting)
    log_path = tmp_path / "worker.log"
    with log_path.open("ab") as log:
        armed = subprocess.Popen(WORKER, env={**env, failpoints.ENV: point}, stderr=log)
        try:
            armed.wait(30)
        finally:
            armed.kill()
        assert_killed_at(point, armed.returncode, log_path.read_text(errors="replace"))
        if point.startswith("cleanup."):
            # Its claim lapses while no worker runs: else the restarted worker's first cleanup
            # pass may come just before, and the next one only after the pass interval.
            time.sleep(CLEANUP_LEASE_SECONDS)

        worker = subprocess.Popen(WORKER, env=env, stderr=log)
        try:
            statuses = wait_settled(data_dir, received.committed, log=log_path, deleting=deleting)
        finally:
            worker.terminate()
            assert worker.wait(30) == 0

    failed = {k: s for k, s in statuses.items() if s.state is State.FAILED}
    if fault == "file_fails":
        [status] = failed.values()
        assert status.sop_instance_uid == received.first_file_sop
        assert status.reason and "Injected failure" in status.reason
    elif fault in ("job_fails", "start_refused"):
        # The first batch to start failed whole; the other one was imported.
        why = "Injected job failure" if fault == "job_fails" else "could not start"
        [batch_id] = {s.batch_id for s in failed.values()}
        assert {s.batch_id for s in statuses.values() if s.state is State.IMPORTED} == (
            {s.batch_id for s in statuses.values()} - {batch_id}
        )
        assert all(why in (s.reason or "") for s in failed.values()), failed
    else:
        assert not failed, {k: s.reason for k, s in failed.items()}
    check_outcome(datastore, data_dir, statuses, received.acked)
    check_objects(data_dir, statuses, deleting=deleting)
    check_cleaned_up_once(data_dir, statuses, log_path)


# --- retry steps: `store-scp retry` of a FAILED job, and the worker that finishes it -------------


def run_retry(env: dict[str, str], target: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "store_scp.cli", "retry", target, "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )


@pytest.mark.parametrize(
    ("point", "killed", "count"),
    [pytest.param(p, k, n, id=f"{p}-{k}") for p, k, n in RETRY_CASES],
)
def test_retry_killed_at_a_step(
    point: str, killed: str, count: int, received: Received, datastore: str, tmp_path: Path
) -> None:
    """A job fails, its objects are quarantined; `store-scp retry JOB` (or the worker doing its
    part) is killed at the step; the retry is run again and the worker finishes: the job's
    receipts end IMPORTED with both attempts in their history, their copies all deleted."""
    data_dir = tmp_path / "data"
    shutil.copytree(received.data_dir, data_dir)
    hook(datastore, "fail_next_jobs", count=1)
    env = worker_env(datastore, data_dir, deleting=True)
    armed_env = {**env, failpoints.ENV: f"{point}:{count}"}
    log_path = tmp_path / "worker.log"
    with log_path.open("ab") as log:
        worker = subprocess.Popen(WORKER, env=env, stderr=log)
        try:
            before = wait_settled(data_dir, received.committed, log=log_path, deleting=True)
            failed = {k: s for k, s in before.items() if s.state is State.FAILED}
            [job_id] = {s.job_id for s in failed.values()}
            assert job_id and len(failed) == 3

            if killed == "worker":
                worker.terminate()
                assert worker.wait(30) == 0
            out = run_retry(
                armed_env if killed == "retry" else {**env, failpoints.ENV: "retry.admitted"},
                job_id,
            )
            assert_killed_at(
                point if killed == "retry" else "retry.admitted", out.returncode, out.stderr
            )
            if killed == "worker":  # killed making the copies; then restarted
                armed = subprocess.Popen(WORKER, env=armed_env, stderr=log)
                try:
                    armed.wait(30)
                finally:
                    armed.kill()
                assert_killed_at(point, armed.returncode, log_path.read_text(errors="replace"))
                worker = subprocess.Popen(WORKER, env=env, stderr=log)

            # Run again by the operator: a retry killed before any admission retries now;
            # else every receipt is refused, retried already.
            out = run_retry(env, job_id)
            code, again = out.returncode, json.loads(out.stdout)
            if point == "retry.opened":
                assert code == 0 and len(again["retried"]) == 3, again
            else:
                assert code == 1 and again["retried"] == [], again
                assert len(again["refused"]) == 3
                assert all(
                    r["why"].startswith("retried since, in retry-") for r in again["refused"]
                )

            statuses = wait_settled(data_dir, received.committed, log=log_path, deleting=True)
        finally:
            worker.terminate()
            assert worker.wait(30) == 0

    assert {s.state for s in statuses.values()} == {State.IMPORTED}
    tracker = SqliteTracker(data_dir / "tracker.sqlite3")
    try:
        for key in failed:
            first, second = tracker.attempts(key)
            assert (first.outcome, first.job_id) == (State.FAILED, job_id)
            assert first.cleanup_action == f"quarantined:quarantine/{key}"
            assert second.outcome is State.IMPORTED and second.batch_id
            assert second.batch_id.startswith("retry-") and second.job_id != job_id
            assert second.cleanup_action == "deleted"
    finally:
        tracker.close()
    check_outcome(datastore, data_dir, statuses, received.acked)
    check_objects(data_dir, statuses, deleting=True)
    check_cleaned_up_once(data_dir, statuses, log_path)
