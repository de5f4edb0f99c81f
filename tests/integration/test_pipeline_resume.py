"""The pipeline resumes from states that a kill -9 leaves between two steps, set up here directly
in the tracker (the end-to-end kills at each fail point are in tests/e2e/test_crash_steps.py):
each ends in its final state, nothing lost."""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom.uid import generate_uid

from store_scp.tracking.base import JobStatus
from tests.dicomfactory import secondary_capture
from tests.integration.test_pipeline_faults import Rig


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    r = Rig(tmp_path / "data")
    yield r
    r.tracker.close()


def commit_unrecorded(rig: Rig, batch_id: str, study: str, series: str) -> str:
    """An object committed by a receiver that died before writing its receipt."""
    ds = secondary_capture(random.Random(), 512)
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
    staging = rig.store.staging_dir / f"{ds.SOPInstanceUID}.part"
    ds.save_as(staging, enforce_file_format=True)
    key = f"{batch_id}/{study}/{series}/{ds.SOPInstanceUID}.dcm"
    rig.store.commit(staging, key)
    return key


def receiver_died(rig: Rig, batch_id: str) -> None:
    """The owner of `batch_id` stopped renewing its lease, which has lapsed."""
    rig.tracker.open_batch(batch_id, f"{batch_id}/", "receiver", 3, now=time.time() - 10)


def test_an_orphaned_batch_gets_receipts_for_what_its_dead_receiver_never_recorded(
    rig: Rig,
) -> None:
    study, series = generate_uid(), generate_uid()
    recorded = rig.receive("b1", study=study, series=series)
    unrecorded = commit_unrecorded(rig, "b1", study, series)
    receiver_died(rig, "b1")
    rig.run_until(lambda: rig.final("b1"))
    assert rig.states("b1") == {recorded: "IMPORTED", unrecorded: "IMPORTED"}


def test_an_orphaned_batch_without_any_recorded_receipt_is_imported(rig: Rig) -> None:
    receiver_died(rig, "b1")
    key = commit_unrecorded(rig, "b1", generate_uid(), generate_uid())
    rig.run_until(lambda: rig.final("b1"))
    assert rig.states("b1") == {key: "IMPORTED"}


def test_a_refused_start_interrupted_before_its_receipts_failed_fails_them(rig: Rig) -> None:
    keys = [rig.receive("b1", study=generate_uid(), series=generate_uid()) for _ in range(2)]
    rig.seal("b1")
    # Where `_fail_job` was killed after recording the job FAILED (`worker.job_failed`).
    why = "import job could not start: AccessDeniedException: not allowed"
    rig.tracker.mark_importing(keys, "b1")
    assert rig.tracker.record_job_start("b1", "b1", "b1")
    rig.tracker.update_job("b1", status=JobStatus.FAILED, message=why)
    rig.run_until(lambda: rig.final("b1"))
    assert rig.states("b1") == dict.fromkeys(keys, "FAILED")
    assert {rig.tracker.receipt_status(k).reason for k in keys} == {why}  # type: ignore[union-attr]
    assert rig.datastore.list_dicom_import_jobs()["jobSummaries"] == []
