"""The per-job limits bound what one batch (one import job's prefix) holds."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from pydicom.uid import generate_uid

from tests.e2e.test_pipeline_embedded import make_series
from tests.serverproc import start_server, storescu


def test_files_and_folders_per_job_limit_each_batch(tmp_path: Path) -> None:
    srv = start_server(
        tmp_path / "srv",
        env={"STORE_SCP_MAX_FILES_PER_JOB": "3", "STORE_SCP_MAX_FOLDERS_PER_JOB": "3"},
    )
    try:
        one = make_series(tmp_path / "one", generate_uid(), "P1", 5)  # one study, one series
        two = [  # three studies of one object: two folders each
            p for i in range(3) for p in make_series(tmp_path / f"s{i}", generate_uid(), "P2", 1)
        ]
        for files in (one, two):
            storescu(srv.port, files)
        batches = Counter(p.relative_to(srv.objects_dir).parts[0] for p in srv.stored_files())
        folders: dict[str, set[str]] = {}
        for p in srv.stored_files():
            batch, study, series, _ = p.relative_to(srv.objects_dir).parts
            folders.setdefault(batch, set()).update({study, f"{study}/{series}"})
    finally:
        srv.stop()
    assert sum(batches.values()) == 8
    assert max(batches.values()) <= 3  # files per job
    assert max(len(f) for f in folders.values()) <= 3  # nested folders per job
    # Files alone would make 3, 3, 2; folders (2 per new study) split further: 3, 2, 1, 1, 1.
    assert sorted(batches.values(), reverse=True) == [3, 2, 1, 1, 1]
