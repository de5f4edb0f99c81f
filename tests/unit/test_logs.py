"""JSON log lines, extra fields and the PHI guard."""

from __future__ import annotations

import io
import json
import logging
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom.dataset import Dataset

from store_scp.logs import PHI_FIELDS, REDACTED, log_event, setup_logging


@pytest.fixture(autouse=True)
def restore_root_logger() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
            handler.close()
    root.setLevel(level)


def records(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_json_shape() -> None:
    stream = io.StringIO()
    setup_logging("INFO", stream=stream)
    logging.getLogger("store_scp.test").info("hello %s", "world")
    [rec] = records(stream)
    assert list(rec)[:4] == ["ts", "level", "logger", "msg"]
    assert rec["level"] == "INFO"
    assert rec["logger"] == "store_scp.test"
    assert rec["msg"] == "hello world"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", rec["ts"])
    assert stream.getvalue().count("\n") == 1


def test_level_filtering_and_idempotent_setup() -> None:
    first, second = io.StringIO(), io.StringIO()
    setup_logging("INFO", stream=first)
    setup_logging("WARNING", stream=second)  # replaces the first handler
    log = logging.getLogger("store_scp.test")
    log.info("dropped")
    log.warning("kept")
    assert first.getvalue() == ""
    assert [r["msg"] for r in records(second)] == ["kept"]


def test_extra_fields() -> None:
    stream = io.StringIO()
    setup_logging("DEBUG", stream=stream)
    logging.getLogger("store_scp.server").info(
        "stored",
        extra={
            "assoc_id": "a1",
            "peer": "10.0.0.5:40000",
            "calling_ae": "CT1",
            "sop_instance_uid": "1.2.3.4",
            "status": "0x0000",
            "size": 1234,
            "duration_ms": 1.5,
        },
    )
    [rec] = records(stream)
    assert rec["assoc_id"] == "a1"
    assert rec["peer"] == "10.0.0.5:40000"
    assert rec["calling_ae"] == "CT1"
    assert rec["sop_instance_uid"] == "1.2.3.4"
    assert rec["status"] == "0x0000"
    assert rec["size"] == 1234
    assert rec["duration_ms"] == 1.5
    assert "args" not in rec and "pathname" not in rec


def test_log_event() -> None:
    stream = io.StringIO()
    setup_logging("INFO", stream=stream)
    log = logging.getLogger("store_scp.server")
    log_event(log, "INFO", "association accepted", assoc_id="b2", calling_ae="MR1")
    log_event(log, logging.WARNING, "odd", name="clash", level="clash2", obj=object())
    log_event(log, "DEBUG", "not shown", assoc_id="c3")
    first, second = records(stream)
    assert first["msg"] == "association accepted"
    assert (first["assoc_id"], first["calling_ae"]) == ("b2", "MR1")
    assert second["level"] == "WARNING"
    assert second["field_name"] == "clash"  # a reserved LogRecord name is kept, renamed
    assert second["field_level"] == "clash2"  # a base key is not overwritten
    assert second["obj"].startswith("<object")  # unserialisable values become text


def test_exception_is_logged() -> None:
    stream = io.StringIO()
    setup_logging("INFO", stream=stream)
    try:
        raise RuntimeError("disk full")
    except RuntimeError:
        logging.getLogger("store_scp.store").exception("commit failed")
    [rec] = records(stream)
    assert rec["level"] == "ERROR"
    assert "RuntimeError: disk full" in rec["exc"]


def test_phi_redacted_by_default() -> None:
    stream = io.StringIO()
    setup_logging("INFO", stream=stream)
    log = logging.getLogger("store_scp.store")
    log.warning(
        "value too long",
        extra={
            "patient_name": "DOE^JANE",
            "PatientID": "12345",
            "patient_birth_date": "19700101",
            "sop_instance_uid": "1.2.3",
        },
    )
    log_event(log, "INFO", "stored", PatientName="DOE^JOHN", patient_id="999", size=1)
    text = stream.getvalue()
    for secret in ("DOE^JANE", "12345", "19700101", "DOE^JOHN", "999"):
        assert secret not in text
    first, second = records(stream)
    assert first["patient_name"] == first["PatientID"] == REDACTED
    assert first["patient_birth_date"] == REDACTED
    assert first["sop_instance_uid"] == "1.2.3"
    assert second["PatientName"] == second["patient_id"] == REDACTED
    assert second["size"] == 1


def test_phi_logged_when_enabled() -> None:
    stream = io.StringIO()
    setup_logging("INFO", stream=stream, log_phi=True)
    log_event(
        logging.getLogger("store_scp.store"),
        "INFO",
        "stored",
        patient_name="DOE^JANE",
        PatientBirthDate="19700101",
        PatientID="12345",
    )
    [rec] = records(stream)
    assert rec["patient_name"] == "DOE^JANE"
    assert rec["PatientBirthDate"] == "19700101"
    assert rec["PatientID"] == "12345"


def test_phi_field_names_cover_the_required_ones() -> None:
    required = {
        "patient_name",
        "patient_id",
        "patient_birth_date",
        "PatientName",
        "PatientID",
        "PatientBirthDate",
    }
    assert required <= PHI_FIELDS


def test_unknown_level_rejected() -> None:
    with pytest.raises(ValueError, match="TRACE"):
        setup_logging("TRACE", stream=io.StringIO())


@pytest.mark.filterwarnings("ignore:The value length")  # writing the test file
def test_warnings_are_json_lines_too(tmp_path: Path) -> None:
    """pydicom warns (and logs) about values over their VR's length when the pipeline reads an
    object; the log stream stays JSON lines, each said once."""
    ds = Dataset()
    ds.StudyDescription = "X" * 300  # LO: 64 at most
    path = tmp_path / "long.dcm"
    ds.save_as(path, implicit_vr=False, little_endian=True)
    script = (
        "import sys, warnings, pydicom\n"
        "from store_scp.logs import setup_logging\n"
        "setup_logging('INFO')\n"
        "pydicom.dcmread(sys.argv[1], force=True).StudyDescription\n"
        "warnings.warn('a warning of ours')\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script, str(path)], capture_output=True, text=True, timeout=30
    )
    assert out.returncode == 0, out.stderr
    lines = [json.loads(line) for line in out.stderr.splitlines()]  # every line is JSON
    [pydicom_record] = [r for r in lines if "maximum length of 64" in r["msg"]]
    assert (pydicom_record["logger"], pydicom_record["level"]) == ("pydicom", "WARNING")
    [ours] = [r for r in lines if "a warning of ours" in r["msg"]]
    assert ours["logger"] == "py.warnings"
