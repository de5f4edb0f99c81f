"""The embedded HealthImaging-compatible datastore: jobs, image sets, rejections, outputs
compared with AWS-documented examples, metadata shape, frames that decode to the source pixels."""

from __future__ import annotations

import gzip
import io
import json
import sqlite3
import threading
import time
import warnings
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.pixels import iter_pixels
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid
from tests.framedecode import decode_stored_frame

from store_scp.datastore.base import DatastoreError, ImportJob, JobStatus
from store_scp.datastore.local import (
    DEFAULT_DATASTORE_ID,
    EXPLICIT_VR_LITTLE_ENDIAN,
    HTJ2K_LOSSLESS_RPCL,
    LocalDatastore,
    content_type_for,
    htj2k_encoder_available,
    import_rejection,
)
from store_scp.storage.local import LocalObjectStore

FIXTURES = Path(__file__).parent.parent / "fixtures" / "healthimaging"
ROLE = "arn:aws:iam::123456789012:role/store-scp-import"


def bundled_file(name: str) -> Path:
    """A test file shipped inside pydicom's own package."""
    path = get_testdata_file(name)
    assert isinstance(path, str), name
    return Path(path)


CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
JOB_TIMEOUT_S = 30.0

# Values over the VR limits are made on purpose; pydicom warns when it reads them back.
pytestmark = pytest.mark.filterwarnings("ignore:The (PN component|value) length:UserWarning")

# Files that pydicom ships in its own package (no download), one per interesting encoding.
BUNDLED = [
    "CT_small.dcm",  # explicit VR little endian, signed 16-bit
    "MR_small_implicit.dcm",  # implicit VR little endian
    "MR_small_bigendian.dcm",  # explicit VR big endian
    "MR_small_RLE.dcm",  # RLE lossless
    "MR_small_jp2klossless.dcm",  # JPEG 2000 lossless (transcoded)
    "JPEG2000.dcm",  # JPEG 2000 (kept as received)
    "SC_rgb_jpeg_dcmtk.dcm",  # JPEG baseline, colour (kept as received)
    "GDCMJ2K_TextGBR.dcm",  # JPEG 2000 lossless, colour
]


# --- helpers ---------------------------------------------------------------------------------


def make_p10(
    *,
    study_uid: str,
    series_uid: str,
    sop_uid: str | None = None,
    patient_id: str = "PAT-1",
    patient_name: str = "DOE^JANE",
    accession: str = "ACC-1",
    study_id: str = "S1",
    study_date: str = "20240102",
    series_number: int = 1,
    rows: int = 16,
    cols: int = 12,
    frames: int = 1,
    bits: int = 16,
    signed: bool = False,
    samples: int = 1,
    seed: int = 0,
    transfer_syntax: str = ExplicitVRLittleEndian,
    encapsulated: bytes | None = None,
    extra: dict[str, Any] | None = None,
    sop_class: str | None = CT_IMAGE,
) -> bytes:
    """A DICOM P10 file in memory, with random pixels unless `encapsulated` is given."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # values over the VR limits are made on purpose
        return _make_p10(**locals())


def _make_p10(
    *,
    study_uid: str,
    series_uid: str,
    sop_uid: str | None,
    patient_id: str,
    patient_name: str,
    accession: str,
    study_id: str,
    study_date: str,
    series_number: int,
    rows: int,
    cols: int,
    frames: int,
    bits: int,
    signed: bool,
    samples: int,
    seed: int,
    transfer_syntax: str,
    encapsulated: bytes | None,
    extra: dict[str, Any] | None,
    sop_class: str | None,
) -> bytes:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = UID(transfer_syntax)
    ds.file_meta.MediaStorageSOPClassUID = UID(sop_class or CT_IMAGE)
    sop_uid = sop_uid or generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = UID(sop_uid)
    if sop_class:
        ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.PatientID = patient_id
    ds.PatientName = patient_name
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "F"
    ds.AccessionNumber = accession
    ds.StudyID = study_id
    ds.StudyDate = study_date
    ds.StudyTime = "101500"
    ds.StudyDescription = "CHEST"
    ds.SeriesNumber = series_number
    ds.Modality = "CT"
    ds.BodyPartExamined = "CHEST"
    ds.InstanceNumber = 1
    ds.Rows = rows
    ds.Columns = cols
    ds.BitsAllocated = bits
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 1 if signed else 0
    ds.SamplesPerPixel = samples
    ds.PhotometricInterpretation = "RGB" if samples == 3 else "MONOCHROME2"
    if samples == 3:
        ds.PlanarConfiguration = 0
    if frames > 1:
        ds.NumberOfFrames = frames
    for keyword, value in (extra or {}).items():
        setattr(ds, keyword, value)
    if encapsulated is not None:
        ds.PixelData = encapsulate([encapsulated])
        ds["PixelData"].VR = "OB"
    else:
        rng = np.random.default_rng(seed)
        dtype = np.dtype(f"{'i' if signed else 'u'}{bits // 8}")
        info = np.iinfo(dtype)
        shape = (frames, rows, cols, samples)
        arr = rng.integers(info.min, info.max, size=shape, endpoint=True, dtype=dtype)
        ds.PixelData = arr.astype(dtype.newbyteorder("<")).tobytes()
        ds["PixelData"].VR = "OW" if bits > 8 else "OB"
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def put(store: LocalObjectStore, key: str, data: bytes) -> None:
    staging = store.staging_dir / f"{generate_uid()}.part"
    staging.write_bytes(data)
    store.commit(staging, key)


def put_file(store: LocalObjectStore, key: str, path: str | Path) -> None:
    put(store, key, Path(path).read_bytes())


def wait_job(ds: LocalDatastore, job_id: str, *, until: tuple[str, ...] = ("COMPLETED", "FAILED")):
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while True:
        job = ds.get_import_job(job_id)
        if job.status in until:
            return job
        assert time.monotonic() < deadline, f"job {job_id} still {job.status}"
        time.sleep(0.02)


class Outputs:
    def __init__(self, store: LocalObjectStore, prefix: str) -> None:
        self.prefix = prefix
        self.keys = sorted(store.list_keys(prefix))
        read = {k[len(prefix) :]: store.open(k).read() for k in self.keys}
        self.files = read
        self.manifest = json.loads(read["job-output-manifest.json"])
        self.success = [json.loads(x) for x in read["SUCCESS/success.ndjson"].splitlines()]
        self.failure = [json.loads(x) for x in read["FAILURE/failure.ndjson"].splitlines()]

    def by_file(self) -> dict[str, dict[str, Any]]:
        return {line["inputFile"]: line for line in self.success + self.failure}


def run_import(
    ds: LocalDatastore, store: LocalObjectStore, batch: str, *, token: str | None = None
) -> tuple[ImportJob, Outputs]:
    job_id = ds.start_import_job(
        job_name=f"batch-{batch}",
        client_token=token or batch,
        input_uri=store.uri(f"{batch}/"),
        output_uri=store.uri("outputs/"),
        role_arn=ROLE,
    )
    job = wait_job(ds, job_id)
    assert job.status == JobStatus.COMPLETED, job.message
    prefix = f"outputs/{ds.datastore_id}-DicomImport-{job_id}/"
    assert ds.job_output_prefix(job) == store.uri("outputs/") + prefix[len("outputs/") :]
    return job, Outputs(store, prefix)


@pytest.fixture
def store(tmp_path: Path) -> LocalObjectStore:
    return LocalObjectStore(tmp_path / "store", fsync=False)


@pytest.fixture
def datastore(tmp_path: Path) -> Iterator[LocalDatastore]:
    ds = LocalDatastore(tmp_path / "datastore", poll_interval=0.02, fsync=False)
    yield ds
    ds.close()


def instances_of(metadata: dict[str, Any]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for series in metadata["Study"]["Series"].values():
        out.update(series["Instances"])
    return out


# --- jobs and outputs ------------------------------------------------------------------------


def test_a_job_imports_every_file_under_its_prefix_and_writes_healthimaging_outputs(
    datastore: LocalDatastore, store: LocalObjectStore
) -> None:
    study, series = generate_uid(), generate_uid()
    for i in range(3):
        put(store, f"b1/{study}/{series}/{i}.dcm", make_p10(study_uid=study, series_uid=series))
    put(store, "b1/notes.txt", b"not dicom at all")
    put(store, "other/x.dcm", make_p10(study_uid=study, series_uid=series))  # not this prefix

    datastore.hold_jobs()
    job_id = datastore.start_import_job(
        job_name="b1",
        client_token="b1",
        input_uri=store.uri("b1/"),
        output_uri=store.uri("outputs/"),
        role_arn=ROLE,
    )
    assert datastore.get_import_job(job_id).status == JobStatus.SUBMITTED
    datastore.stall_next_jobs(0.3)
    datastore.hold_jobs(False)
    assert wait_job(datastore, job_id, until=("IN_PROGRESS",)).status == JobStatus.IN_PROGRESS
    job = wait_job(datastore, job_id)
    assert job.status == JobStatus.COMPLETED
    assert job.ended_at is not None and job.submitted_at is not None
    assert job.ended_at >= job.submitted_at

    prefix = f"outputs/{DEFAULT_DATASTORE_ID}-DicomImport-{job_id}/"
    outputs = Outputs(store, prefix)
    assert set(outputs.files) == {
        "job-output-manifest.json",
        "SUCCESS/success.ndjson",
        "FAILURE/failure.ndjson",
    }
    summary = outputs.manifest["jobSummary"]
    assert summary["jobId"] == job_id
    assert summary["datastoreId"] == DEFAULT_DATASTORE_ID
    assert summary["inputS3Uri"] == store.uri("b1/")
    assert summary["outputS3Uri"] == datastore.job_output_prefix(job)
    assert summary["successOutputS3Uri"] == datastore.job_output_prefix(job) + "SUCCESS/"
    assert summary["numberOfScannedFiles"] == 4
    assert summary["numberOfImportedFiles"] == 3
    assert summary["numberOfFilesWithCustomerError"] == 1
    assert summary["numberOfFilesWithServerError"] == 0
    assert summary["numberOfGeneratedImageSets"] == 1
    [image_set] = summary["imageSetsSummary"]
    assert image_set["numberOfMatchedSOPInstances"] == 3
    assert image_set["isPrimary"] is True
    assert {line["inputFile"] for line in outputs.success} == {
        f"b1/{study}/{series}/{i}.dcm" for i in range(3)
    }
    for line in outputs.success:
        assert line["importResponse"] == {
            "imageSetId": image_set["imageSetId"],
            "imageSetVersion": 1,
            "isPrimary": True,
        }
    assert outputs.failure == [
        {
            "inputFile": "b1/notes.txt",
            "exception": {
                "exceptionType": "ValidationException",
                "message": "The file is not a DICOM P10 file",
            },
        }
    ]


def _shape(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _shape(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_shape(value[0])] if value else []
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if value is None:
        return "null"
    return type(value).__name__


def _compare(documented: Any, ours: Any, path: str, extras: set[str]) -> None:
    """`ours` has every key of `documented` with a value of the same type; keys it adds beyond
    the documented ones are collected in `extras`."""
    if isinstance(documented, dict):
        assert isinstance(ours, dict), f"{path}: expected an object"
        for key, value in documented.items():
            assert key in ours, f"{path}.{key} is missing"
            _compare(value, ours[key], f"{path}.{key}", extras)
        extras.update(f"{path}.{key}" for key in set(ours) - set(documented))
    elif isinstance(documented, list):
        assert isinstance(ours, list) and ours, f"{path}: expected a non-empty list"
        _compare(documented[0], ours[0], f"{path}[]", extras)
    else:
        assert documented == ours, f"{path}: {ours} is not a {documented}"


def test_job_outputs_have_the_shape_of_the_aws_documented_examples(
    datastore: LocalDatastore, store: LocalObjectStore
) -> None:
    study, series = generate_uid(), generate_uid()
    put(store, "b/ok.dcm", make_p10(study_uid=study, series_uid=series))
    put(store, "b/bad.dcm", b"\x00" * 200)
    _job, outputs = run_import(datastore, store, "b")

    documented = json.loads((FIXTURES / "job-output-manifest.json").read_text())
    extras: set[str] = set()
    _compare(_shape(documented), _shape(outputs.manifest), "manifest", extras)
    assert extras == {
        "manifest.jobSummary.imageSetsSummary[].imageSetVersion",
        "manifest.jobSummary.imageSetsSummary[].isPrimary",
    }

    for name, ours in (("success.ndjson", outputs.success), ("failure.ndjson", outputs.failure)):
        lines = (FIXTURES / name).read_text().splitlines()
        documented_shapes = {json.dumps(_shape(json.loads(line))) for line in lines}
        assert len(documented_shapes) == 1  # every documented line has the same shape
        extras = set()
        _compare(json.loads(documented_shapes.pop()), _shape(ours[0]), name, extras)
        expected = {"success.ndjson.importResponse.imageSetVersion"} if "success" in name else set()
        assert extras == expected
    # importResponse.imageSetVersion is itself documented, in the warning.ndjson example.
    warning = json.loads((FIXTURES / "warning.ndjson").read_text())
    assert isinstance(warning["importResponse"]["imageSetVersion"], int)


def test_image_set_metadata_has_the_documented_shape(
    datastore: LocalDatastore, store: LocalObjectStore
) -> None:
    put_file(store, "b/ct.dcm", bundled_file("CT_small.dcm"))
    _job, outputs = run_import(datastore, store, "b")
    image_set_id = outputs.success[0]["importResponse"]["imageSetId"]
    blob = datastore.get_image_set_metadata(image_set_id)
    assert blob[:2] == b"\x1f\x8b"  # gzip, as GetImageSetMetadata returns it
    ours = json.loads(gzip.decompress(blob))
    documented = json.loads((FIXTURES / "image-set-metadata.json").read_text())

    assert set(ours) == set(documented)
    assert ours["DatastoreID"] == DEFAULT_DATASTORE_ID and ours["ImageSetID"] == image_set_id
    assert ours["SchemaVersion"] == documented["SchemaVersion"]
    assert set(ours["Patient"]) == {"DICOM"} and set(ours["Study"]) == {"DICOM", "Series"}
    src = pydicom.dcmread(bundled_file("CT_small.dcm"))
    [(series_uid, series)] = ours["Study"]["Series"].items()
    assert series_uid == src.SeriesInstanceUID
    [doc_series] = documented["Study"]["Series"].values()
    assert set(series) == set(doc_series) == {"DICOM", "Instances"}
    [(sop_uid, instance)] = series["Instances"].items()
    assert sop_uid == src.SOPInstanceUID
    [doc_instance] = doc_series["Instances"].values()
    assert set(instance) == set(doc_instance)
    extras: set[str] = set()
    _compare(_shape(doc_instance["ImageFrames"]), _shape(instance["ImageFrames"]), "frames", extras)
    assert extras == set()

    # Elements sit at the level the documented example puts them, with the same JSON types.
    levels = {
        "Patient": (documented["Patient"]["DICOM"], ours["Patient"]["DICOM"]),
        "Study": (documented["Study"]["DICOM"], ours["Study"]["DICOM"]),
        "Series": (doc_series["DICOM"], series["DICOM"]),
        "Instance": (doc_instance["DICOM"], instance["DICOM"]),
    }
    compared = 0
    for level, (doc, mine) in levels.items():
        for key, value in doc.items():
            if key in mine and value is not None and mine[key] is not None:
                assert type(mine[key]) is type(value), f"{level}.{key}"
                compared += 1
        for other_level, (_doc, other) in levels.items():
            if other_level != level:
                assert not (set(doc) & set(other) - {"PixelData"}), (level, other_level)
    assert compared >= 6
    assert ours["Patient"]["DICOM"]["PatientID"] == src.PatientID
    assert ours["Study"]["DICOM"]["StudyInstanceUID"] == src.StudyInstanceUID
    assert instance["DICOM"]["PixelData"] is None
    assert instance["DICOM"]["HighBit"] == 15


def test_the_same_client_token_never_starts_a_second_job(
    datastore: LocalDatastore, store: LocalObjectStore
) -> None:
    put(store, "b/x.dcm", make_p10(study_uid=generate_uid(), series_uid=generate_uid()))
    kwargs = {
        "job_name": "b",
        "client_token": "tok-1",
        "input_uri": store.uri("b/"),
        "output_uri": store.uri("outputs/"),
        "role_arn": ROLE,
    }
    first = datastore.start_import_job(**kwargs)
    assert datastore.start_import_job(**kwargs) == first
    with pytest.raises(DatastoreError) as err:
        datastore.start_import_job(**{**kwargs, "input_uri": store.uri("c/")})
    assert err.value.code == "ConflictException" and err.value.retryable
    wait_job(datastore, first)
    assert len(datastore.list_dicom_import_jobs()["jobSummaries"]) == 1


def test_list_import_jobs_filters_and_pages(
    datastore: LocalDatastore, store: LocalObjectStore
) -> None:
    ids = []
    for i in range(3):
        put(store, f"b{i}/x.dcm", make_p10(study_uid=generate_uid(), series_uid=generate_uid()))
        ids.append(run_import(datastore, store, f"b{i}")[0].job_id)
    datastore.fail_next_jobs(1, "Injected failure for the test")
    failed = datastore.start_import_job(
        job_name="f",
        client_token="f",
        input_uri=store.uri("b0/"),
        output_uri=store.uri("outputs/"),
        role_arn=ROLE,
    )
    wait_job(datastore, failed)
    page = datastore.list_dicom_import_jobs(job_status="COMPLETED", max_results=2)
    assert [j["jobId"] for j in page["jobSummaries"]] == [ids[2], ids[1]]
    rest = datastore.list_dicom_import_jobs(job_status="COMPLETED", next_token=page["nextToken"])
    assert [j["jobId"] for j in rest["jobSummaries"]] == [ids[0]] and "nextToken" not in rest
    [only] = datastore.list_dicom_import_jobs(job_status="FAILED")["jobSummaries"]
    assert only["jobId"] == failed and only["message"] == "Injected failure for the test"


def test_unknown_job_is_not_found_and_not_retryable(datastore: LocalDatastore) -> None:
    with pytest.raises(DatastoreError) as err:
        datastore.get_import_job("0" * 32)
    assert err.value.code == "ResourceNotFoundException" and not err.value.retryable


# --- image sets ------------------------------------------------------------------------------


def test_a_series_imported_by_several_jobs_merges_into_one_primary_image_set(
    datastore: LocalDatastore, store: LocalObjectStore
) -> None:
    study, series = generate_uid(), generate_uid()
    a, b = generate_uid(), generate_uid()
    put(store, "j1/a.dcm", make_p10(study_uid=study, series_uid=series, sop_uid=a, seed=1))
    put(store, "j2/b.dcm", make_p10(study_uid=study, series_uid=series, sop_uid=b, seed=2))
    put(store, "j3/a.dcm", make_p10(study_uid=study, series_uid=series, sop_uid=a, seed=3))

    _, out1 = run_import(datastore, store, "j1")
    _, out2 = run_import(datastore, store, "j2")
    _, out3 = run_import(datastore, store, "j3")
    r1, r2, r3 = (o.success[0]["importResponse"] for o in (out1, out2, out3))
    assert r1["imageSetId"] == r2["imageSetId"] == r3["imageSetId"]
    assert [r1["imageSetVersion"], r2["imageSetVersion"], r3["imageSetVersion"]] == [1, 2, 3]
    assert r1["isPrimary"] and r2["isPrimary"] and r3["isPrimary"]
    image_set_id = r1["imageSetId"]

    assert set(instances_of(datastore.image_set_metadata(image_set_id, "1"))) == {a}
    v2 = instances_of(datastore.image_set_metadata(image_set_id, "2"))
    v3 = instances_of(datastore.image_set_metadata(image_set_id, "3"))
    assert set(v2) == set(v3) == {a, b}
    # The re-imported instance replaced its older copy (new frames), the other one stayed.
    assert v3[a]["ImageFrames"][0]["ID"] != v2[a]["ImageFrames"][0]["ID"]
    assert v3[b]["ImageFrames"][0]["ID"] == v2[b]["ImageFrames"][0]["ID"]
    # Older frames remain readable (older versions refer to them).
    old_frame = v2[a]["ImageFrames"][0]["ID"]
    assert datastore.get_image_frame(image_set_id, old_frame)[0]

    props = datastore.get_image_set(image_set_id)
    assert props["versionId"] == "3" and props["isPrimary"] is True
    assert props["imageSetState"] == "ACTIVE"
    assert props["imageSetArn"].endswith(
        f"datastore/{DEFAULT_DATASTORE_ID}/imageset/{image_set_id}"
    )
    assert datastore.get_image_set(image_set_id, "1")["versionId"] == "1"
    versions = datastore.list_image_set_versions(image_set_id)["imageSetPropertiesList"]
    assert [v["versionId"] for v in versions] == ["3", "2", "1"]
    paged = datastore.list_image_set_versions(image_set_id, max_results=2)
    assert len(paged["imageSetPropertiesList"]) == 2 and paged["nextToken"]
    with pytest.raises(DatastoreError) as err:
        datastore.get_image_set(image_set_id, "9")
    assert err.value.code == "ResourceNotFoundException"


def test_conflicting_metadata_lands_in_a_non_primary_image_set(
    datastore: LocalDatastore, store: LocalObjectStore
) -> None:
    study, series = generate_uid(), generate_uid()
    a = generate_uid()
    put(store, "j1/a.dcm", make_p10(study_uid=study, series_uid=series, sop_uid=a))
    # The same instance sent again with another Patient ID: a conflict, not a failure.
    put(store, "j2/a.dcm", make_p10(study_uid=study, series_uid=series, sop_uid=a, patient_id="X"))
    # Another series of the study with a different accession number: a study-level conflict.
    other_series = generate_uid()
    put(store, "j3/c.dcm", make_p10(study_uid=study, series_uid=other_series, accession="ACC-9"))
    # A consistent new series of the same study: primary.
    put(store, "j4/d.dcm", make_p10(study_uid=study, series_uid=generate_uid()))

    _, out1 = run_import(datastore, store, "j1")
    _, out2 = run_import(datastore, store, "j2")
    _, out3 = run_import(datastore, store, "j3")
    _, out4 = run_import(datastore, store, "j4")
    primary = out1.success[0]["importResponse"]
    conflict = out2.success[0]["importResponse"]
    assert conflict["isPrimary"] is False and conflict["imageSetId"] != primary["imageSetId"]
    assert out2.manifest["jobSummary"]["imageSetsSummary"][0]["isPrimary"] is False
    assert out3.success[0]["importResponse"]["isPrimary"] is False
    assert out4.success[0]["importResponse"]["isPrimary"] is True
    # The primary image set was not touched.
    assert datastore.get_image_set(primary["imageSetId"])["versionId"] == "1"
    md = datastore.image_set_metadata(conflict["imageSetId"])
    assert md["Patient"]["DICOM"]["PatientID"] == "X"
    found = datastore.search_image_sets(
        {"filters": [{"operator": "EQUAL", "values": [{"DICOMSeriesInstanceUID": series}]}]}
    )["imageSetsMetadataSummaries"]
    assert {(s["imageSetId"], s["isPrimary"]) for s in found} == {
        (primary["imageSetId"], True),
        (conflict["imageSetId"], False),
    }


def test_conflicting_instances_within_one_job_are_split(
    datastore: LocalDatastore, store: LocalObjectStore
) -> None:
    study, series = generate_uid(), generate_uid()
    put(store, "j/1.dcm", make_p10(study_uid=study, series_uid=series))
    put(store, "j/2.dcm", make_p10(study_uid=study, series_uid=series))
    put(store, "j/3.dcm", make_p10(study_uid=study, series_uid=series, series_number=7))
    _, out = run_import(datastore, store, "j")
    by_file = out.by_file()
    one, two, three = (by_file[f"j/{i}.dcm"]["importResponse"] for i in (1, 2, 3))
    assert one == two and one["isPrimary"] is True
    assert three["isPrimary"] is False and three["imageSetId"] != one["imageSetId"]
    assert out.manifest["jobSummary"]["numberOfGeneratedImageSets"] == 2


def test_search_image_sets_by_study_series_patient_and_primary(
    datastore: LocalDatastore, store: LocalObjectStore
) -> None:
    study = generate_uid()
    series = [generate_uid() for _ in range(3)]
    for i, s in enumerate(series):
        put(store, f"b/{i}.dcm", make_p10(study_uid=study, series_uid=s, series_number=i + 1))
    put(
        store,
        "b/other.dcm",
        make_p10(study_uid=generate_uid(), series_uid=generate_uid(), patient_id="PAT-2"),
    )
    run_import(datastore, store, "b")

    def search(attr: str, value: Any, **kw: Any) -> list[dict[str, Any]]:
        crit = {"filters": [{"operator": "EQUAL", "values": [{attr: value}]}]}
        return datastore.search_image_sets(crit, **kw)["imageSetsMetadataSummaries"]

    assert len(search("DICOMStudyInstanceUID", study)) == 3
    [hit] = search("DICOMSeriesInstanceUID", series[1])
    tags = hit["DICOMTags"]
    assert tags["DICOMSeriesInstanceUID"] == series[1] and tags["DICOMStudyInstanceUID"] == study
    assert tags["DICOMSeriesNumber"] == 2 and tags["DICOMPatientId"] == "PAT-1"
    assert tags["DICOMSeriesModality"] == "CT" and tags["DICOMAccessionNumber"] == "ACC-1"
    assert hit["version"] == 1 and hit["isPrimary"] is True
    assert len(search("DICOMPatientId", "PAT-1")) == 3
    assert len(search("DICOMPatientId", "PAT-2")) == 1
    assert len(search("DICOMAccessionNumber", "ACC-1")) == 4
    assert len(search("isPrimary", True)) == 4 and search("isPrimary", False) == []
    assert len(datastore.search_image_sets()["imageSetsMetadataSummaries"]) == 4

    page = datastore.search_image_sets(
        {
            "filters": [{"operator": "EQUAL", "values": [{"DICOMStudyInstanceUID": study}]}],
            "sort": {"sortField": "createdAt", "sortOrder": "ASC"},
        },
        max_results=2,
    )
    rest = datastore.search_image_sets(
        {
            "filters": [{"operator": "EQUAL", "values": [{"DICOMStudyInstanceUID": study}]}],
            "sort": {"sortField": "createdAt", "sortOrder": "ASC"},
        },
        next_token=page["nextToken"],
    )
    seen = [s["imageSetId"] for s in page["imageSetsMetadataSummaries"]]
    seen += [s["imageSetId"] for s in rest["imageSetsMetadataSummaries"]]
    assert len(seen) == len(set(seen)) == 3 and "nextToken" not in rest
    assert page["sort"] == {"sortField": "createdAt", "sortOrder": "ASC"}

    now = time.time()
    between = datastore.search_image_sets(
        {
            "filters": [
                {
                    "operator": "BETWEEN",
                    "values": [{"createdAt": now - 600}, {"createdAt": now + 600}],
                }
            ]
        }
    )["imageSetsMetadataSummaries"]
    assert len(between) == 4
    dated = datastore.search_image_sets(
        {
            "filters": [
                {
                    "operator": "BETWEEN",
                    "values": [
                        {"DICOMStudyDateAndTime": {"DICOMStudyDate": "20240101"}},
                        {"DICOMStudyDateAndTime": {"DICOMStudyDate": "20240102"}},
                    ],
                }
            ]
        }
    )["imageSetsMetadataSummaries"]
    assert len(dated) == 4
    with pytest.raises(DatastoreError) as err:
        datastore.search_image_sets(
            {"filters": [{"operator": "BETWEEN", "values": [{"DICOMPatientId": "a"}]}]}
        )
    assert err.value.code == "ValidationException"


# --- rejections ------------------------------------------------------------------------------


def test_rejections_the_service_makes_each_have_a_failure_line(
    datastore: LocalDatastore, store: LocalObjectStore
) -> None:
    study, series = generate_uid(), generate_uid()
    good = make_p10(study_uid=study, series_uid=series)
    cases: dict[str, tuple[bytes, str]] = {
        "long-name.dcm": (
            make_p10(study_uid=study, series_uid=series, patient_name="A" * 257),
            "DICOM attribute PatientName exceeds the maximum length of 256",
        ),
        "long-description.dcm": (
            make_p10(study_uid=study, series_uid=series, extra={"StudyDescription": "D" * 257}),
            "DICOM attribute StudyDescription exceeds the maximum length of 256",
        ),
        "long-sex.dcm": (
            make_p10(study_uid=study, series_uid=series, extra={"PatientSex": "F" * 17}),
            "DICOM attribute PatientSex exceeds the maximum length of 16",
        ),
        "too-many.dcm": (
            make_p10(
                study_uid=study,
                series_uid=series,
                extra={"NumberOfStudyRelatedInstances": 1_000_001},
            ),
            "DICOM attribute NumberOfStudyRelatedInstances exceeds the maximum value of 1000000",
        ),
        "jpeg-xl.dcm": (
            # pydicom cannot write JPEG XL: write HTJ2K and rename the syntax (same length).
            make_p10(
                study_uid=study,
                series_uid=series,
                transfer_syntax="1.2.840.10008.1.2.4.202",
                encapsulated=b"\xff\x0a" + b"0" * 64,
            ).replace(b"1.2.840.10008.1.2.4.202", b"1.2.840.10008.1.2.4.112", 1),
            "Unsupported transfer syntax 1.2.840.10008.1.2.4.112",
        ),
        "no-sop-class.dcm": (
            make_p10(study_uid=study, series_uid=series, sop_class=None),
            "DICOM attribute SOPClassUID does not exist",
        ),
        "gzip.dcm": (gzip.compress(good), "Files with gzip Content-Encoding are not supported"),
        "text.dcm": (b"hello", "The file is not a DICOM P10 file"),
        "no-study.dcm": (
            make_p10(study_uid="", series_uid=series),
            "DICOM attribute StudyInstanceUID does not exist",
        ),
    }
    for name, (data, _message) in cases.items():
        put(store, f"b/{name}", data)
    put(store, "b/good.dcm", good)
    _job, out = run_import(datastore, store, "b")
    failures = {f["inputFile"]: f["exception"] for f in out.failure}
    assert set(failures) == {f"b/{name}" for name in cases}
    for name, (_data, message) in cases.items():
        exception = failures[f"b/{name}"]
        assert exception["exceptionType"] == "ValidationException"
        assert exception["message"].startswith(message), (name, exception["message"])
    summary = out.manifest["jobSummary"]
    assert summary["numberOfImportedFiles"] == 1
    assert summary["numberOfFilesWithCustomerError"] == len(cases)


def test_import_rejection_names_what_no_job_could_import() -> None:
    assert import_rejection(CT_IMAGE, ExplicitVRLittleEndian) is None
    assert import_rejection("1.2.3.4.5.6.7", "1.2.840.10008.1.2.4.203") is None  # private class
    assert "Unsupported transfer syntax" in str(
        import_rejection(CT_IMAGE, "1.2.840.10008.1.2.4.110")
    )
    assert "Unsupported transfer syntax" in str(
        import_rejection(CT_IMAGE, "1.2.840.10008.1.2.4.94")
    )
    assert "SOPClassUID" in str(import_rejection(None, ExplicitVRLittleEndian))
    assert "not a valid UID" in str(import_rejection("1.2.x", ExplicitVRLittleEndian))
    assert "Media Storage Directory" in str(
        import_rejection("1.2.840.10008.1.3.10", ExplicitVRLittleEndian)
    )


def test_job_level_quotas_fail_the_job(tmp_path: Path, store: LocalObjectStore) -> None:
    ds = LocalDatastore(
        tmp_path / "ds",
        poll_interval=0.02,
        fsync=False,
        max_files_per_job=2,
        max_nested_folders=3,
        max_concurrent_jobs=1,
    )
    try:
        for i in range(3):
            put(store, f"many/{i}.dcm", make_p10(study_uid=generate_uid(), series_uid="1.2"))
        for i in range(2):
            put(store, f"deep/a{i}/b/c.dcm", make_p10(study_uid=generate_uid(), series_uid="1.2"))
        args = {"output_uri": store.uri("outputs/"), "role_arn": ROLE}
        many = ds.start_import_job(
            job_name="m", client_token="m", input_uri=store.uri("many/"), **args
        )
        job = wait_job(ds, many)
        assert job.status == JobStatus.FAILED and "more than the 2 allowed" in job.message
        assert list(store.list_keys(ds.job_output_prefix(job).split("/objects/")[1])) == []
        deep = ds.start_import_job(
            job_name="d", client_token="d", input_uri=store.uri("deep/"), **args
        )
        job = wait_job(ds, deep)
        assert job.status == JobStatus.FAILED and "nested folders" in job.message

        ds.hold_jobs()
        ds.start_import_job(job_name="h", client_token="h", input_uri=store.uri("deep/"), **args)
        with pytest.raises(DatastoreError) as err:
            ds.start_import_job(job_name="q", client_token="q", input_uri=store.uri("x/"), **args)
        assert err.value.code == "ServiceQuotaExceededException" and err.value.retryable
    finally:
        ds.close()


def test_size_quotas(tmp_path: Path, store: LocalObjectStore) -> None:
    small = make_p10(study_uid=generate_uid(), series_uid=generate_uid(), rows=4, cols=4)
    big = make_p10(study_uid=generate_uid(), series_uid=generate_uid(), rows=64, cols=64)
    put(store, "sizes/small.dcm", small)
    put(store, "sizes/big.dcm", big)
    args = {"input_uri": store.uri("sizes/"), "output_uri": store.uri("outputs/"), "role_arn": ROLE}
    per_file = LocalDatastore(
        tmp_path / "a", fsync=False, poll_interval=0.02, max_file_bytes=len(small) + 1
    )
    try:
        _job, out = run_import(per_file, store, "sizes")
        [failure] = out.failure
        assert failure["inputFile"] == "sizes/big.dcm"
        assert "larger than the" in failure["exception"]["message"]
    finally:
        per_file.close()
    per_job = LocalDatastore(
        tmp_path / "b", fsync=False, poll_interval=0.02, max_bytes_per_job=len(small) + len(big) - 1
    )
    try:
        job = wait_job(per_job, per_job.start_import_job(job_name="s", client_token="s", **args))
        assert job.status == JobStatus.FAILED and "bytes, more than the" in job.message
    finally:
        per_job.close()


# --- fault injection -------------------------------------------------------------------------


def test_test_hooks_inject_the_faults_the_pipeline_must_survive(
    datastore: LocalDatastore, store: LocalObjectStore
) -> None:
    study, series = generate_uid(), generate_uid()
    put(store, "b/1.dcm", make_p10(study_uid=study, series_uid=series))
    put(store, "b/2.dcm", make_p10(study_uid=study, series_uid=series))
    args = {"input_uri": store.uri("b/"), "output_uri": store.uri("outputs/"), "role_arn": ROLE}

    datastore.throttle_next_starts(2)
    for _ in range(2):
        with pytest.raises(DatastoreError) as err:
            datastore.start_import_job(job_name="t", client_token="t", **args)
        assert err.value.code == "ThrottlingException" and err.value.retryable
    assert datastore.list_dicom_import_jobs()["jobSummaries"] == []

    datastore.fail_next_jobs(1, "Simulated failure")
    failed = wait_job(datastore, datastore.start_import_job(job_name="t", client_token="t", **args))
    assert failed.status == JobStatus.FAILED and failed.message == "Simulated failure"
    assert (
        list(store.list_keys(f"outputs/{DEFAULT_DATASTORE_ID}-DicomImport-{failed.job_id}")) == []
    )

    datastore.delay_next_manifests(0.5)
    datastore.fail_files("b/2.dcm", message="Simulated file failure", server_error=True)
    job_id = datastore.start_import_job(job_name="u", client_token="u", **args)
    job = wait_job(datastore, job_id)
    prefix = f"outputs/{DEFAULT_DATASTORE_ID}-DicomImport-{job_id}/"
    assert job.status == JobStatus.COMPLETED
    assert f"{prefix}job-output-manifest.json" not in set(store.list_keys(prefix))
    deadline = time.monotonic() + 10
    while f"{prefix}job-output-manifest.json" not in set(store.list_keys(prefix)):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    out = Outputs(store, prefix)
    assert out.failure == [
        {
            "inputFile": "b/2.dcm",
            "exception": {
                "exceptionType": "InternalServerException",
                "message": "Simulated file failure",
            },
        }
    ]
    assert out.manifest["jobSummary"]["numberOfFilesWithServerError"] == 1

    datastore.inject_errors("GetDICOMImportJob", "InternalServerException")
    with pytest.raises(DatastoreError) as err:
        datastore.get_import_job(job_id)
    assert err.value.code == "InternalServerException" and err.value.retryable
    assert datastore.get_import_job(job_id).status == JobStatus.COMPLETED

    datastore.hold_jobs()
    held = datastore.start_import_job(job_name="v", client_token="v", **args)
    time.sleep(0.2)
    assert datastore.get_import_job(held).status == JobStatus.SUBMITTED
    datastore.clear_faults()
    assert wait_job(datastore, held).status == JobStatus.COMPLETED


# --- processes and threads -------------------------------------------------------------------


def test_jobs_submitted_by_one_instance_run_in_another_and_orphans_restart(
    tmp_path: Path, store: LocalObjectStore
) -> None:
    put(store, "b/x.dcm", make_p10(study_uid=generate_uid(), series_uid=generate_uid()))
    root = tmp_path / "ds"
    submitter = LocalDatastore(root, run_jobs=False, fsync=False)
    args = {"input_uri": store.uri("b/"), "output_uri": store.uri("outputs/"), "role_arn": ROLE}
    job_id = submitter.start_import_job(job_name="a", client_token="a", **args)
    orphan = submitter.start_import_job(job_name="o", client_token="o", **args)
    # A job whose runner died while it was IN_PROGRESS (its lock file is gone).
    with sqlite3.connect(root / "datastore.sqlite3") as db:
        db.execute(
            "UPDATE jobs SET status='IN_PROGRESS', runner='dead-1' WHERE job_id=?", (orphan,)
        )
    time.sleep(0.1)
    assert submitter.get_import_job(job_id).status == JobStatus.SUBMITTED
    runner = LocalDatastore(root, poll_interval=0.02, fsync=False)
    try:
        assert wait_job(submitter, job_id).status == JobStatus.COMPLETED
        assert wait_job(submitter, orphan).status == JobStatus.COMPLETED
    finally:
        runner.close()
        submitter.close()


def test_concurrent_jobs_on_one_series_keep_one_primary_image_set(
    datastore: LocalDatastore, store: LocalObjectStore
) -> None:
    study, series = generate_uid(), generate_uid()
    for i in range(6):
        put(store, f"c{i}/x.dcm", make_p10(study_uid=study, series_uid=series, seed=i))
    ids: list[str] = []
    lock = threading.Lock()

    def start(i: int) -> None:
        job_id = datastore.start_import_job(
            job_name=f"c{i}",
            client_token=f"c{i}",
            input_uri=store.uri(f"c{i}/"),
            output_uri=store.uri("outputs/"),
            role_arn=ROLE,
        )
        with lock:
            ids.append(job_id)

    threads = [threading.Thread(target=start, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(ids)) == 6
    for job_id in ids:
        assert wait_job(datastore, job_id).status == JobStatus.COMPLETED
    found = datastore.search_image_sets(
        {"filters": [{"operator": "EQUAL", "values": [{"DICOMSeriesInstanceUID": series}]}]}
    )["imageSetsMetadataSummaries"]
    assert len(found) == 1 and found[0]["isPrimary"] and found[0]["version"] == 6
    assert len(instances_of(datastore.image_set_metadata(found[0]["imageSetId"]))) == 6


# --- frames ----------------------------------------------------------------------------------


def _generated_sources(tmp_path: Path) -> dict[str, Path]:
    study = generate_uid()
    specs: dict[str, dict[str, Any]] = {
        "multiframe-u16.dcm": {"frames": 4, "rows": 70, "cols": 90},
        "signed-i16.dcm": {"signed": True, "rows": 33, "cols": 17},
        "u8.dcm": {"bits": 8},
        "rgb.dcm": {"bits": 8, "samples": 3, "frames": 2},
        "large-u16.dcm": {"rows": 300, "cols": 4500},
    }
    out = {}
    for i, (name, spec) in enumerate(specs.items()):
        path = tmp_path / name
        path.write_bytes(make_p10(study_uid=study, series_uid=generate_uid(), seed=i, **spec))
        out[name] = path
    return out


@pytest.mark.parametrize("lossless_format", ["auto", "original"])
def test_every_frame_decodes_to_the_source_pixels(
    tmp_path: Path, store: LocalObjectStore, lossless_format: Any
) -> None:
    sources = {name: Path(bundled_file(name)) for name in BUNDLED}
    sources.update(_generated_sources(tmp_path))
    ds = LocalDatastore(
        tmp_path / "ds", lossless_format=lossless_format, fsync=False, poll_interval=0.02
    )
    try:
        for i, (name, path) in enumerate(sources.items()):
            # One job each: several bundled files share one SOP Instance UID.
            put_file(store, f"b{i}/{name}", path)
            _job, out = run_import(ds, store, f"b{i}")
            assert out.failure == []
            src = pydicom.dcmread(path)
            image_set_id = out.success[0]["importResponse"]["imageSetId"]
            instance = instances_of(ds.image_set_metadata(image_set_id))[src.SOPInstanceUID]
            stored_ts = instance["StoredTransferSyntaxUID"]
            source_ts = str(src.file_meta.TransferSyntaxUID)
            kept = source_ts in ("1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.91")
            if kept:
                assert stored_ts == source_ts, name
            elif ds.stores_frames_as == "htj2k":
                assert stored_ts == HTJ2K_LOSSLESS_RPCL, name
            elif src.file_meta.TransferSyntaxUID.is_compressed:
                assert stored_ts == source_ts, name
            else:
                assert stored_ts == EXPLICIT_VR_LITTLE_ENDIAN, name
            expected = list(iter_pixels(path, raw=True))
            frames = instance["ImageFrames"]
            assert len(frames) == len(expected), name
            for frame, want in zip(frames, expected, strict=True):
                data, content_type = ds.get_image_frame(image_set_id, frame["ID"])
                assert content_type == content_type_for(stored_ts)
                got = decode_stored_frame(src, stored_ts, data)
                assert got.shape == want.shape, name
                assert np.array_equal(got, want), name
                want_le = want.astype(want.dtype.newbyteorder("<"))
                [level] = frame["PixelDataChecksumFromBaseToFullResolution"]
                assert level == {
                    "Width": int(src.Columns),
                    "Height": int(src.Rows),
                    "Checksum": zlib.crc32(want_le.tobytes()),
                }
                assert frame["FrameSizeInBytes"] == want.nbytes
                assert frame["MinPixelValue"] == int(want.min())
                assert frame["MaxPixelValue"] == int(want.max())
            if kept or not src.file_meta.TransferSyntaxUID.is_compressed:
                continue
            if ds.stores_frames_as == "original":  # encapsulated frames kept byte for byte
                from pydicom.encaps import generate_frames

                originals = list(generate_frames(src.PixelData, number_of_frames=len(frames)))
                stored = [ds.get_image_frame(image_set_id, f["ID"])[0] for f in frames]
                assert stored == originals, name
    finally:
        ds.close()


@pytest.mark.skipif(not htj2k_encoder_available(), reason="no HTJ2K encoder installed")
def test_htj2k_frames_are_rpcl_with_tlm_and_a_small_base_resolution(
    datastore: LocalDatastore, store: LocalObjectStore
) -> None:
    study = generate_uid()
    sizes = [(16, 12), (300, 4500), (2000, 100)]
    for i, (rows, cols) in enumerate(sizes):
        put(
            store,
            f"b/{i}.dcm",
            make_p10(study_uid=study, series_uid=generate_uid(), rows=rows, cols=cols, seed=i),
        )
    _job, out = run_import(datastore, store, "b")
    for line in out.success:
        image_set_id = line["importResponse"]["imageSetId"]
        [instance] = instances_of(datastore.image_set_metadata(image_set_id)).values()
        assert instance["StoredTransferSyntaxUID"] == HTJ2K_LOSSLESS_RPCL
        data, content_type = datastore.get_image_frame(
            image_set_id, instance["ImageFrames"][0]["ID"]
        )
        assert content_type == "image/jph"
        assert data[:4] == b"\xff\x4f\xff\x51"  # SOC, SIZ: a raw codestream
        width = int.from_bytes(data[8:12], "big")
        height = int.from_bytes(data[12:16], "big")
        cod = data.index(b"\xff\x52")
        assert data[cod + 5] == 2  # progression order RPCL
        decompositions = data[cod + 9]
        assert -(-max(width, height) // 2**decompositions) <= 64
        assert b"\xff\x55" in data  # TLM marker
