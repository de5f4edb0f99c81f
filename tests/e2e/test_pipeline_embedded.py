"""End to end on the embedded default: DCMTK storescu -> store-scp serve -> batches sealed ->
import jobs on the embedded datastore -> every instance IMPORTED; its image set metadata and
frames read back with boto3 over the datastore's HealthImaging API."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from tests.healthimaging_client import local_client
from tests.serverproc import ServerProcess, start_server, storescu

MR = "1.2.840.10008.5.1.4.1.1.4"


def make_series(folder: Path, study: str, patient_id: str, count: int) -> list[Path]:
    series = generate_uid()
    paths = []
    rng = np.random.default_rng(len(folder.name) + count)
    for i in range(count):
        ds = Dataset()
        ds.SOPClassUID = MR
        ds.SOPInstanceUID = generate_uid()
        ds.StudyInstanceUID = study
        ds.SeriesInstanceUID = series
        ds.PatientID = patient_id
        ds.PatientName = "Test^Pipeline"
        ds.Modality = "MR"
        ds.InstanceNumber = i + 1
        ds.Rows, ds.Columns = 16, 24
        ds.BitsAllocated = ds.BitsStored = 16
        ds.HighBit = 15
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.PixelRepresentation = 0
        ds.PixelData = rng.integers(0, 4000, (16, 24), dtype=np.uint16).tobytes()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.MediaStorageSOPClassUID = MR
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{i:03d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def where(server: ServerProcess, uid: str) -> list[dict[str, object]]:
    out = subprocess.run(
        [sys.executable, "-m", "store_scp.cli", "where", uid, "--json"],
        capture_output=True,
        text=True,
        env=server.env,
        timeout=30,
    )
    return list(json.loads(out.stdout)["instances"]) if out.stdout else []


def wait_imported(server: ServerProcess, uid: str, count: int, timeout: float = 60) -> list:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        items = where(server, uid)
        if len(items) == count and all(i["state"] in ("IMPORTED", "FAILED") for i in items):
            return items
        time.sleep(0.5)
    raise AssertionError(f"not all imported in {timeout} s: {where(server, uid)}")


@pytest.fixture
def server(tmp_path: Path):  # type: ignore[no-untyped-def]
    srv = start_server(
        tmp_path / "srv",
        env={
            "STORE_SCP_PIPELINE": "embedded",
            "STORE_SCP_SEAL_QUIET_SECONDS": "1",
            "STORE_SCP_IMPORT_START_RATE": "5",
        },
    )
    yield srv
    assert srv.stop() == 0


def test_studies_from_storescu_end_as_image_sets(server: ServerProcess, tmp_path: Path) -> None:
    study_a, study_b = generate_uid(), generate_uid()
    a1 = make_series(tmp_path / "a1", study_a, "P-A", 4)
    a2 = make_series(tmp_path / "a2", study_a, "P-A", 3)
    b1 = make_series(tmp_path / "b1", study_b, "P-B", 2)
    storescu(server.port, a1 + b1)
    # The same study's second series over a second association.
    storescu(server.port, a2)

    items_a = wait_imported(server, study_a, 7)
    items_b = wait_imported(server, study_b, 2)
    assert {i["state"] for i in items_a + items_b} == {"IMPORTED"}
    assert all(i["is_primary"] is True and i["job_id"] for i in items_a + items_b)

    client = local_client(f"http://127.0.0.1:{server.ports['datastore_api']}")
    [store] = client.list_datastores()["datastoreSummaries"] or [{"datastoreId": None}]
    datastore_id = store["datastoreId"]
    # The pipeline's jobs, as the API lists them (botocore checks each job's role ARN).
    listed = client.list_dicom_import_jobs(datastoreId=datastore_id)["jobSummaries"]
    assert {i["job_id"] for i in items_a + items_b} <= {j["jobId"] for j in listed}
    for summary in listed:
        job = client.get_dicom_import_job(datastoreId=datastore_id, jobId=summary["jobId"])
        assert job["jobProperties"]["jobStatus"] == "COMPLETED"
        assert job["jobProperties"]["dataAccessRoleArn"].startswith("arn:aws:iam::")
    sent = {pydicom.dcmread(p).SOPInstanceUID: pydicom.dcmread(p) for p in a1 + a2 + b1}
    image_sets = {i["image_set_id"] for i in items_a + items_b}
    assert len(image_sets) == 3  # one per series
    seen = set()
    for image_set_id in image_sets:
        blob = client.get_image_set_metadata(datastoreId=datastore_id, imageSetId=image_set_id)
        meta = json.loads(gzip.decompress(blob["imageSetMetadataBlob"].read()))
        study_uid = meta["Study"]["DICOM"]["StudyInstanceUID"]
        for series_uid, series in meta["Study"]["Series"].items():
            for sop_uid, inst in series["Instances"].items():
                ds = sent[sop_uid]
                assert (study_uid, series_uid) == (ds.StudyInstanceUID, ds.SeriesInstanceUID)
                seen.add(sop_uid)
                [frame] = inst["ImageFrames"]
                got = client.get_image_frame(
                    datastoreId=datastore_id,
                    imageSetId=image_set_id,
                    imageFrameInformation={"imageFrameId": frame["ID"]},
                )
                data = got["imageFrameBlob"].read()
                assert np.array_equal(decode(data, got["contentType"], ds), ds.pixel_array)
    assert seen == set(sent)


def decode(data: bytes, content_type: str, ds: Dataset) -> np.ndarray:
    """The frame as pixels: HTJ2K (the datastore's lossless format) or raw little endian."""
    if "jph" in content_type or "j2c" in content_type:
        from openjpeg import decode as j2k_decode

        return np.asarray(j2k_decode(data)).reshape(ds.Rows, ds.Columns)
    return np.frombuffer(data, dtype="<u2").reshape(ds.Rows, ds.Columns)


def test_a_separate_worker_imports_what_a_receive_only_server_received(tmp_path: Path) -> None:
    """`serve` with the pipeline off seals its batches at shutdown; `store-scp worker` on the
    same data folder imports them."""
    srv = start_server(tmp_path / "srv", env={"STORE_SCP_PIPELINE": "off"})
    study = generate_uid()
    files = make_series(tmp_path / "s", study, "P-W", 3)
    storescu(srv.port, files)
    assert srv.stop() == 0
    assert {i["state"] for i in where(srv, study)} == {"RECEIVED"}
    env = dict(srv.env, STORE_SCP_IMPORT_START_RATE="5")
    worker = subprocess.Popen(
        [sys.executable, "-m", "store_scp.cli", "worker"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        items = wait_imported(srv, study, 3)
        assert {i["state"] for i in items} == {"IMPORTED"}
    finally:
        worker.terminate()
        assert worker.wait(30) == 0
