"""Job outputs read back and mapped to receipts, on HealthImaging's documented examples."""

import json
import shutil
from pathlib import Path

import pytest

from store_scp.pipeline.results import OutputNotReady, read_job_output
from store_scp.storage.local import LocalObjectStore

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "healthimaging"
OUT = "out/ds-DicomImport-job/"


def test_missing_manifest_is_not_ready(tmp_path: Path) -> None:
    store = LocalObjectStore(tmp_path)
    with pytest.raises(OutputNotReady):
        read_job_output(store, OUT, "b1/", {})


def write(store: LocalObjectStore, key: str, text: str) -> None:
    path = store.objects_dir / key
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_documented_examples_map_to_receipts(tmp_path: Path) -> None:
    store = LocalObjectStore(tmp_path)
    shutil.copy(FIXTURES / "job-output-manifest.json", tmp_path / "m.json")
    write(store, OUT + "job-output-manifest.json", (tmp_path / "m.json").read_text())
    # The documented lines, with their inputFile moved under our batch layout.
    success = [json.loads(x) for x in (FIXTURES / "success.ndjson").read_text().splitlines()]
    failure = [json.loads(x) for x in (FIXTURES / "failure.ndjson").read_text().splitlines()]
    keys = []
    for i, line in enumerate(success):
        key = f"b1/1.2/1.3/{i}.dcm"
        keys.append(key)
        line["inputFile"] = "landing/prefix/" + key
    success[-1]["importResponse"]["isPrimary"] = False
    for i, line in enumerate(failure):
        key = f"b1/1.2/1.3/f{i}.dcm"
        keys.append(key)
        line["inputFile"] = key
    unknown = dict(success[0], inputFile="other-batch/x.dcm")
    write(store, OUT + "SUCCESS/success.ndjson", "\n".join(map(json.dumps, [*success, unknown])))
    write(store, OUT + "FAILURE/failure.ndjson", "\n".join(map(json.dumps, failure)) + "\n")

    out = read_job_output(store, OUT, "b1/", {key: key for key in keys})
    assert out.summary["numberOfScannedFiles"] == 5
    assert [i.key for i in out.imported] == keys[: len(success)]
    assert out.imported[0].image_set_id == success[0]["importResponse"]["imageSetId"]
    assert out.imported[0].is_primary is True
    assert out.imported[-1].is_primary is False  # a conflict to reconcile, not a failure
    assert [f.key for f in out.failed] == keys[len(success) :]
    assert out.failed[0].reason == (
        "ValidationException: DICOM attribute TransferSyntaxUID does not exist"
    )
    assert out.unmatched == ["other-batch/x.dcm"]


def test_a_batch_id_must_start_a_path_component(tmp_path: Path) -> None:
    store = LocalObjectStore(tmp_path)
    write(store, OUT + "job-output-manifest.json", '{"jobSummary": {}}')
    line = {"inputFile": "xb1/1.dcm", "importResponse": {"imageSetId": "i", "isPrimary": True}}
    write(store, OUT + "SUCCESS/success.ndjson", json.dumps(line))
    out = read_job_output(store, OUT, "b1/", {"b1/1.dcm": "b1/1.dcm"})
    assert out.imported == [] and out.unmatched == ["xb1/1.dcm"]


def test_a_retry_batch_maps_its_copies_to_their_receipts(tmp_path: Path) -> None:
    store = LocalObjectStore(tmp_path)
    write(store, OUT + "job-output-manifest.json", '{"jobSummary": {}}')
    copy = "retry/r1/b1/1.2/1.3/1.dcm"
    lines = [
        {"inputFile": f"landing/{copy}", "importResponse": {"imageSetId": "i", "isPrimary": True}},
        # The receipt's own key is not what this job imported.
        {"inputFile": "b1/1.2/1.3/1.dcm", "importResponse": {"imageSetId": "i"}},
    ]
    write(store, OUT + "SUCCESS/success.ndjson", "\n".join(map(json.dumps, lines)))
    out = read_job_output(store, OUT, "retry/r1/", {copy: "b1/1.2/1.3/1.dcm"})
    assert [(i.key, i.image_set_id) for i in out.imported] == [("b1/1.2/1.3/1.dcm", "i")]
    assert out.unmatched == ["b1/1.2/1.3/1.dcm"]
