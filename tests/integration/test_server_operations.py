"""Operating the receiver: no patient data in logs, HealthImaging limit warnings, probes and
metrics over HTTP, several processes on one port, and the S3 object store end to end."""

from __future__ import annotations

import hashlib
import io
import json
import os
import signal
import sqlite3
import subprocess
import sys
import urllib.request
from pathlib import Path

import boto3
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from tests.integration.moto_server import aws_env, moto_endpoint  # noqa: F401
from tests.serverproc import DCMTK, ServerProcess, free_port, start_server, wait_for

PATIENT_NAME = "Zyxwvut^Qponmlk"
PATIENT_ID = "PID-98765-XYZ"
BIRTH_DATE = "19451231"
CT = "1.2.840.10008.5.1.4.1.1.2"


def make_file(
    folder: Path, *, patient_name: str = PATIENT_NAME, study: str | None = None, side: int = 8
) -> tuple[Path, str]:
    ds = Dataset()
    ds.SOPClassUID = CT
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = study or generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientName = patient_name
    ds.PatientID = PATIENT_ID
    ds.PatientBirthDate = BIRTH_DATE
    ds.Modality = "CT"
    ds.Rows = ds.Columns = side
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.PixelRepresentation = 0
    ds.PixelData = os.urandom(2 * side * side)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{ds.SOPInstanceUID}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path, str(ds.SOPInstanceUID)


def storescu(port: int, *paths: Path, calling: str = "STORESCU") -> None:
    cmd = [str(DCMTK / "storescu"), "-aet", calling, "-aec", "STORE_SCP", "127.0.0.1", str(port)]
    subprocess.run([*cmd, *map(str, paths)], check=True, capture_output=True, timeout=60)


def log_records(server: ServerProcess) -> list[dict[str, object]]:
    """Complete JSON lines only: the server may be writing the last one right now."""
    return [json.loads(line) for line in server.log().split("\n")[:-1] if line.startswith("{")]


def http_get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_no_patient_data_in_logs_and_limit_warnings_name_the_element(tmp_path: Path) -> None:
    server = start_server(tmp_path / "srv", env={"STORE_SCP_LOG_LEVEL": "DEBUG"})
    try:
        ok, _ = make_file(tmp_path / "in")
        long_name = "Q" * 300  # HealthImaging refuses a PatientName over 256 characters
        over, over_uid = make_file(tmp_path / "in2", patient_name=long_name)
        storescu(server.port, ok, over)
        wait_for(lambda: len(server.stored_files()) == 2, "two stored objects")
        wait_for(
            lambda: any("HealthImaging limits" in str(r["msg"]) for r in log_records(server)),
            "the limit warning",
        )
    finally:
        assert server.stop() == 0
    text = server.log()
    for phi in (PATIENT_NAME, "Zyxwvut", PATIENT_ID, BIRTH_DATE, "Q" * 20):
        assert phi not in text, f"patient data in the log: {phi!r}"
    [warning] = [r for r in log_records(server) if "HealthImaging limits" in str(r["msg"])]
    assert warning["level"] == "WARNING"
    assert warning["lengths"] == {"PatientName": 300}
    assert over_uid in str(warning["key"])
    stored = {pydicom.dcmread(p).SOPInstanceUID: p for p in server.stored_files()}
    assert pydicom.dcmread(stored[over_uid]).PatientName == long_name  # stored all the same


def test_receipts_carry_the_digest_of_the_stored_dataset(tmp_path: Path) -> None:
    """Small objects are hashed inline, large ones by the hashing thread after the response:
    every receipt's SHA-256 is that of the dataset bytes in the committed file, and a
    graceful stop waits for the digests still being computed."""
    sides = [8, 128, 1024, 2048, 3000]  # 128 B, 32 KB, 2 MB, 8 MB, 18 MB of pixels
    files = [make_file(tmp_path / "in", side=side)[0] for side in sides]
    server = start_server(tmp_path / "srv")
    try:
        storescu(server.port, *files)
    finally:
        assert server.stop() == 0
    db = sqlite3.connect(server.data_dir / "tracker.sqlite3")
    receipts = dict(db.execute("SELECT key, sha256 FROM receipts").fetchall())
    db.close()
    stored = {p.relative_to(server.objects_dir).as_posix(): p for p in server.stored_files()}
    assert len(stored) == len(sides) and set(receipts) == set(stored)
    for key, path in stored.items():
        data = path.read_bytes()
        group_length = int.from_bytes(data[140:144], "little")  # (0002,0000), explicit VR
        assert receipts.get(key) == hashlib.sha256(data[144 + group_length :]).hexdigest(), key


def test_probes_and_metrics_over_http(tmp_path: Path) -> None:
    http = free_port()
    server = start_server(tmp_path / "srv", env={"STORE_SCP_HTTP_PORT": str(http)})
    try:
        assert http_get(http, "/healthz")[0] == 200
        assert http_get(http, "/readyz")[0] == 200
        path, _ = make_file(tmp_path / "in")
        storescu(server.port, path)
        subprocess.run(
            [str(DCMTK / "echoscu"), "-aec", "WRONG", "127.0.0.1", str(server.port)],
            capture_output=True,
            timeout=30,
        )
        status, body = http_get(http, "/metrics")
        assert status == 200
        assert 'store_scp_objects_received_total{status="0x0000"} 1.0' in body
        assert 'store_scp_associations_total{result="accepted"} 1.0' in body
        assert 'store_scp_associations_total{result="rejected"} 1.0' in body
        assert "store_scp_store_latency_seconds_count 1.0" in body
        assert PATIENT_NAME not in body
        assert 'store_scp_import_jobs_total{event="started"} 0.0' in body
        # Receipts per state come from the tracker at scrape time.
        wait_for(
            lambda: 'store_scp_receipts{state="RECEIVED"} 1.0' in http_get(http, "/metrics")[1],
            "the receipt in the tracker metrics",
        )
        assert "store_scp_oldest_unimported_age_seconds" in http_get(http, "/metrics")[1]
        assert http_get(http, "/anything-else")[0] == 404
    finally:
        assert server.stop() == 0


def test_several_processes_share_the_port_and_stop_together(tmp_path: Path) -> None:
    http = free_port()
    server = start_server(
        tmp_path / "srv",
        env={"STORE_SCP_PROCESSES": "2", "STORE_SCP_HTTP_PORT": str(http)},
    )
    try:
        children = subprocess.run(
            ["pgrep", "-P", str(server.proc.pid)], capture_output=True, text=True
        ).stdout.split()
        assert len(children) == 2, children
        files = [make_file(tmp_path / f"in{i}")[0] for i in range(8)]
        procs = [
            subprocess.Popen(
                [str(DCMTK / "storescu"), "-aec", "STORE_SCP", "127.0.0.1", str(server.port), f],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            for f in files
        ]
        assert [p.wait(60) for p in procs] == [0] * len(files)
        wait_for(lambda: len(server.stored_files()) == len(files), "all objects")
        # Only the first receiver's readiness is awaited at start: the other may log later.
        wait_for(
            lambda: (
                len({r.get("pid") for r in log_records(server) if r.get("msg") == "ready"}) == 2
            ),
            "both receivers started",
        )
        # Metrics are summed over the processes, whichever received what.
        body = http_get(http, "/metrics")[1]
        assert f'store_scp_objects_received_total{{status="0x0000"}} {float(len(files))}' in body
    finally:
        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(30) == 0
    for pid in children:
        assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text()


def test_s3_object_store_end_to_end(
    tmp_path: Path,
    moto_endpoint: str,  # noqa: F811
    aws_env: None,  # noqa: F811
) -> None:
    s3 = boto3.client("s3", endpoint_url=moto_endpoint, region_name="us-east-1")
    s3.create_bucket(Bucket="landing")
    server = start_server(
        tmp_path / "srv",
        env={
            "STORE_SCP_OBJECT_STORE": "s3",
            "STORE_SCP_S3_BUCKET": "landing",
            "STORE_SCP_S3_PREFIX": "incoming",
            "STORE_SCP_S3_ENDPOINT_URL": moto_endpoint,
            "STORE_SCP_S3_REGION": "us-east-1",
        },
    )
    try:
        path, uid = make_file(tmp_path / "in")
        storescu(server.port, path)
        keys = [o["Key"] for o in s3.list_objects_v2(Bucket="landing").get("Contents", [])]
        [key] = keys  # the response came after the upload: it is there now
        assert key.startswith("incoming/") and key.endswith(f"/{uid}.dcm")
        head = s3.head_object(Bucket="landing", Key=key)
        assert head["ServerSideEncryption"] in ("AES256", "aws:kms")
        body = s3.get_object(Bucket="landing", Key=key)["Body"].read()
        sent = path.read_bytes()
        sent_ds = pydicom.dcmread(path)
        got_ds = pydicom.dcmread(io.BytesIO(body))
        assert got_ds.SOPInstanceUID == sent_ds.SOPInstanceUID
        assert body.endswith(sent[-64:])
    finally:
        assert server.stop() == 0
    assert not any((tmp_path / "srv" / "staging").rglob("*.part"))


def test_an_object_healthimaging_cannot_import_is_stored_and_failed_at_once(
    tmp_path: Path,
) -> None:
    from pynetdicom import AE

    retired_jpeg = "1.2.840.10008.1.2.4.53"  # accepted on the wire, refused by HealthImaging
    server = start_server(tmp_path / "srv")
    try:
        ds = Dataset()
        ds.SOPClassUID = CT
        ds.SOPInstanceUID = uid = generate_uid()
        ds.StudyInstanceUID = generate_uid()
        ds.SeriesInstanceUID = generate_uid()
        ds.Modality = "CT"
        ae = AE(ae_title="SCU")
        ae.add_requested_context(CT, [retired_jpeg])
        assoc = ae.associate("127.0.0.1", server.port, ae_title="STORE_SCP")
        assert assoc.is_established
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = retired_jpeg
        status = assoc.send_c_store(ds)
        assoc.release()
        assert status.Status == 0x0000  # stored all the same: nothing is lost
        wait_for(lambda: len(server.stored_files()) == 1, "the stored object")

        def failed() -> list[dict[str, object]]:
            out = subprocess.run(
                [sys.executable, "-m", "store_scp.cli", "failures", "--json"],
                capture_output=True,
                text=True,
                env=server.env,
                timeout=30,
            )
            return list(json.loads(out.stdout)["instances"]) if out.returncode == 0 else []

        wait_for(lambda: len(failed()) == 1, "the failure")
        [item] = failed()
        assert item["sop_instance_uid"] == uid
        assert item["state"] == "FAILED" and item["job_id"] is None
        assert str(item["reason"]).startswith("not importable: ")
        assert retired_jpeg in str(item["reason"])
    finally:
        assert server.stop() == 0
