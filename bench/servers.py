"""The servers under test: how to start each one, when it is ready, how to count what it stored.

Each server is a `ServerSpec`; store-scp is just another entry. Servers run in their own
session (process group) so that forked children are stopped with them.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

DCMTK_BIN = Path(os.environ.get("BENCH_DCMTK_BIN", "/usr/bin"))
STORESCU = DCMTK_BIN / "storescu"
STORESCP = DCMTK_BIN / "storescp"
ECHOSCU = DCMTK_BIN / "echoscu"

CALLING_AE = "BENCH"
HOST = "127.0.0.1"


@dataclass(frozen=True)
class Launch:
    """How one run starts its server."""

    port: int
    out_dir: Path
    parallel: bool  # row d: fork / several processes
    nodelay: bool  # DCMTK's TCP_NODELAY environment variable for the server


@dataclass(frozen=True)
class ServerSpec:
    key: str  # stable id in the JSON: dcmtk, pynetdicom, store-scp-fsync-off, store-scp-fsync-on
    name: str  # column text
    durability: str  # what a success response means on disk
    called_ae: str
    command: Callable[[Launch], tuple[list[str], dict[str, str]]]
    count: Callable[[Path], int]
    family: str = ""  # servers sharing a family share the availability probe
    fsync: bool = False
    notes: list[str] = field(default_factory=list)
    rows: frozenset[str] | None = None  # the rows it runs in; None: all


def base_env(nodelay: bool) -> dict[str, str]:
    """The environment for DCMTK tools: TCP_NODELAY=1 or no TCP_NODELAY at all."""
    env = {k: v for k, v in os.environ.items() if k != "TCP_NODELAY"}
    if nodelay:
        env["TCP_NODELAY"] = "1"
    return env


def count_files(root: Path) -> int:
    return sum(len(files) for _, _, files in os.walk(root))


def count_dcm_files(root: Path) -> int:
    return sum(1 for _, _, files in os.walk(root) for f in files if f.endswith(".dcm"))


def count_store_scp_objects(data_dir: Path) -> int:
    n = 0
    for _dirpath, dirnames, files in os.walk(data_dir / "objects"):
        dirnames[:] = [d for d in dirnames if d != ".staging"]
        n += sum(1 for f in files if f.endswith(".dcm"))
    return n


def _dcmtk_command(launch: Launch) -> tuple[list[str], dict[str, str]]:
    cmd = [str(STORESCP), "+B", "-pdu", "131072", "--output-directory", str(launch.out_dir)]
    if launch.parallel:
        cmd.append("--fork")
    cmd.append(str(launch.port))
    return cmd, base_env(launch.nodelay)


def _pynetdicom_command(launch: Launch) -> tuple[list[str], dict[str, str]]:
    cmd = [sys.executable, "-m", "pynetdicom", "storescp", "-ba", HOST, "-pdu", "131072"]
    cmd += ["-od", str(launch.out_dir), str(launch.port)]
    return cmd, dict(os.environ)


def store_scp_executable() -> list[str]:
    """`store-scp` from PATH, else next to this interpreter, else its entry point via -c."""
    override = os.environ.get("BENCH_STORE_SCP_CMD")
    if override:
        return shlex.split(override)
    found = shutil.which("store-scp")
    if found:
        return [found]
    beside = Path(sysconfig.get_path("scripts")) / "store-scp"
    if beside.exists():
        return [str(beside)]
    return [sys.executable, "-c", "import sys; from store_scp.cli import main; sys.exit(main())"]


def _store_scp_command(fsync: bool) -> Callable[[Launch], tuple[list[str], dict[str, str]]]:
    def command(launch: Launch) -> tuple[list[str], dict[str, str]]:
        cmd = [*store_scp_executable(), "serve", "--port", str(launch.port)]
        cmd += ["--bind", HOST, "--data-dir", str(launch.out_dir)]
        cmd += ["--http-port", "-1", "--ae-title", "STORE_SCP"]
        if launch.parallel:
            cmd += ["--processes", "2"]
        env = dict(os.environ)
        env.pop("STORE_SCP_FSYNC", None)
        if not fsync:
            env["STORE_SCP_FSYNC"] = "false"
        # The receiver is what is compared with the other SCPs: the import pipeline (which
        # would import every object into the embedded datastore meanwhile) stays off.
        env["STORE_SCP_PIPELINE"] = "off"
        return cmd, env

    return command


def _floor_command(
    fsync: bool, sha256: str | None = None
) -> Callable[[Launch], tuple[list[str], dict[str, str]]]:
    def command(launch: Launch) -> tuple[list[str], dict[str, str]]:
        cmd = [sys.executable, str(Path(__file__).with_name("floorscp.py"))]
        cmd += ["--port", str(launch.port), "--bind", HOST, "--out-dir", str(launch.out_dir)]
        if fsync:
            cmd.append("--fsync")
        if sha256:
            cmd += ["--sha256", sha256]
        return cmd, dict(os.environ)

    return command


DCMTK = ServerSpec(
    key="dcmtk",
    name="DCMTK storescp",
    durability="no fsync",
    called_ae="STORESCP",
    command=_dcmtk_command,
    count=count_files,
    family="dcmtk",
)
PYNETDICOM = ServerSpec(
    key="pynetdicom",
    name="pynetdicom storescp",
    durability="no fsync",
    called_ae="STORESCP",
    command=_pynetdicom_command,
    count=count_files,
    family="pynetdicom",
)
STORE_SCP_OFF = ServerSpec(
    key="store-scp-fsync-off",
    name="store-scp",
    durability="fsync off (STORE_SCP_FSYNC=false)",
    called_ae="STORE_SCP",
    command=_store_scp_command(fsync=False),
    count=count_store_scp_objects,
    family="store-scp",
)
STORE_SCP_ON = ServerSpec(
    key="store-scp-fsync-on",
    name="store-scp",
    durability="fsync on (default)",
    called_ae="STORE_SCP",
    command=_store_scp_command(fsync=True),
    count=count_store_scp_objects,
    family="store-scp",
    fsync=True,
)


def _floor(fsync: bool, rows: str, sha256: str | None = None) -> ServerSpec:
    mode = "on" if fsync else "off"
    return ServerSpec(
        key=f"floor-sha256-{sha256}-fsync-{mode}" if sha256 else f"floor-fsync-{mode}",
        name=(
            f"Python floor + SHA-256 {'inline' if sha256 == 'inline' else 'in a process'}"
            if sha256
            else "Python floor (floorscp.py)"
        ),
        durability="fsync on, as store-scp commits" if fsync else "no fsync",
        called_ae="STORE_SCP",
        command=_floor_command(fsync=fsync, sha256=sha256),
        count=count_dcm_files,
        family="floor",
        rows=frozenset(rows),
    )


# The Python floor (floorscp.py) runs where a target is missed and no other measurement shows
# the machine bounds it: rows a and b with fsync off, row c with fsync on. Its figures are a
# yardstick, not a claim of store-scp's, so the durability-order gate does not apply to them.
FLOOR_OFF = _floor(fsync=False, rows="ab")
FLOOR_ON = _floor(fsync=True, rows="c")
# The floor that also computes the SHA-256 store-scp must compute, in the rows where the bytes
# are many: both ways of hashing run, and the better one is the yardstick.
FLOOR_SHA = [
    _floor(fsync=fsync, rows="c" if fsync else "b", sha256=how)
    for fsync in (False, True)
    for how in ("inline", "process")
]
ALL_SERVERS = [DCMTK, PYNETDICOM, STORE_SCP_OFF, STORE_SCP_ON, FLOOR_OFF, FLOOR_ON, *FLOOR_SHA]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def echo_ok(port: int, called_ae: str, timeout: float = 5.0) -> bool:
    cmd = [str(ECHOSCU), "-q", "-to", "5", "-aet", CALLING_AE, "-aec", called_ae, HOST, str(port)]
    try:
        res = subprocess.run(
            cmd, env=base_env(True), capture_output=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired:
        return False
    return res.returncode == 0


class ServerProcess:
    """A running server: started in its own process group, logs to a file."""

    def __init__(self, spec: ServerSpec, launch: Launch, log_path: Path) -> None:
        self.spec = spec
        self.launch = launch
        self.log_path = log_path
        cmd, env = spec.command(launch)
        self.cmd = cmd
        launch.out_dir.mkdir(parents=True, exist_ok=True)
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        try:
            self.proc = subprocess.Popen(
                cmd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        except OSError:
            self._log.close()
            raise

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait_ready(self, timeout: float = 10.0) -> str | None:
        """None when the server accepts TCP and answers a C-ECHO, else why not."""
        deadline = time.monotonic() + timeout
        tcp = False
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return f"exited with code {self.proc.returncode}: {self.last_log_line()}"
            if not tcp:
                try:
                    with socket.create_connection((HOST, self.launch.port), timeout=0.5):
                        tcp = True
                except OSError:
                    time.sleep(0.05)
                    continue
            if echo_ok(
                self.launch.port, self.spec.called_ae, max(0.5, deadline - time.monotonic())
            ):
                return None
            time.sleep(0.1)
        if not tcp:
            return f"did not accept TCP on port {self.launch.port} within {timeout:.0f} s"
        return f"accepted TCP but no successful C-ECHO within {timeout:.0f} s"

    def last_log_line(self) -> str:
        self._log.flush()
        try:
            lines = self.log_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return lines[-1][:300] if lines else "(no output)"

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        # Forked children may outlive their parent in the group: end them too.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self._log.close()
