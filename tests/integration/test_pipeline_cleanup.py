"""Cleanup and retry on the embedded datastore: imported objects deleted after the keep time,
failed ones quarantined with their note, retries imported from retry batches, every refusal."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from pydicom.uid import generate_uid

from store_scp.cli import main
from store_scp.pipeline import retry as retry_module
from store_scp.pipeline.cleanup import CleanupPolicy
from store_scp.pipeline.retry import NO_BATCH_REASON, retry, select_for_job, select_for_uid
from store_scp.storage.layout import quarantine_key, quarantine_note_key
from store_scp.tracking.base import State
from tests.integration.test_pipeline_faults import Rig

RETIRED_JPEG = "1.2.840.10008.1.2.4.53"  # stored, but HealthImaging never imports it


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    r = Rig(tmp_path / "data", CleanupPolicy(keep_imported_seconds=0))
    yield r
    r.datastore.clear_faults()
    r.tracker.close()


def keys_in_store(rig: Rig) -> set[str]:
    return set(rig.store.list_keys())


def state(rig: Rig, key: str) -> State:
    status = rig.tracker.receipt_status(key)
    assert status is not None
    return status.state


def test_imported_objects_are_deleted_and_the_deletion_recorded(rig: Rig) -> None:
    study, series = generate_uid(), generate_uid()
    keys = [rig.receive("b1", study=study, series=series) for _ in range(3)]
    rig.seal("b1")
    rig.run_until(lambda: all(rig.tracker.receipt_status(k).cleanup_action for k in keys))  # type: ignore[union-attr]
    for key in keys:
        status = rig.tracker.receipt_status(key)
        assert status is not None
        assert (status.state, status.cleanup_action) == (State.IMPORTED, "deleted")
        assert status.cleanup_at is not None and status.cleanup_at >= status.state_changed_at
    assert not keys_in_store(rig) & set(keys)
    assert not (rig.store.objects_dir / "b1").exists()  # its emptied folders too


def test_imported_objects_are_kept_for_the_keep_time(tmp_path: Path) -> None:
    rig = Rig(tmp_path / "data", CleanupPolicy(keep_imported_seconds=3600))
    try:
        key = rig.receive("b1", study=generate_uid(), series=generate_uid())
        rig.seal("b1")
        rig.run_until(lambda: rig.final("b1"))
        rig.pipeline.clean_up()
        assert key in keys_in_store(rig)
        rig.offset = 3601  # an hour later
        assert rig.pipeline.clean_up() == 1
        assert key not in keys_in_store(rig)
    finally:
        rig.tracker.close()


def test_imported_objects_kept_forever(tmp_path: Path) -> None:
    rig = Rig(tmp_path / "data", CleanupPolicy(keep_imported_seconds=None))
    try:
        key = rig.receive("b1", study=generate_uid(), series=generate_uid())
        rig.seal("b1")
        rig.run_until(lambda: rig.final("b1"))
        rig.offset = 10 * 365 * 86400
        assert rig.pipeline.clean_up() == 0
        assert key in keys_in_store(rig)
        assert rig.tracker.receipt_status(key).cleanup_action is None  # type: ignore[union-attr]
    finally:
        rig.tracker.close()


def test_a_failed_job_is_quarantined_then_retried_into_its_own_batch(rig: Rig) -> None:
    study, series = generate_uid(), generate_uid()
    keys = [rig.receive("b1", study=study, series=series) for _ in range(2)]
    rig.seal("b1")
    rig.datastore.fail_next_jobs(1, "Injected job failure")
    rig.run_until(lambda: all(rig.tracker.receipt_status(k).cleanup_action for k in keys))  # type: ignore[union-attr]
    job = rig.tracker.batch_job("b1")
    assert job is not None and job.job_id
    for key in keys:
        status = rig.tracker.receipt_status(key)
        assert status is not None
        assert status.state is State.FAILED
        assert status.cleanup_action == f"quarantined:{quarantine_key(key)}"
        note = json.loads(rig.store.open(quarantine_note_key(key)).read())
        assert note["receipt_key"] == key
        assert note["reason"] == "import job failed: Injected job failure"
        assert (note["job_id"], note["job_batch_id"], note["batch_id"]) == (job.job_id, "b1", "b1")
        assert note["sha256"] == status.sha256 and note["retryable"] is True
        assert note["sop_instance_uid"] == status.sop_instance_uid
        assert "PatientID" not in json.dumps(note) and "P1" not in note.values()
    assert keys_in_store(rig) - {
        k for k in keys_in_store(rig) if k.startswith("import-output/")
    } == {
        *(quarantine_key(k) for k in keys),
        *(quarantine_note_key(k) for k in keys),
    }
    assert {f.key for f in rig.tracker.failures()} == set(keys)  # still listed

    chosen, refused = select_for_job(rig.tracker, job)
    assert (sorted(c.key for c in chosen), refused) == (sorted(keys), [])
    result = retry(rig.tracker, rig.store, chosen, owner="cli", now=rig.pipeline.clock())
    assert result.batch_id and result.batch_id.startswith("retry-")
    assert sorted(s.key for s in result.retried) == sorted(keys) and result.refused == []
    # The copies are under the retry batch's prefix, which the reconciler never scans.
    assert {f"retry/{result.batch_id}/{k}" for k in keys} <= keys_in_store(rig)
    retry_batch = result.batch_id
    rig.run_until(lambda: all(rig.tracker.receipt_status(k).cleanup_action for k in keys))  # type: ignore[union-attr]
    for key in keys:
        status = rig.tracker.receipt_status(key)
        assert status is not None
        assert (status.state, status.attempt, status.job_batch_id) == (
            State.IMPORTED,
            2,
            retry_batch,
        )
        first, second = rig.tracker.attempts(key)
        assert (first.outcome, first.batch_id, first.cleanup_action) == (
            State.FAILED,
            "b1",
            f"quarantined:{quarantine_key(key)}",
        )
        assert (second.outcome, second.batch_id, second.cleanup_action) == (
            State.IMPORTED,
            retry_batch,
            "deleted",
        )
    # Imported: every copy is gone, the quarantined one and its note too.
    assert not {k for k in keys_in_store(rig) if not k.startswith("import-output/")}
    assert rig.tracker.failures() == []
    assert len(rig.tracker.jobs()) == 2  # one per batch: b1 and the retry batch
    # A second retry of the same job is refused: its receipts were retried since.
    chosen, refused = select_for_job(rig.tracker, job)
    assert chosen == [] and {r.why for r in refused} == {
        f"retried since, in {retry_batch}: IMPORTED"
    }


def test_objects_no_job_can_import_leave_the_batch_before_its_job(rig: Rig) -> None:
    study, series = generate_uid(), generate_uid()
    good = rig.receive("b1", study=study, series=series)
    bad = rig.receive("b1", study=study, series=series, transfer_syntax=RETIRED_JPEG)
    rig.seal("b1")
    rig.run_until(lambda: rig.tracker.batch_job("b1") is not None)
    # Out of the prefix before the job was recorded, so the job never saw it.
    assert bad not in keys_in_store(rig)
    assert quarantine_key(bad) in keys_in_store(rig)
    rig.run_until(lambda: rig.final("b1"))
    job = rig.tracker.batch_job("b1")
    assert job is not None and job.counts["imported"] == 1 and job.counts["failed"] == 0
    assert state(rig, good) is State.IMPORTED
    status = rig.tracker.receipt_status(bad)
    assert status is not None and (status.reason or "").startswith("not importable: ")
    note = json.loads(rig.store.open(quarantine_note_key(bad)).read())
    assert note["retryable"] is False and note["retry"] is None and note["job_id"] is None
    # Refused: a retry would fail the same way.
    chosen, refused = select_for_uid(rig.tracker, status.sop_instance_uid)
    assert chosen == [] and "not importable" in refused[0].why
    chosen, refused = select_for_job(rig.tracker, job)
    assert chosen == [] and [r.key for r in refused] == [bad]


def test_retry_refuses_what_it_must_not_import(rig: Rig) -> None:
    study, series, sop = generate_uid(), generate_uid(), generate_uid()
    old = rig.receive("b1", study=study, series=series, sop=sop)
    other = rig.receive("b1", study=study, series=series)
    rig.seal("b1")
    rig.datastore.fail_next_jobs(1)
    rig.run_until(lambda: rig.final("b1"))
    new = rig.receive("b2", study=study, series=series, sop=sop)  # sent again, newer
    rig.seal("b2")
    rig.run_until(lambda: rig.final("b2"))
    assert (state(rig, old), state(rig, new)) == (State.FAILED, State.IMPORTED)
    job = rig.tracker.batch_job("b1")
    assert job is not None
    chosen, refused = select_for_job(rig.tracker, job)
    # Never an older receipt after a newer one; the other failure may be retried.
    assert [c.key for c in chosen] == [other]
    assert [(r.key, r.why) for r in refused] == [
        (old, f"superseded by a newer receipt of the same instance ({new})")
    ]
    # By UID: the newest receipt of each instance, and only a FAILED one.
    assert select_for_uid(rig.tracker, sop) == ([], [])
    chosen, refused = select_for_uid(rig.tracker, study)
    assert [c.key for c in chosen] == [other] and refused == []
    # Two retries of one receipt: the second finds it importing.
    first = retry(rig.tracker, rig.store, chosen, owner="cli-1", now=rig.pipeline.clock())
    second = retry(rig.tracker, rig.store, chosen, owner="cli-2", now=rig.pipeline.clock())
    assert [s.key for s in first.retried] == [other]
    assert second.retried == [] and [r.key for r in second.refused] == [other]
    assert "being imported now" in second.refused[0].why
    rig.run_until(lambda: state(rig, other) is State.IMPORTED)
    assert [a.outcome for a in rig.tracker.attempts(other)] == [State.FAILED, State.IMPORTED]


def test_a_retry_interrupted_after_admission_is_finished_by_the_worker(rig: Rig) -> None:
    key = rig.receive("b1", study=generate_uid(), series=generate_uid())
    rig.seal("b1")
    rig.datastore.fail_next_jobs(1)
    rig.run_until(lambda: rig.tracker.receipt_status(key).cleanup_action is not None)  # type: ignore[union-attr]
    # A retry that died right after admitting the receipt: no copy, batch open, owner gone.
    rig.tracker.open_batch("retry-dead", "retry/retry-dead/", "dead-cli", 60)
    rig.tracker.mark_importing([key], "retry-dead", retry=True)
    for _ in range(5):
        rig.pipeline.run_once()
    assert rig.tracker.batch_job("retry-dead") is None  # the owner's lease still runs
    rig.offset = 61
    rig.run_until(lambda: state(rig, key) is State.IMPORTED)
    job = rig.tracker.batch_job("retry-dead")
    assert job is not None and job.counts["imported"] == 1
    assert [a.batch_id for a in rig.tracker.attempts(key)] == ["b1", "retry-dead"]


def test_a_retry_that_cannot_open_its_batch_is_refused_and_changes_nothing(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = rig.receive("b1", study=generate_uid(), series=generate_uid())
    rig.seal("b1")
    rig.datastore.fail_next_jobs(1)
    rig.run_until(lambda: rig.final("b1"))
    job = rig.tracker.batch_job("b1")
    assert job is not None and job.job_id is not None
    # Every fresh id the retry tries is that of a batch another process has open already.
    ids = iter(["clash-1", "clash-2", "clash-3", "free"])
    monkeypatch.setattr(retry_module, "new_batch_id", lambda now=None: next(ids))
    for batch_id in ("clash-1", "clash-2", "clash-3"):
        assert rig.tracker.open_batch(f"retry-{batch_id}", "retry/x/", "other-cli", 60)
    before = rig.tracker.attempts(key)
    out = CliRunner().invoke(main, ["retry", job.job_id, "--data-dir", str(rig.store.root)])
    assert out.exit_code == 1, out.output
    assert f"refused  {rig.tracker.receipt_status(key).sop_instance_uid}  " in out.stdout  # type: ignore[union-attr]
    assert NO_BATCH_REASON in out.stdout
    assert "1 receipt(s) of job" in out.stderr and "refused" in out.stderr
    assert "Traceback" not in out.output
    assert rig.tracker.attempts(key) == before and state(rig, key) is State.FAILED
    assert [b.batch_id for b in rig.tracker.open_batches()] == [
        "retry-clash-1",
        "retry-clash-2",
        "retry-clash-3",
    ]
    # Run again: a fresh id is free this time.
    again = CliRunner().invoke(main, ["retry", job.job_id, "--data-dir", str(rig.store.root)])
    assert again.exit_code == 0, again.output
    assert state(rig, key) is State.IMPORTING
    assert rig.tracker.receipt_status(key).job_batch_id == "retry-free"  # type: ignore[union-attr]
