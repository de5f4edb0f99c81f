"""End to end through `store-scp serve` with the embedded pipeline, driving a datastore that runs
in its own process with fault injection: imported objects deleted (keep 0 days), a FAILED job's
objects quarantined with their notes and still listed by `store-scp failures`, `store-scp retry`
importing them from a retry batch with both attempts in the history, and every refusal."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import generate_uid

from tests.e2e.test_pipeline_embedded import make_series
from tests.e2e.test_worker_crash import DATASTORE_ID, hook, start_datastore
from tests.serverproc import ServerProcess, start_server, storescu

CT = "1.2.840.10008.5.1.4.1.1.2"
RETIRED_JPEG = "1.2.840.10008.1.2.4.53"  # accepted on the wire, refused by HealthImaging


def cli(server: ServerProcess, *args: str) -> tuple[int, Any]:
    out = subprocess.run(
        [sys.executable, "-m", "store_scp.cli", *args, "--json"],
        capture_output=True,
        text=True,
        env=server.env,
        timeout=60,
    )
    return out.returncode, json.loads(out.stdout) if out.stdout.strip() else out.stderr


def instances(server: ServerProcess, uid: str, *extra: str) -> list[dict[str, Any]]:
    return list(cli(server, "where", uid, *extra)[1]["instances"])


def wait_for(what: str, check: Callable[[], bool], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.3)


def cleaned(server: ServerProcess, uid: str, count: int, state: str) -> Callable[[], bool]:
    def check() -> bool:
        items = instances(server, uid)
        return len(items) == count and all(
            i["state"] == state and i["cleanup_action"] for i in items
        )

    return check


def send(server: ServerProcess, files: list[Path]) -> None:
    storescu(server.port, files)


def send_not_importable(server: ServerProcess) -> str:
    from pynetdicom import AE

    ds = Dataset()
    ds.SOPClassUID = CT
    ds.SOPInstanceUID = uid = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "CT"
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = RETIRED_JPEG
    ae = AE(ae_title="SCU")
    ae.add_requested_context(CT, [RETIRED_JPEG])
    assoc = ae.associate("127.0.0.1", server.port, ae_title="STORE_SCP")
    assert assoc.is_established
    assert assoc.send_c_store(ds).Status == 0x0000
    assoc.release()
    return uid


def received_files(server: ServerProcess) -> set[str]:
    """Keys of every stored object outside quarantine, retry copies and job outputs."""
    return {
        p.relative_to(server.objects_dir).as_posix()
        for p in server.stored_files()
        if p.relative_to(server.objects_dir).parts[0] not in ("quarantine", "retry", "job-output")
    }


def test_cleanup_quarantine_and_retry_through_serve(tmp_path: Path) -> None:
    datastore, url = start_datastore(tmp_path / "datastore")
    server = start_server(
        tmp_path / "srv",
        env={
            "STORE_SCP_PIPELINE": "embedded",
            "STORE_SCP_DATASTORE": "healthimaging",
            "STORE_SCP_HEALTHIMAGING_DATASTORE_ID": DATASTORE_ID,
            "STORE_SCP_HEALTHIMAGING_ENDPOINT_URL": url,
            "STORE_SCP_HEALTHIMAGING_REGION": "us-east-1",
            "STORE_SCP_IMPORT_ROLE_ARN": "arn:aws:iam::000000000000:role/ImportRole",
            "AWS_ACCESS_KEY_ID": "x",
            "AWS_SECRET_ACCESS_KEY": "x",
            "STORE_SCP_SEAL_QUIET_SECONDS": "1",
            "STORE_SCP_IMPORT_START_RATE": "20",
            "STORE_SCP_KEEP_IMPORTED_DAYS": "0",
        },
    )
    try:
        # -- a FAILED job: its objects go to quarantine with their notes ------------------
        hook(url, "fail_next_jobs", count=1, message="Injected job failure")
        study = generate_uid()
        series = make_series(tmp_path / "s1", study, "P-1", 3)
        resent = make_series(tmp_path / "s2", generate_uid(), "P-2", 1)
        send(server, series + resent)
        not_importable = send_not_importable(server)
        x_uid = pydicom.dcmread(resent[0]).SOPInstanceUID
        wait_for("the failed job's cleanup", cleaned(server, study, 3, "FAILED"))
        wait_for("the cleanup of x", cleaned(server, x_uid, 1, "FAILED"))
        wait_for("the not importable", cleaned(server, not_importable, 1, "FAILED"))
        failed = instances(server, study) + instances(server, x_uid)
        job_id = failed[0]["job_id"]
        assert job_id and {i["job_id"] for i in failed} == {job_id}
        for item in [*failed, *instances(server, not_importable)]:
            key = item["key"]
            assert item["cleanup_action"] == f"quarantined:quarantine/{key}"
            assert (server.objects_dir / "quarantine" / key).is_file()
            note = json.loads((server.objects_dir / "quarantine" / f"{key}.json").read_text())
            assert (note["receipt_key"], note["reason"]) == (key, item["reason"])
            assert "P-1" not in json.dumps(note) and "Pipeline" not in json.dumps(note)
        assert received_files(server) == set()  # nothing left in a batch
        code, listed = cli(server, "failures")
        assert code == 0
        assert {i["sop_instance_uid"] for i in listed["instances"]} == {
            *(i["sop_instance_uid"] for i in failed),
            not_importable,
        }

        # -- x sent again: the newer copy is imported, then deleted (kept 0 days) --------
        again = tmp_path / "again.dcm"
        ds = pydicom.dcmread(resent[0])
        ds.InstanceNumber = 2
        ds.save_as(again, enforce_file_format=True)
        send(server, [again])
        wait_for("the newer copy's import", cleaned(server, x_uid, 1, "IMPORTED"))
        [x] = instances(server, x_uid)
        assert x["cleanup_action"] == "deleted" and not (server.objects_dir / x["key"]).exists()
        assert received_files(server) == set()

        # -- retry the job: its receipts, but never the older copy of x -------------------
        code, result = cli(server, "retry", job_id)
        assert code == 1  # one refusal
        assert sorted(r["sop_instance_uid"] for r in result["retried"]) == sorted(
            i["sop_instance_uid"] for i in instances(server, study)
        )
        assert all(r["attempt"] == 2 for r in result["retried"])
        refusals = {r["sop_instance_uid"]: r["why"] for r in result["refused"]}
        assert "superseded by a newer receipt" in refusals.pop(x_uid)
        # The not importable object is refused too when it came in the job's batch.
        assert set(refusals) <= {not_importable}
        assert all("not importable" in why for why in refusals.values())
        retry_batch = result["batch_id"]
        assert retry_batch.startswith("retry-")
        # Refusals: a failure no job can import, an instance that is not FAILED, nothing.
        code, result = cli(server, "retry", not_importable)
        assert code == 1 and result["retried"] == []
        assert "not importable" in result["refused"][0]["why"]
        code, result = cli(server, "retry", x_uid)
        assert (code, result["retried"], result["refused"]) == (1, [], [])
        assert cli(server, "retry", "1.2.826.0.1.3680043.8.498.999999")[0] == 1

        wait_for("the retried imports", cleaned(server, study, 3, "IMPORTED"), timeout=90)
        for item in instances(server, study, "--history"):
            first, second = item["attempts"]
            assert (first["outcome"], first["job_id"], first["reason"]) == (
                "FAILED",
                job_id,
                "import job failed: Injected job failure",
            )
            assert first["cleanup_action"] == f"quarantined:quarantine/{item['key']}"
            assert (second["outcome"], second["batch_id"]) == ("IMPORTED", retry_batch)
            assert second["job_id"] and second["job_id"] != job_id
            assert (item["state"], item["cleanup_action"]) == ("IMPORTED", "deleted")
            assert item["image_set_id"] == second["image_set_id"]
        # Imported: the quarantined copies, their notes and the retry copies are gone.
        left = {p.relative_to(server.objects_dir).as_posix() for p in server.stored_files()}
        assert not any(
            p.startswith(("retry/", *(f"quarantine/{i['key']}" for i in failed[:3]))) for p in left
        )
        code, listed = cli(server, "failures")
        assert {i["sop_instance_uid"] for i in listed["instances"]} == {not_importable}
        code, result = cli(server, "retry", study)
        assert (code, result["retried"]) == (1, [])
        code, result = cli(server, "retry", job_id)
        assert code == 1 and {r["why"].split(":")[0] for r in result["refused"]} >= {
            f"retried since, in {retry_batch}"
        }
        code, jobs = cli(server, "jobs")
        assert [j["status"] for j in jobs["jobs"]].count("FAILED") == 1
    finally:
        assert server.stop() == 0
        datastore.terminate()
        datastore.wait(30)
