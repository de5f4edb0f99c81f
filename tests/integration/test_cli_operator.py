"""What an operator sees: after a wrong input, one line that names the problem, the exit
status the help documents, never a traceback; and what they came for in the answers."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from store_scp.cli import main
from store_scp.tracking.base import JobStatus, Receipt
from store_scp.tracking.sqlite import SqliteTracker
from tests.serverproc import free_port

# Loopback, ports chosen by the OS, no probe or datastore API: nothing here may start.
SERVE = ["serve", "--bind", "127.0.0.1", "--port", "0", "--http-port", "-1"]


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("STORE_SCP_", "AWS_"))}
    full_env.update({"STORE_SCP_DATASTORE_API_PORT": "-1", **(env or {})})
    return subprocess.run(
        [sys.executable, "-m", "store_scp.cli", *args],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=30,
    )


def one_line_error(out: subprocess.CompletedProcess[str], code: int) -> str:
    assert out.returncode == code, out.stderr
    assert "Traceback" not in out.stderr
    [line] = [line for line in out.stderr.splitlines() if not line.startswith("{")]
    return line


@pytest.mark.parametrize("command", [SERVE, ["worker"]])
def test_a_data_folder_that_cannot_be_made(tmp_path: Path, command: list[str]) -> None:
    (tmp_path / "a-file").write_text("")
    out = run(*command, "--data-dir", str(tmp_path / "a-file" / "data"))
    line = one_line_error(out, 1)
    assert line.startswith("store-scp: cannot start: ") and "a-file" in line


@pytest.mark.parametrize("processes", ["1", "2"])
def test_a_port_in_use(tmp_path: Path, processes: str) -> None:
    """Receivers that cannot start are not restarted for ever: serve stops, exit status 1."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        out = run(*SERVE, "--port", port, "--processes", processes, "--data-dir", str(tmp_path))
    assert out.returncode == 1, out.stderr
    assert "Traceback" not in out.stderr
    [why] = {line for line in out.stderr.splitlines() if "cannot start: " in line}
    assert "address already in use" in why and f"'127.0.0.1', {port}" in why


@pytest.mark.parametrize("command", [SERVE, ["worker"], ["where", "1.2.3"], ["jobs"]])
def test_a_damaged_tracker_database(tmp_path: Path, command: list[str]) -> None:
    (tmp_path / "tracker.sqlite3").write_bytes(b"not a database, whatever it was" * 100)
    out = run(*command, "--data-dir", str(tmp_path))
    line = one_line_error(out, 1)
    assert f"tracker database {tmp_path / 'tracker.sqlite3'}: file is not a database" in line


@pytest.mark.parametrize("command", ["jobs", "worker", "create-tables"])
def test_no_aws_credentials(tmp_path: Path, command: str) -> None:
    """The AWS SDK's own words, on one line: what an AWS engineer looks for."""
    nowhere = str(tmp_path / "none")
    aws = {"AWS_CONFIG_FILE": nowhere, "AWS_SHARED_CREDENTIALS_FILE": nowhere}
    aws["AWS_EC2_METADATA_DISABLED"] = "true"
    tracker = {
        "STORE_SCP_TRACKER": "dynamodb",
        "STORE_SCP_DYNAMODB_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}",
        "STORE_SCP_DYNAMODB_REGION": "us-east-1",
        "STORE_SCP_DATA_DIR": str(tmp_path),
    }
    out = run(command, env=aws | tracker)
    assert "Unable to locate credentials" in one_line_error(out, 1)


@pytest.mark.parametrize(
    ("command", "code"),
    [(["where", "1.2.3"], 1), (["jobs"], 0), (["failures"], 0), (["retry", "1.2.3"], 1)],
)
def test_the_read_commands_take_the_servers_toml_file(
    tmp_path: Path, command: list[str], code: int
) -> None:
    """`serve --config FILE` keeps its data where FILE says; the commands that read it take
    the same FILE."""
    data_dir = tmp_path / "somewhere-else"
    SqliteTracker(data_dir / "tracker.sqlite3").close()
    config = tmp_path / "store-scp.toml"
    config.write_text(f"data_dir = {json.dumps(str(data_dir))}\n")
    out = run(*command, "--json", "--config", str(config))
    assert out.returncode == code, out.stderr
    assert "no tracker database" not in out.stderr and "Traceback" not in out.stderr


def test_jobs_says_why_a_job_failed(tmp_path: Path) -> None:
    tracker = SqliteTracker(tmp_path / "tracker.sqlite3")
    for batch_id, status, message in [
        ("b-ok", JobStatus.COMPLETED, ""),
        ("b-bad", JobStatus.FAILED, "import job failed: the role cannot read the input"),
    ]:
        tracker.open_batch(batch_id, f"{batch_id}/", "receiver", 60)
        tracker.seal_batch(batch_id, "receiver")
        tracker.record_job_start(batch_id, f"token-{batch_id}", f"name-{batch_id}")
        tracker.set_job_id(batch_id, f"job-{batch_id}")
        tracker.update_job(batch_id, status=status, message=message)
    tracker.close()
    # The status as the operator types it, in either case.
    out = CliRunner().invoke(main, ["jobs", "--status", "failed", "--data-dir", str(tmp_path)])
    assert out.exit_code == 0, out.output
    [line] = out.stdout.splitlines()
    assert line.split()[:3] == ["b-bad", "FAILED", "job-b-bad"]
    assert line.endswith("  import job failed: the role cannot read the input")


def test_the_worker_says_what_it_runs_on_and_when_it_stops(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STORE_SCP_")}
    log = tmp_path / "worker.log"
    with log.open("w") as stderr:
        worker = subprocess.Popen(
            [sys.executable, "-m", "store_scp.cli", "worker", "--data-dir", str(tmp_path)],
            stderr=stderr,
            env=env,
        )
    try:
        deadline = time.monotonic() + 20
        while "worker running" not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(30) == 0
    records = [json.loads(line) for line in log.read_text().splitlines()]
    [running] = [r for r in records if r["msg"] == "worker running"]
    assert running["data_dir"] == str(tmp_path.absolute())
    assert (running["object_store"], running["tracker"], running["datastore"]) == (
        "local",
        "sqlite",
        "local",
    )
    assert records[-1]["msg"] == "worker stopped"


def test_where_takes_a_pasted_uid_and_says_what_a_uid_looks_like(tmp_path: Path) -> None:
    sop, series, study = "1.2.826.0.1.3", "1.2.826.0.1.2", "1.2.826.0.1.1"
    tracker = SqliteTracker(tmp_path / "tracker.sqlite3")
    key = f"b1/{study}/{series}/{sop}.dcm"
    tracker.record_receipt(
        Receipt(
            key=key,
            batch_id="b1",
            sop_instance_uid=sop,
            sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
            study_instance_uid=study,
            series_instance_uid=series,
            transfer_syntax_uid="1.2.840.10008.1.2.1",
            size=1,
            sha256="0" * 64,
            calling_ae="CT1",
            peer="",
            received_at=1.0,
        )
    )
    tracker.seal_batch("b1", "receiver")
    tracker.record_job_start("b1", "token-b1", "name-b1")
    tracker.set_job_id("b1", "job-1")
    tracker.mark_importing([key], "b1")
    assert tracker.mark_imported(key, "b1", "image-set-1", True)
    tracker.close()
    data_dir = ["--data-dir", str(tmp_path)]
    out = CliRunner().invoke(main, ["where", f" {series}\t", *data_dir])
    assert out.exit_code == 0, out.output
    # The help promises state, image set and job.
    assert out.stdout.split() == [sop, "IMPORTED", "image-set-1", "job", "job-1"]
    out = CliRunner().invoke(main, ["where", "CT-2024-0001", *data_dir])
    assert out.exit_code == 1
    assert out.stdout == "CT-2024-0001: not received (a UID is digits and dots)\n"


def test_retry_json_answers_an_unknown_target_too(tmp_path: Path) -> None:
    """A script reads the same document whatever the target was."""
    SqliteTracker(tmp_path / "tracker.sqlite3").close()
    out = CliRunner().invoke(main, ["retry", "deadbeef" * 4, "--json", "--data-dir", str(tmp_path)])
    assert out.exit_code == 1
    doc = json.loads(out.stdout)
    assert (doc["target"], doc["batch_id"], doc["retried"], doc["refused"]) == (
        "deadbeef" * 4,
        None,
        [],
        [],
    )
    assert "no such job, and nothing received with this UID" in out.stderr
