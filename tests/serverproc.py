"""Run `store-scp serve` as a real subprocess for integration tests."""

from __future__ import annotations

import ast
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

DCMTK = Path("/usr/bin")  # pynetdicom installs look-alike console scripts: call DCMTK by path


def wait_for(predicate: Callable[[], object], what: str, timeout: float = 10.0) -> None:
    """Poll `predicate` until it is true; fail naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class ServerProcess:
    data_dir: Path
    proc: subprocess.Popen[bytes]
    ports: dict[str, int]
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)

    @property
    def port(self) -> int:
        return self.ports["plain"]

    @property
    def objects_dir(self) -> Path:
        return self.data_dir / "objects"

    def stored_files(self) -> list[Path]:
        return sorted(p for p in self.objects_dir.rglob("*.dcm") if ".staging" not in p.parts)

    def staging_files(self) -> list[Path]:
        """Staging files (`*.part`) of every process, live or dead."""
        staging = self.objects_dir / ".staging"
        return sorted(staging.rglob("*.part")) if staging.exists() else []

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def kill9(self) -> None:
        self.stop(signal.SIGKILL)


def start_server(
    data_dir: Path,
    *,
    env: dict[str, str] | None = None,
    args: list[str] | None = None,
    timeout: float = 15,
) -> ServerProcess:
    """Start `store-scp serve` on free loopback ports and wait until it listens."""
    data_dir.mkdir(parents=True, exist_ok=True)
    ready = data_dir / "ready.txt"
    ready.unlink(missing_ok=True)
    log_path = data_dir / "server.log"
    full_env = dict(os.environ)
    full_env.update(
        {
            "STORE_SCP_BIND": "127.0.0.1",
            "STORE_SCP_PORT": str(free_port()),
            "STORE_SCP_HTTP_BIND": "127.0.0.1",
            "STORE_SCP_HTTP_PORT": "-1",
            "STORE_SCP_DATASTORE_API_PORT": "0",
            # Receiver tests run without the import pipeline; tests of the pipeline turn it on.
            "STORE_SCP_PIPELINE": "off",
            "STORE_SCP_DATA_DIR": str(data_dir),
            "STORE_SCP_SHUTDOWN_GRACE": "5",
        }
    )
    full_env.update(env or {})
    cmd = [sys.executable, "-m", "store_scp.cli", "serve", "--ready-file", str(ready)]
    cmd += args or []
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(cmd, env=full_env, stdout=log, stderr=log)
    deadline = time.monotonic() + timeout
    while not ready.exists():
        if proc.poll() is not None:
            raise RuntimeError(f"store-scp exited {proc.returncode}:\n{log_path.read_text()}")
        if time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"store-scp did not start:\n{log_path.read_text()}")
        time.sleep(0.02)
    ports = ast.literal_eval(ready.read_text())
    return ServerProcess(data_dir, proc, ports, log_path, full_env)


def run_cli(
    env: dict[str, str], *args: str, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """`store-scp ARGS` in a subprocess with `env` added to this one's environment."""
    return subprocess.run(
        [sys.executable, "-m", "store_scp.cli", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=timeout,
    )


def storescu(port: int, files: Iterable[Path | str], timeout: float = 60) -> None:
    """Send `files` with DCMTK storescu over one association; every one must succeed."""
    subprocess.run(
        [str(DCMTK / "storescu"), "-aec", "STORE_SCP", "127.0.0.1", str(port), *map(str, files)],
        check=True,
        capture_output=True,
        timeout=timeout,
    )
