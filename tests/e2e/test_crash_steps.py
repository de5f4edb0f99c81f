"""kill -9 at each named step from C-STORE to image set, then a restart without the fail point.

Each case arms one fail point (`store_scp.failpoints`), checks that the process died of SIGKILL
at exactly that point, restarts it unarmed and waits until the work settles. Then: every object
whose C-STORE success reached the sender has a receipt; every committed object has a receipt
in a final state (IMPORTED, or the FAILED the case injected); the datastore holds one import
job per batch prefix, ever; every imported SOP instance is in exactly one image set, once.

The datastore runs in its own process (as HealthImaging would) and is never killed: its jobs
keep running while the worker is down. Receiver steps are killed in `store-scp serve` with the
pipeline on; worker steps in `store-scp worker` over data that a receive-only server left
behind: one batch sealed at its shutdown, one orphaned by a kill -9 in the middle of an
association (some of its objects committed without a tracker row).
"""

from __future__ import annotations

import gzip
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
#: Worker fail points, each with the datastore fault that leads there; `worker.job_failed` on
#: both of its ways: the job ended FAILED, or its start was refused for good.
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
]
SETTLE_SECONDS = 60


def test_every_fail_point_has_a_case() -> None:
    assert set(RECEIVER_POINTS) | {p for p, _ in WORKER_CASES} == set(failpoints.POINTS)


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


def wait_settled(data_dir: Path, keys: set[str], *, log: Path) -> dict[str, ReceiptStatus]:
    """Until every receipt is final, each of `keys` (the objects committed before the kill)
    has one, and every job has its results; the receipts of `keys`."""
    tracker = SqliteTracker(data_dir / "tracker.sqlite3")
    try:
        deadline = time.monotonic() + SETTLE_SECONDS
        while True:
            counts = tracker.counts_by_state()
            statuses = {k: tracker.receipt_status(k) for k in keys}
            jobs = tracker.jobs()
            if (
                counts[State.RECEIVED] == counts[State.IMPORTING] == 0
                and all(statuses.values())
                and all(job.results_at is not None for job in jobs)
            ):
                return {k: s for k, s in statuses.items() if s is not None}
            if time.monotonic() > deadline:
                states = {k: s.state if s else None for k, s in statuses.items()}
                raise AssertionError(
                    f"not settled in {SETTLE_SECONDS} s: {counts} {states} "
                    f"{[(j.batch_id, j.status, j.results_at) for j in jobs]}\n"
                    + log.read_text(errors="replace")[-3000:]
                )
            time.sleep(0.2)
    finally:
        tracker.close()


def check_outcome(url: str, statuses: dict[str, ReceiptStatus], acked: set[str]) -> None:
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
    job_batches = {s.job_batch_id for s in statuses.values() if s.job_id}
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
    check_outcome(datastore, statuses, acked)


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
    env = {**os.environ, **pipeline_env(datastore), "STORE_SCP_DATA_DIR": str(data_dir)}
    cmd = [sys.executable, "-m", "store_scp.cli", "worker"]
    log_path = tmp_path / "worker.log"
    with log_path.open("ab") as log:
        armed = subprocess.Popen(cmd, env={**env, failpoints.ENV: point}, stderr=log)
        try:
            armed.wait(30)
        finally:
            armed.kill()
        assert_killed_at(point, armed.returncode, log_path.read_text(errors="replace"))

        worker = subprocess.Popen(cmd, env=env, stderr=log)
        try:
            statuses = wait_settled(data_dir, received.committed, log=log_path)
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
    check_outcome(datastore, statuses, received.acked)
