"""A real S3 (and DynamoDB, ...) HTTP endpoint for integration tests: moto in server mode.

Use from a test module::

    from tests.integration.moto_server import aws_env, moto_endpoint  # noqa: F401

`moto_endpoint` (session scope) starts moto's server on a free loopback port, through
`moto_serial.py`, which runs one request at a time (as atomic as DynamoDB's writes). It waits
until the server answers, yields its URL and stops it at the end. `aws_env` (function scope)
sets fake credentials and a region in the environment for the duration of one test, so boto3
never reads a real profile.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

START_TIMEOUT_S = 30.0
_SERIAL = Path(__file__).with_name("moto_serial.py")

FAKE_AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_SECURITY_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_REGION": "us-east-1",
}


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/moto-api/", timeout=1.0) as resp:
            return bool(resp.status < 500)
    except urllib.error.HTTPError as exc:
        return exc.code < 500
    except OSError:
        return False


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def start_moto_server(log_path: Path) -> tuple[subprocess.Popen[bytes], str]:
    """Start moto's server on a free port; return the process and its URL once it answers."""
    last_error = "not started"
    for _attempt in range(3):  # the free port may be taken between probe and bind
        port = _free_port()
        url = f"http://127.0.0.1:{port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        env.update(FAKE_AWS_ENV)
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(
                [sys.executable, str(_SERIAL), "127.0.0.1", str(port)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
            )
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                last_error = f"moto server exited with status {proc.returncode}"
                break
            if _answers(url):
                return proc, url
            time.sleep(0.1)
        else:
            last_error = f"moto server did not answer within {START_TIMEOUT_S:.0f} s"
        _stop(proc)
    tail = log_path.read_text(errors="replace")[-2000:] if log_path.exists() else ""
    raise RuntimeError(f"{last_error}; log tail:\n{tail}")


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """URL of a moto server running for the whole test session."""
    with tempfile.TemporaryDirectory(prefix="moto-server-") as tmp:
        proc, url = start_moto_server(Path(tmp) / "moto.log")
        try:
            yield url
        finally:
            _stop(proc)


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[str, str]:
    """Fake AWS credentials and region in the environment, and no real profile or config."""
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    for name, value in FAKE_AWS_ENV.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    return dict(FAKE_AWS_ENV)
