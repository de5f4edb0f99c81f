"""kill -9 of `store-scp worker` at random moments while it starts and follows import jobs and
cleans up after them; the datastore runs in its own process (as HealthImaging would) and is not
killed. After each restart the pipeline resumes: every receipt reaches a final state, no batch
is imported twice, every imported object is deleted (kept 0 days) and its deletion recorded."""

from __future__ import annotations

import json
import random
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from pydicom.uid import generate_uid

from store_scp.pipeline.cleanup import CleanupPolicy
from tests.e2e.test_pipeline_embedded import make_series, where
from tests.healthimaging_client import local_client
from tests.serverproc import start_server, storescu

DATASTORE_ID = "5c9d1ca15707e0000000000000000001"
#: A killed worker's claim on a cleanup holds this long (120 s by default).
CLEANUP_LEASE_SECONDS = 2


def start_datastore(root: Path) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "store_scp.datastore.api", "--root", str(root), "--test-hooks"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    match = re.search(r"http://[\d.]+:\d+", line)
    assert match, line
    return proc, match.group(0)


def hook(url: str, name: str, **args: object) -> None:
    body = json.dumps({"hook": name, "args": args}).encode()
    request = urllib.request.Request(
        url + "/_store-scp/test-hooks", body, {"Content-Type": "application/json"}
    )
    urllib.request.urlopen(request, timeout=10).read()


def test_worker_killed_at_random_moments_resumes_without_double_imports(tmp_path: Path) -> None:
    rng = random.Random()
    print("seed", rng.seed)
    datastore, url = start_datastore(tmp_path / "datastore")
    try:
        # Three batches, received by a receive-only server, sealed at its shutdown.
        srv = start_server(tmp_path / "srv", env={"STORE_SCP_PIPELINE": "off"})
        studies = []
        for i in range(3):
            study = generate_uid()
            studies.append(study)
            files = make_series(tmp_path / f"s{i}", study, f"P{i}", 3)
            storescu(srv.port, files)
            # A restart of the receiver in between: each study in its own batch.
            assert srv.stop() == 0
            srv = start_server(tmp_path / "srv", env={"STORE_SCP_PIPELINE": "off"})
        assert srv.stop() == 0

        hook(url, "stall_next_jobs", seconds=2.5, count=3)
        env = dict(
            srv.env,
            STORE_SCP_DATASTORE="healthimaging",
            STORE_SCP_HEALTHIMAGING_DATASTORE_ID=DATASTORE_ID,
            STORE_SCP_HEALTHIMAGING_ENDPOINT_URL=url,
            STORE_SCP_HEALTHIMAGING_REGION="us-east-1",
            STORE_SCP_IMPORT_START_RATE="20",
            STORE_SCP_IMPORT_ROLE_ARN="arn:aws:iam::000000000000:role/ImportRole",
            AWS_ACCESS_KEY_ID="x",
            AWS_SECRET_ACCESS_KEY="x",
            STORE_SCP_KEEP_IMPORTED_DAYS="0",
            STORE_SCP_CLEANUP_LEASE_SECONDS=str(CLEANUP_LEASE_SECONDS),
        )
        cmd = [sys.executable, "-m", "store_scp.cli", "worker"]
        log = (tmp_path / "worker.log").open("ab")
        kills = 0
        # A worker killed in the middle of a cleanup leaves its claim: the next one waits for
        # the claim's lease to run out (then up to a cleanup pass interval) before it finishes
        # that cleanup.
        deadline = time.monotonic() + 90 + CLEANUP_LEASE_SECONDS + CleanupPolicy().interval_seconds
        while True:
            items = [i for s in studies for i in where(srv, s)]
            states = [i["state"] for i in items]
            final = all(i["state"] in ("IMPORTED", "FAILED") for i in items)
            if states and final and all(i["cleanup_action"] for i in items):
                break
            assert time.monotonic() < deadline, states
            worker = subprocess.Popen(cmd, env=env, stderr=log)
            if kills < 4:
                time.sleep(rng.uniform(0.3, 2.0))
                worker.send_signal(signal.SIGKILL)
                worker.wait()
                kills += 1
            else:
                time.sleep(2)
                worker.terminate()
                assert worker.wait(30) == 0
        assert kills >= 2, "the work ended before the worker was killed twice"
        assert states == ["IMPORTED"] * 9
        assert [i["cleanup_action"] for i in items] == ["deleted"] * 9
        assert srv.stored_files() == []  # the imported objects, deleted

        client = local_client(url)
        jobs = client.list_dicom_import_jobs(datastoreId=DATASTORE_ID)["jobSummaries"]
        batches = {i["key"].split("/")[0] for s in studies for i in where(srv, s)}
        assert len(batches) == 3
        assert len(jobs) == 3, "a batch was imported twice"  # one job per batch, ever
    finally:
        datastore.terminate()
        datastore.wait(30)
