"""The bench's Python floor (bench/floorscp.py) is only a yardstick if it really stores what it
is sent: every object DCMTK's storescu sends lands as a file holding the data set bytes exactly,
with and without fsync, across write-back and read-buffer boundaries."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from tests.serverproc import DCMTK, free_port

FLOOR = Path(__file__).resolve().parents[2] / "bench" / "floorscp.py"


def _make(folder: Path, side: int) -> Path:
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"  # Secondary Capture
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "OT"
    ds.Rows = ds.Columns = side
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.PixelRepresentation = 0
    ds.PixelData = os.urandom(2 * side * side)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    path = folder / f"{ds.SOPInstanceUID}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


def _dataset_bytes(path: Path) -> bytes:
    """The bytes after the file meta: preamble, DICM, then (0002,0000) UL gives its length."""
    raw = path.read_bytes()
    (group_length,) = struct.unpack_from("<L", raw, 132 + 8)
    return raw[132 + 12 + group_length :]


@pytest.mark.parametrize("fsync", [False, True], ids=["fsync-off", "fsync-on"])
def test_floor_stores_every_data_set_byte_for_byte(tmp_path: Path, fsync: bool) -> None:
    source = tmp_path / "in"
    source.mkdir()
    # 16 x 16 to 1,400 x 1,400 pixels: 0.5 KB to 3.9 MB, past the first early write-back
    # (256 KB) and the 256 KB read buffer, in PDUs of up to 1 MB.
    files = [_make(source, side) for side in (16, 100, 400, 1400, 30)]
    out = tmp_path / "out"
    port = free_port()
    cmd = [sys.executable, str(FLOOR), "--port", str(port), "--out-dir", str(out)]
    server = subprocess.Popen([*cmd, "--fsync"] if fsync else cmd)
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
