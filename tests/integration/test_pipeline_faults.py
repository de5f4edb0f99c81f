"""Fault injection through the embedded datastore's hooks: every case ends in its documented
state, with nothing lost and no batch imported twice."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from store_scp.datastore.local import LocalDatastore, import_rejection
from store_scp.pipeline.cleanup import CleanupPolicy
from store_scp.pipeline.policy import StartLimiter
from store_scp.pipeline.worker import Pipeline, PipelineConfig
from store_scp.storage.local import LocalObjectStore
from store_scp.tracking.base import JobStatus, Receipt
from store_scp.tracking.sqlite import SqliteTracker

CT = "1.2.840.10008.5.1.4.1.1.2"


class Rig:
    def __init__(self, root: Path, cleanup: CleanupPolicy | None = None) -> None:
        self.store = LocalObjectStore(root)
        self.tracker = SqliteTracker(root / "tracker.sqlite3")
        self.datastore = LocalDatastore(root / "datastore", fsync=False)
        config = PipelineConfig(
            owner="worker",
            limiter=StartLimiter(rate_per_second=100),
            cleanup=cleanup or CleanupPolicy(),
        )
        self.offset = 0.0  # added to the pipeline's clock: tests make leases run out
        self.pipeline = Pipeline(
            self.tracker,
            self.store,
            self.datastore,
            config,
            importable=import_rejection,
            clock=lambda: time.time() + self.offset,
        )
        self.n = 0

    def receive(
        self,
        batch_id: str,
        *,
        study: str,
        series: str,
        patient_id: str = "P1",
        sop: str | None = None,
        name: str = "",
        transfer_syntax: str = ExplicitVRLittleEndian,
    ) -> str:
        """Commit one object under `batch_id` and record its receipt, as the receiver does."""
        self.n += 1
        ds = Dataset()
        ds.SOPClassUID = CT
        ds.SOPInstanceUID = sop or generate_uid()
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.PatientID = patient_id
        ds.Modality = "CT"
        ds.Rows = ds.Columns = 4
        ds.BitsAllocated = ds.BitsStored = 16
        ds.HighBit = 15
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.PixelRepresentation = 0
        ds.PixelData = bytes(range(32))
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.file_meta.MediaStorageSOPClassUID = CT
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        staging = self.store.staging_dir / f"t{self.n}.part"
        ds.save_as(staging, enforce_file_format=True)
        if transfer_syntax != ExplicitVRLittleEndian:
            # Only the UID matters (the receiver records the syntax used on the wire).
            ds.file_meta.TransferSyntaxUID = transfer_syntax
        key = f"{batch_id}/{study}/{series}/{name}{ds.SOPInstanceUID}.dcm"
        committed = self.store.commit(staging, key)
        self.tracker.open_batch(batch_id, f"{batch_id}/", "receiver", 60)
        self.tracker.record_receipts(
            [
                Receipt(
                    key, batch_id, ds.SOPInstanceUID, CT, study, series,
                    transfer_syntax, committed.size, "", "SCU", "", time.time() + self.n,
                )
            ]
        )  # fmt: skip
        return key

    def seal(self, batch_id: str) -> None:
        assert self.tracker.seal_batch(batch_id, "receiver")

    def run_until(self, done: Callable[[], bool], timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while not done():
            if time.monotonic() > deadline:
                raise AssertionError("timed out")
            self.pipeline.run_once()
            time.sleep(0.05)

    def states(self, batch_id: str) -> dict[str, str]:
        return {r.key: r.state.value for r in self.tracker.receipts_in_batch(batch_id)}

    def final(self, batch_id: str) -> bool:
        job = self.tracker.batch_job(batch_id)
        return job is not None and job.results_at is not None


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    r = Rig(tmp_path / "data")
    yield r
    r.datastore.clear_faults()
    r.tracker.close()


def test_throttled_starts_are_retried_and_start_one_job(rig: Rig) -> None:
    study, series = generate_uid(), generate_uid()
    keys = [rig.receive("b1", study=study, series=series) for _ in range(3)]
    rig.seal("b1")
    rig.datastore.throttle_next_starts(2)
    rig.run_until(lambda: rig.final("b1"))
    assert rig.states("b1") == dict.fromkeys(keys, "IMPORTED")
    assert len(rig.tracker.jobs()) == 1
    assert len(rig.datastore.list_dicom_import_jobs()["jobSummaries"]) == 1


def test_a_failed_job_fails_its_receipts_with_the_message(rig: Rig) -> None:
    keys = [rig.receive("b1", study=generate_uid(), series=generate_uid()) for _ in range(2)]
    rig.seal("b1")
    rig.datastore.fail_next_jobs(1, "Injected job failure")
    rig.run_until(lambda: rig.final("b1"))
    assert rig.states("b1") == dict.fromkeys(keys, "FAILED")
    reasons = {rig.tracker.receipt_status(k).reason for k in keys}  # type: ignore[union-attr]
    assert reasons == {"import job failed: Injected job failure"}
    assert rig.tracker.batch_job("b1").status is JobStatus.FAILED  # type: ignore[union-attr]


def test_a_completed_job_with_failed_files_is_a_partial_success(rig: Rig) -> None:
    study, series = generate_uid(), generate_uid()
    good = rig.receive("b1", study=study, series=series)
    bad = rig.receive("b1", study=study, series=series, name="bad-")
    rig.seal("b1")
    rig.datastore.fail_files("*bad-*", message="Injected failure")
    rig.run_until(lambda: rig.final("b1"))
    assert rig.states("b1") == {good: "IMPORTED", bad: "FAILED"}
    assert "Injected failure" in (rig.tracker.receipt_status(bad).reason or "")  # type: ignore[union-attr]
    job = rig.tracker.batch_job("b1")
    assert job is not None and job.status is JobStatus.COMPLETED
    assert job.counts["imported"] == 1 and job.counts["failed"] == 1


def test_a_conflicting_resend_lands_in_a_non_primary_image_set(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    from store_scp.metrics import REGISTRY

    conflicts_before = REGISTRY.get_sample_value("store_scp_non_primary_instances_total") or 0.0
    study, series = generate_uid(), generate_uid()
    first = rig.receive("b1", study=study, series=series, patient_id="P1")
    rig.seal("b1")
    rig.run_until(lambda: rig.final("b1"))
    second = rig.receive("b2", study=study, series=series, patient_id="P2-CONFLICT")
    rig.seal("b2")
    rig.run_until(lambda: rig.final("b2"))
    a = rig.tracker.receipt_status(first)
    b = rig.tracker.receipt_status(second)
    assert a is not None and b is not None
    assert (a.state.value, a.is_primary) == ("IMPORTED", True)
    assert (b.state.value, b.is_primary) == ("IMPORTED", False)  # a conflict, not a failure
    assert a.image_set_id != b.image_set_id
    # Reported as a conflict to reconcile: a metric and a warning that names the object.
    assert REGISTRY.get_sample_value("store_scp_non_primary_instances_total") == (
        conflicts_before + 1
    )
    [warning] = [r for r in caplog.records if "non-primary" in r.getMessage()]
    assert warning.levelname == "WARNING" and second in warning.keys  # type: ignore[attr-defined]
    assert "P2-CONFLICT" not in warning.getMessage()


def test_a_late_manifest_is_waited_for(rig: Rig) -> None:
    keys = [rig.receive("b1", study=generate_uid(), series=generate_uid()) for _ in range(2)]
    rig.seal("b1")
    rig.datastore.delay_next_manifests(1.5)
    started = time.monotonic()
    rig.run_until(lambda: rig.final("b1"))
    assert time.monotonic() - started >= 1.4
    assert rig.states("b1") == dict.fromkeys(keys, "IMPORTED")


def test_an_unreachable_datastore_is_retried(rig: Rig) -> None:
    keys = [rig.receive("b1", study=generate_uid(), series=generate_uid())]
    rig.seal("b1")
    rig.datastore.inject_errors("StartDICOMImportJob", "InternalServerException", 1)
    rig.datastore.inject_errors("GetDICOMImportJob", "InternalServerException", 3)
    rig.run_until(lambda: rig.final("b1"))
    assert rig.states("b1") == dict.fromkeys(keys, "IMPORTED")
    assert len(rig.tracker.jobs()) == 1


def test_a_duplicate_sent_while_its_first_copy_imports_waits_then_wins(rig: Rig) -> None:
    study, series, sop = generate_uid(), generate_uid(), generate_uid()
    old = rig.receive("b1", study=study, series=series, sop=sop)
    rig.seal("b1")
    rig.datastore.hold_jobs(True)
    rig.run_until(lambda: rig.tracker.batch_job("b1") is not None)
    new = rig.receive("b2", study=study, series=series, sop=sop)
    rig.seal("b2")
    for _ in range(20):
        rig.pipeline.run_once()
    # Two receipts of one instance are never in running jobs at once.
    assert rig.tracker.batch_job("b2") is None
    rig.datastore.hold_jobs(False)
    rig.run_until(lambda: rig.final("b1") and rig.final("b2"))
    [item] = rig.tracker.where(sop)
    assert item.key == new and item.state.value == "IMPORTED"
    assert rig.tracker.receipt_status(old).state.value == "IMPORTED"  # type: ignore[union-attr]


def test_time_to_available_is_observed_once_per_study(rig: Rig) -> None:
    """Two studies in one batch: two observations, so a study that waited in the open batch
    is not hidden behind the batch's last receipt."""
    from store_scp.metrics import REGISTRY

    def observed() -> float:
        return REGISTRY.get_sample_value("store_scp_time_to_available_seconds_count") or 0.0

    before = observed()
    first, second = generate_uid(), generate_uid()
    rig.receive("b1", study=first, series=generate_uid())
    rig.receive("b1", study=first, series=generate_uid())
    rig.receive("b1", study=second, series=generate_uid())
    rig.seal("b1")
    rig.run_until(lambda: rig.final("b1"))
    assert observed() - before == 2


def test_jobs_per_thousand_instances_is_a_metric(rig: Rig) -> None:
    from store_scp.metrics import REGISTRY

    before = REGISTRY.get_sample_value("store_scp_import_job_instances_total") or 0.0
    for batch, count in (("b1", 3), ("b2", 5)):
        study, series = generate_uid(), generate_uid()
        for i in range(count):
            rig.receive(batch, study=study, series=series, name=f"i{i}-")
        rig.seal(batch)
    rig.run_until(lambda: rig.final("b1") and rig.final("b2"))
    assert REGISTRY.get_sample_value("store_scp_import_job_instances_total") == before + 8
    assert REGISTRY.get_sample_value("store_scp_import_jobs_per_1000_instances") == 250.0
