"""The bench's Python floor (bench/floorscp.py) is only a yardstick if it really stores what it
is sent: every object DCMTK's storescu sends lands as a file holding the data set bytes exactly,
with and without fsync, across write-back and read-buffer boundaries, and with either way of
hashing (a hashing process that fails ends the floor, and the send fails)."""

from __future__ import annotations

import os
import random
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.dicomfactory import secondary_capture
from tests.serverproc import DCMTK, free_port

FLOOR = Path(__file__).resolve().parents[2] / "bench" / "floorscp.py"


def _make(folder: Path, rng: random.Random, size: int) -> Path:
    ds = secondary_capture(rng, size)
    path = folder / f"{ds.SOPInstanceUID}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


def _dataset_bytes(path: Path) -> bytes:
    """The bytes after the file meta: preamble, DICM, then (0002,0000) UL gives its length."""
    raw = path.read_bytes()
    (group_length,) = struct.unpack_from("<L", raw, 132 + 8)
    return raw[132 + 12 + group_length :]


@pytest.mark.parametrize(
    ("fsync", "sha256"),
    [(False, None), (True, None), (False, "inline"), (True, "process")],
    ids=["fsync-off", "fsync-on", "sha256-inline", "fsync-on-sha256-process"],
)
def test_floor_stores_every_data_set_byte_for_byte(
    tmp_path: Path, fsync: bool, sha256: str | None
) -> None:
    source = tmp_path / "in"
    source.mkdir()
    # 0.5 KB to 3.9 MB: past the first early write-back (256 KB) and the 256 KB read buffer,
    # in PDUs of up to 1 MB.
    rng = random.Random(7)
    files = [_make(source, rng, size) for size in (512, 20_000, 320_000, 3_900_000, 1_800)]
    out = tmp_path / "out"
    port = free_port()
    cmd = [sys.executable, str(FLOOR), "--port", str(port), "--out-dir", str(out)]
    if fsync:
        cmd.append("--fsync")
    if sha256:
        cmd += ["--sha256", sha256]
    server = subprocess.Popen(cmd)
    env = {**os.environ, "TCP_NODELAY": "1"}
    try:
        for _ in range(100):
            echo = [str(DCMTK / "echoscu"), "-aec", "STORE_SCP", "127.0.0.1", str(port)]
            if subprocess.run(echo, capture_output=True, env=env).returncode == 0:
                break
            time.sleep(0.05)
        else:
            pytest.fail("floorscp.py did not answer C-ECHO")
        send = [str(DCMTK / "storescu"), "-aec", "STORE_SCP", "+sd", "127.0.0.1", str(port)]
        res = subprocess.run([*send, str(source)], capture_output=True, text=True, env=env)
        assert res.returncode == 0, res.stderr
    finally:
        server.terminate()
        server.wait(10)
    stored = sorted(out.glob("*.dcm"))
    assert not list(out.glob("*.part"))
    assert len(stored) == len(files)
    assert sorted(p.read_bytes() for p in stored) == sorted(_dataset_bytes(f) for f in files)
