"""Durability order of the embedded datastore's import jobs, proven from the system calls.

Frames are written without fsync and made durable once per job. The order that keeps this safe
against a power loss: every frame file, its folder and the frames folder are fsynced before the
database is first written with a reference to that frame (the image set version and frame
index rows that name it), and before the job's outputs and its COMPLETED status. A process runs
two import jobs under `strace -f` and `strace_order`'s parser replays the log; the same run with
fsync off must break the order (the check can fail).
"""

from __future__ import annotations

import json
import posixpath
import random
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from pydicom.uid import generate_uid

from store_scp.datastore.local import LocalDatastore
from store_scp.storage.local import LocalObjectStore
from tests.dicomfactory import secondary_capture
from tests.integration.strace_order import (
    STRACE_SYSCALLS,
    Call,
    _effect_line,
    _Model,
    _Open,
    decode_string,
    parse_calls,
    split_args,
)

ROLE = "arn:aws:iam::123456789012:role/store-scp-import"

# job "a": more single-frame files than the frames handed to the flusher at a time (64);
# job "b", run at the same time: multi-frame files.
JOBS = {"a": (70, 1), "b": (6, 4)}

_RUN_JOBS = """
import json, sys, time
from pathlib import Path
from store_scp.datastore.local import LocalDatastore
from store_scp.storage.local import LocalObjectStore

root, fsync = Path(sys.argv[1]), sys.argv[2] == "true"
store = LocalObjectStore(root / "store", fsync=fsync)
ds = LocalDatastore(root / "datastore", poll_interval=0.02, fsync=fsync, job_threads=2)
ids = {
    b: ds.start_import_job(job_name=b, client_token=b, input_uri=store.uri(b + "/"),
                           output_uri=store.uri("outputs/"), role_arn=sys.argv[3])
    for b in sys.argv[4:]
}
deadline = time.monotonic() + 120
while any(ds.get_import_job(j).status.value not in ("COMPLETED", "FAILED") for j in ids.values()):
    assert time.monotonic() < deadline, "jobs did not end"
    time.sleep(0.02)
ds.close()
print(json.dumps(ids))
"""


def put_inputs(store: LocalObjectStore) -> None:
    rng = random.Random(7)
    for batch, (count, frames) in JOBS.items():
        study, series = generate_uid(), generate_uid()
        for i in range(count):
            ds = secondary_capture(rng, 1024)
            ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
            ds.PatientID = f"ORDER-{batch}"
            if frames > 1:
                ds.NumberOfFrames = frames
                ds.PixelData = rng.randbytes(ds.Rows * ds.Columns * frames)
            staging = store.staging_dir / f"{batch}-{i}.part"
            ds.save_as(staging, enforce_file_format=True)
            store.commit(staging, f"{batch}/{i:03d}.dcm")


# -- the analysis -----------------------------------------------------------------------------


class _DataModel(_Model):
    """`strace_order`'s replay, also keeping the bytes written to the database files."""

    def __init__(self, db_prefix: str, problems: list[str]) -> None:
        super().__init__(None, problems)
        self.db_prefix = db_prefix
        self.db_writes: list[tuple[bytes, Call]] = []

    def _keep_db_bytes(self, call: Call) -> None:
        written = self._written(call)
        target = written[1] if written is not None else None
        if isinstance(target, _Open) and target.path.startswith(self.db_prefix):
            self.db_writes.append((decode_string(split_args(call.args)[1])[0], call))

    def _on_pwrite64(self, call: Call) -> None:
        written = self._written(call)
        if written is not None and isinstance(written[1], _Open):
            self.file_writes.append((written[1].path, call))
        self._keep_db_bytes(call)

    def _on_write(self, call: Call) -> None:
        super()._on_write(call)
        self._keep_db_bytes(call)


def replay(trace: Path, datastore_root: Path, problems: list[str]) -> _DataModel:
    with open(trace, encoding="utf-8", errors="surrogateescape") as f:
        calls = parse_calls(f, problems)
    model = _DataModel(str(datastore_root / "datastore.sqlite3"), problems)
    # In the order their effects became visible: a close frees its descriptor on entry, and
    # another thread may open a folder under that number before the close is logged as done.
    for call in sorted(calls, key=_effect_line):
        model.apply(call)
    return model


def _before(a: Call, b: Call) -> bool:
    return a.end < b.start and a.end_ts <= b.start_ts


@dataclass
class FrameOrder:
    violations: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    frames: dict[str, Call] = field(default_factory=dict)  # frame id -> the fsync that made it
    durable_at: dict[str, int] = field(default_factory=dict)  # frame id -> log line: all synced
    model: _DataModel | None = None


def check_frame_order(trace: Path, datastore_root: Path) -> FrameOrder:
    """Every frame file created in the log: written, fsynced after its last write, its folder
    and the frames folder fsynced after its creation, all before the first database write that
    names it."""
    out = FrameOrder()
    out.model = replay(trace, datastore_root, out.problems)
    model = out.model
    frames_dir = str(datastore_root / "frames")
    created = [o for o in model.opens if o.created and o.path.startswith(frames_dir + "/")]
    if not created:
        out.violations.append("no frame file created in the trace")
    for opened in created:
        frame_id = posixpath.basename(opened.path)
        folder = posixpath.dirname(opened.path)
        writes = [c for p, c in model.file_writes if p == opened.path]
        refs = [c for data, c in model.db_writes if frame_id.encode() in data]
        if not writes or not refs:
            out.violations.append(f"{frame_id}: never written or never referenced")
            continue
        ref = refs[0]
        last_write = max(c.end for c in writes)
        steps = {
            "the file": [f.call for f in model.flushes if f.path == opened.path],
            "its folder": [f.call for f in model.flushes if f.path == folder],
            "the frames folder": [f.call for f in model.flushes if f.path == frames_dir],
        }
        after = {"the file": last_write, "its folder": opened.call.end}
        made = [c for p, c in model.mkdirs if p == folder and c.end < ref.start]
        after["the frames folder"] = made[-1].end if made else opened.call.end
        synced = 0
        for what, flushes in steps.items():
            good = [c for c in flushes if c.start > after[what] and _before(c, ref)]
            if not good:
                out.violations.append(
                    f"{frame_id}: no fsync of {what} between its creation and its first "
                    f"reference in the database ({ref.where()})"
                )
                continue
            synced = max(synced, good[0].end)
            if what == "the file":
                out.frames[frame_id] = good[0]
        out.durable_at[frame_id] = synced
    return out


# -- the run ----------------------------------------------------------------------------------


@dataclass
class Run:
    root: Path
    trace: Path
    job_ids: dict[str, str]


def run_jobs_traced(tmp_path: Path, *, fsync: bool) -> Run:
    strace = shutil.which("strace")
    if strace is None:
        pytest.fail("strace is not installed: apt-get install strace (scripts/test.sh does)")
    root = tmp_path / "run"
    put_inputs(LocalObjectStore(root / "store", fsync=False))
    trace = tmp_path / "strace.txt"
    syscalls = (*STRACE_SYSCALLS, "pwrite64")
    cmd = [strace, "-f", "-tt", "-s", "65536", "-e", "trace=" + ",".join(syscalls)]
    cmd += ["-o", str(trace), sys.executable, "-c", _RUN_JOBS, str(root), str(fsync).lower()]
    proc = subprocess.run([*cmd, ROLE, *JOBS], capture_output=True, text=True, timeout=300)
    if proc.returncode != 0 and "ptrace" in proc.stderr:
        pytest.skip(f"strace cannot trace in this environment: {proc.stderr.strip()}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return Run(root, trace, json.loads(proc.stdout.strip().splitlines()[-1]))


def job_frames(run: Run) -> dict[str, set[str]]:
    """Per job: the frame ids of the image set versions its success lines name."""
    store = LocalObjectStore(run.root / "store", fsync=False)
    datastore = LocalDatastore(run.root / "datastore", run_jobs=False, fsync=False)
    try:
        out: dict[str, set[str]] = {}
        for batch, job_id in run.job_ids.items():
            job = datastore.get_import_job(job_id)
            assert job.status.value == "COMPLETED", job.message
            prefix = f"outputs/{datastore.datastore_id}-DicomImport-{job_id}/"
            with store.open(prefix + "SUCCESS/success.ndjson") as f:
                lines = [json.loads(x) for x in f.read().splitlines()]
            assert len(lines) == JOBS[batch][0]
            ids: set[str] = set()
            for line in lines:
                resp = line["importResponse"]
                meta = datastore.image_set_metadata(resp["imageSetId"], resp["imageSetVersion"])
                for series in meta["Study"]["Series"].values():
                    for inst in series["Instances"].values():
                        ids.update(frame["ID"] for frame in inst["ImageFrames"])
            out[job_id] = ids
        return out
    finally:
        datastore.close()


def test_frames_are_durable_before_anything_references_them(tmp_path: Path) -> None:
    run = run_jobs_traced(tmp_path, fsync=True)
    order = check_frame_order(run.trace, run.root / "datastore")
    assert order.violations == []
    assert order.problems == []
    assert len(order.frames) == sum(count * frames for count, frames in JOBS.values())
    # Batched: fsyncs of frame files ran on the flusher's threads, not one by one on a job's.
    assert len({c.tid for c in order.frames.values()}) > 2

    model = order.model
    assert model is not None
    for job_id, frame_ids in job_frames(run).items():
        assert frame_ids and frame_ids <= set(order.frames)
        synced = max(order.durable_at[i] for i in frame_ids)
        # The job's outputs are committed (renamed into place) after all of its frames are
        # durable, and its COMPLETED status is written after them.
        outputs = [r for r in model.renames if f"-DicomImport-{job_id}/" in r.dst]
        assert len(outputs) == 3
        assert all(r.call.start > synced for r in outputs)
        name = next(b for b, j in run.job_ids.items() if j == job_id).encode()
        row = job_id.encode() + name + name + b"COMPLETED"  # job_id, job_name, token, status
        completed = [c for data, c in model.db_writes if row in data]
        assert completed and completed[0].start > max(r.call.end for r in outputs)


def test_without_fsync_the_analysis_finds_the_frames_not_durable(tmp_path: Path) -> None:
    run = run_jobs_traced(tmp_path, fsync=False)
    order = check_frame_order(run.trace, run.root / "datastore")
    total = sum(count * frames for count, frames in JOBS.values())
    missing = [v for v in order.violations if "no fsync of the file" in v]
    assert len(missing) == total
    assert order.frames == {}
