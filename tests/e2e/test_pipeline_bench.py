"""The pipeline bench (bench/pipeline.py) in its quick mode, so that it keeps working: 2,000
instances in 20 associations through `store-scp serve` on its defaults, all IMPORTED."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "pipeline.py"


@pytest.mark.slow
def test_pipeline_bench_quick(tmp_path: Path) -> None:
    out = tmp_path / "result.json"
    work = tmp_path / "work"
    res = subprocess.run(
        [
            sys.executable,
            str(BENCH),
            "--quick",
            "--json",
            "--work-dir",
            str(work),
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    doc = json.loads(res.stdout)
    assert doc == json.loads(out.read_text())
    assert doc["ok"] is True and doc["errors"] == []
    assert doc["instances"] == 2000 and doc["associations"] == 20
    assert doc["states"] == {"RECEIVED": 0, "IMPORTING": 0, "IMPORTED": 2000, "FAILED": 0}
    assert all(a["exit_code"] == 0 for a in doc["association_runs"])
    assert len(doc["studies"]) == 20 and doc["api_checked_studies"] == 20
    assert doc["image_sets"] == 40  # two series per study
    fig = doc["figures"]
    assert fig["jobs"] >= 1 and fig["jobs_per_1000"] == fig["jobs"] / 2
    assert 0 < fig["tta_p50_s"] <= fig["tta_p95_s"] <= fig["tta_max_s"]
    assert fig["pipeline_per_s"] > 0 and fig["receive_per_s"] > 0
    # The table is what the command prints without --json; it is saved beside the JSON.
    assert "| import jobs |" in out.with_suffix(".md").read_text()
