"""The receiver bench's report: where a target asks more than the machine allows, the note
that says so is there, and it is absent when the target is within reach."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import diskflush
import report
from run import ROWS
from servers import ALL_SERVERS


def _sample(row: str, server: str, *, obj_s: float, mb_s: float, cpu_s: float, sender: float):
    return {
        "row": row,
        "server": server,
        "rep": 1,
        "ok": True,
        "files_sent": 2000,
        "obj_s": obj_s,
        "mb_s": mb_s,
        "cpu_s": cpu_s,
        "sender_cpu_s": sender,
        "idle_rss_mb": 70.0,
        "peak_rss_mb": 75.0,
        "rss_growth_mb": 5.0,
    }


def _render(samples: list[dict[str, Any]], bounds: dict[str, float]) -> str:
    ctx = report.Context(
        command="test",
        quick=False,
        repeat=1,
        facts={},
        datasets={},
        flush=diskflush.FlushResult([0.5]),
        commit_bounds=bounds,
        gate_passed=True,
        gate_text="passed",
        show_unverified=False,
        unavailable={},
        elapsed_s=1.0,
    )
    return report.render(ctx, samples, ROWS, ALL_SERVERS)


def _row_b(dcmtk_mb_s: float) -> list[dict[str, Any]]:
    return [
        _sample("b", "dcmtk", obj_s=1, mb_s=dcmtk_mb_s, cpu_s=1, sender=1),
        _sample("b", "store-scp-fsync-on", obj_s=1, mb_s=300, cpu_s=2, sender=1),
    ]


def test_disk_bound_note_when_target_is_above_the_disk() -> None:
    text = _render(_row_b(900), {"b": 600})
    assert "b: the fsync-on target (1x DCMTK = 900 MB/s) is above" in text
    assert "(600 MB/s): the disk, not the code, bounds it" in text


def test_no_disk_bound_note_when_the_disk_allows_the_target() -> None:
    text = _render(_row_b(400), {"b": 600})
    assert "the disk, not the code" not in text
    assert "| b: 0.5 MB, 1 association | store-scp | fsync on (default) | 1.0 | 300 |" in text


def test_sender_note_gives_the_time_left_to_the_server() -> None:
    # DCMTK: 5,000 objects/s with 80 us of CPU per object; the sender needs 100 us per object
    # in store-scp's runs, so 1.5x (133 us per object) leaves the server 33 us.
    samples = [
        _sample("a", "dcmtk", obj_s=5000, mb_s=80, cpu_s=0.16, sender=0.2),
        _sample("a", "store-scp-fsync-off", obj_s=3000, mb_s=50, cpu_s=0.6, sender=0.2),
    ]
    text = _render(samples, {})
    assert "leaves 33 us per object to the server beside storescu's own 100 us" in text
    assert "DCMTK's storescp itself spends 80 us of CPU per object" in text
    assert ">= 1.5x objects/s: MISS" in text  # the note explains, it does not excuse


def test_commit_bound_writes_and_syncs_every_object(tmp_path: Path) -> None:
    bound = diskflush.measure_commit_bound(tmp_path, size=300_000, writers=3, objects=4)
    assert bound.mb_s == pytest.approx(3 * 4 * 300_000 / 1e6 / bound.wall_s)
    placed = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.dcm"))
    assert placed == [f"w{w}/{i}.dcm" for w in range(3) for i in range(4)]
    assert not list(tmp_path.rglob("*.part"))
