"""The receiver bench's report: where a target asks more than the machine allows, the note
that says so is there, and it is absent when the target is within reach."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import cpubound
import diskflush
import report
import run
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


def _render(
    samples: list[dict[str, Any]],
    bounds: dict[str, float],
    cpu: cpubound.CpuFacts | None = None,
    datasets: dict[str, tuple[str, int, int]] | None = None,
) -> str:
    ctx = report.Context(
        command="test",
        quick=False,
        repeat=1,
        facts={},
        datasets=datasets or {},
        flush=diskflush.FlushResult([0.5]),
        commit_bounds=bounds,
        gate_passed=True,
        gate_text="passed",
        show_unverified=False,
        unavailable={},
        elapsed_s=1.0,
        cpu=cpu,
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


# --- CPU bounds ------------------------------------------------------------------------------

MEDIUM = {"medium": ("ct512k-2000", 2000, 1_000_000_000)}


def test_cpu_bound_arithmetic() -> None:
    # 1 GB: 1.0 s sender + 0.5 s receiver + 0.5 s SHA-256 = 2 CPU-s on 2 cores -> 1 s.
    assert cpubound.cpu_bound_mb_s(10**9, 2, 1.0, 0.5, 2e9) == pytest.approx(1000)
    assert cpubound.cpu_bound_mb_s(10**9, 4, 1.0, 0.5, 2e9) == pytest.approx(2000)


def _row_d(dcmtk_mb_s: float, dcmtk_cpu: float, sender: float) -> list[dict[str, Any]]:
    return [
        _sample("d", "dcmtk", obj_s=1, mb_s=dcmtk_mb_s, cpu_s=dcmtk_cpu, sender=sender),
        _sample("d", "store-scp-fsync-on", obj_s=1, mb_s=400, cpu_s=3, sender=1),
        _sample("d", "store-scp-fsync-off", obj_s=1, mb_s=500, cpu_s=3, sender=1),
    ]


def test_cpu_bound_note_when_the_cores_cannot_reach_the_target() -> None:
    cpu = cpubound.CpuFacts(cores=2, sha256_bytes_per_s=2e9, store_floor_us=13.0)
    text = _render(_row_d(1200, 0.5, 1.0), {}, cpu, MEDIUM)  # bound: 1,000 MB/s
    assert (
        "d: the fsync-off target (1x DCMTK = 1,200 MB/s) and the fsync-on target "
        "(1x DCMTK = 1,200 MB/s) are above what 2 cores allow" in text
    )
    assert "(2.00 GB/s here: 0.50 s), beside the sender's 1.00 s, reaches at most 1,000" in text
    assert "the CPU, not the code, bounds it" in text


def test_no_cpu_bound_note_within_reach_or_without_the_measurement() -> None:
    cpu = cpubound.CpuFacts(cores=2, sha256_bytes_per_s=2e9, store_floor_us=13.0)
    assert "the CPU, not the code" not in _render(_row_d(900, 0.5, 1.0), {}, cpu, MEDIUM)
    assert "the CPU, not the code" not in _render(_row_d(1200, 0.5, 1.0), {}, None, MEDIUM)


def test_row_b_cpu_bound_note_only_above_the_bound() -> None:
    # 1 GB: DCMTK's 1 s + the sender's 1 s + 0.5 s of SHA-256 = 2.5 CPU-s on 2 cores: 800 MB/s.
    cpu = cpubound.CpuFacts(cores=2, sha256_bytes_per_s=2e9, store_floor_us=13.0)
    text = _render(_row_b(900), {}, cpu, MEDIUM)
    assert "b: the fsync-on target (1x DCMTK = 900 MB/s) is above what 2 cores allow" in text
    assert "(1.00 s of CPU)" in text and "reaches at most 800 MB/s" in text
    assert "the CPU, not the code" not in _render(_row_b(800), {}, cpu, MEDIUM)  # at the bound


def test_row_c_names_only_the_target_above_the_bound() -> None:
    cpu = cpubound.CpuFacts(cores=2, sha256_bytes_per_s=2e9, store_floor_us=13.0)
    samples = [
        _sample("c", "dcmtk", obj_s=1, mb_s=1100, cpu_s=0.5, sender=1.0),
        _sample("c", "store-scp-fsync-on", obj_s=1, mb_s=600, cpu_s=2, sender=1),
        _sample("c", "store-scp-fsync-off", obj_s=1, mb_s=700, cpu_s=2, sender=1),
    ]
    text = _render(samples, {}, cpu, {"large": ("mr50m-20", 20, 1_000_000_000)})
    # 1.0x = 1,100 is above the 1,000 MB/s bound; 0.8x = 880 is not.
    assert "c: the fsync-off target (1x DCMTK = 1,100 MB/s) is above what 2 cores allow" in text
    assert "fsync-on target (0.8x" not in text


@pytest.mark.parametrize(("floor", "bound"), [(40.0, True), (13.0, False)])
def test_store_floor_in_the_row_a_note(floor: float, bound: bool) -> None:
    samples = [
        _sample("a", "dcmtk", obj_s=5000, mb_s=80, cpu_s=0.16, sender=0.2),
        _sample("a", "store-scp-fsync-off", obj_s=3000, mb_s=50, cpu_s=0.6, sender=0.2),
    ]
    cpu = cpubound.CpuFacts(cores=2, sha256_bytes_per_s=2e9, store_floor_us=floor)
    text = _render(samples, {}, cpu)
    assert f"(recv, write, rename, send) take {floor:.1f} us here" in text
    assert ("more than the 33 us left: the machine, not the code, bounds it" in text) == bound
    assert ("which leaves 20.3 us for waking up and parsing" in text) == (not bound)


def test_store_floor_probe_stores_every_object(tmp_path: Path) -> None:
    us = cpubound.measure_store_floor(tmp_path, objects=50, samples=1)
    assert 0 < us < 100_000
    assert len(list(tmp_path.glob("*.dcm"))) == 50 and not list(tmp_path.glob("*.part"))


def test_sha256_probe_is_positive() -> None:
    assert cpubound.measure_sha256(total=4 << 20, runs=1) > 0


def _saved(tmp_path: Path, cpu: dict[str, Any] | None) -> Path:
    """A results file as run.py writes it, with or without the CPU facts."""
    doc: dict[str, Any] = {
        "command": "test",
        "quick": False,
        "repeat": 1,
        "environment": {},
        "datasets": {"medium": {"name": "ct512k-2000", "files": 2000, "bytes": 10**9}},
        "disk_flush_ms": {"samples": [0.5]},
        "commit_bounds": {},
        "durability_gate": {"passed": True, "verdict": "passed"},
        "unavailable": {},
        "samples": _row_d(1200, 0.5, 1.0),
        "elapsed_s": 1.0,
    }
    if cpu is not None:
        doc["cpu"] = cpu
    path = tmp_path / "bench.json"
    path.write_text(json.dumps(doc))
    return path


def test_results_saved_before_the_cpu_probes_render_without_cpu_notes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run.render_saved(_saved(tmp_path, None), show_unverified=False) == 0
    text = capsys.readouterr().out
    assert "| d: 2,000 x 0.5 MB" in text
    assert "- CPU:" not in text and "the CPU, not the code" not in text


def test_saved_cpu_probes_render_their_line_and_notes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cpu = {"cores": 2, "sha256_bytes_per_s": 2e9, "store_floor_us": 13.0}
    assert run.render_saved(_saved(tmp_path, cpu), show_unverified=False) == 0
    text = capsys.readouterr().out
    assert "2.00 GB/s on one core; store floor of a 16 KB object" in text
    assert "reaches at most 1,000 MB/s: the CPU, not the code, bounds it" in text


# --- the Python floor ------------------------------------------------------------------------


def test_python_floor_runs_only_in_rows_a_b_and_c() -> None:
    keys = {rk: [s.key for s in run.servers_for_row(rk, ALL_SERVERS)] for rk in ROWS}
    for rk in "ab":
        assert "floor-fsync-off" in keys[rk] and "floor-fsync-on" not in keys[rk]
    assert "floor-fsync-on" in keys["c"] and "floor-fsync-off" not in keys["c"]
    for rk in "def":
        assert not [k for k in keys[rk] if k.startswith("floor")]
    assert "store-scp-fsync-off" not in keys["f"] and "store-scp-fsync-on" in keys["f"]
    # The floor with SHA-256, both ways: where the bytes are many, in the mode of the miss.
    sha = {rk: sorted(k for k in keys[rk] if k.startswith("floor-sha256")) for rk in ROWS}
    assert sha["b"] == ["floor-sha256-inline-fsync-off", "floor-sha256-process-fsync-off"]
    assert sha["c"] == ["floor-sha256-inline-fsync-on", "floor-sha256-process-fsync-on"]
    assert not any(sha[rk] for rk in "adef")


def _row_a_with_floor(floor_obj_s: float, ok: bool = True) -> list[dict[str, Any]]:
    floor = _sample("a", "floor-fsync-off", obj_s=floor_obj_s, mb_s=1, cpu_s=0.1, sender=0.2)
    floor.update(ok=ok, error="" if ok else "server died")
    return [
        _sample("a", "dcmtk", obj_s=4000, mb_s=64, cpu_s=0.16, sender=0.2),
        _sample("a", "store-scp-fsync-off", obj_s=2500, mb_s=40, cpu_s=0.6, sender=0.2),
        floor,
    ]


def test_floor_note_when_even_the_python_floor_misses_the_target() -> None:
    text = _render(_row_a_with_floor(3000), {})
    assert (
        "a: the fsync-off target (1.5x DCMTK = 6,000 objects/s) is above what Python does on "
        "this machine" in text
    )
    assert "commits it (rename) and answers" in text
    assert "reached 3,000 objects/s (0.75x DCMTK) in this run" in text
    # Its own table row carries the ratio and no target.
    assert "| a: 16 KB, 1 association | Python floor (floorscp.py) | no fsync | 3,000 |" in text
    assert "| 0.75x |  |" in text


def test_no_floor_note_when_the_floor_reaches_the_target_or_failed() -> None:
    assert "above what Python does" not in _render(_row_a_with_floor(6500), {})
    assert "above what Python does" not in _render(_row_a_with_floor(3000, ok=False), {})


def test_floor_note_for_row_c_names_the_durable_commit() -> None:
    samples = [
        _sample("c", "dcmtk", obj_s=30, mb_s=1500, cpu_s=0.4, sender=0.4),
        _sample("c", "store-scp-fsync-on", obj_s=17, mb_s=850, cpu_s=1.5, sender=0.4),
        _sample("c", "floor-fsync-on", obj_s=20, mb_s=1100, cpu_s=0.6, sender=0.4),
    ]
    text = _render(samples, {})
    assert "c: the fsync-on target (0.8x DCMTK = 1,200 MB/s) is above what Python does" in text
    assert "commits it (fsync, rename, fsync of the folder)" in text
    samples[2]["mb_s"] = 1250
    assert "above what Python does" not in _render(samples, {})


def _row_b_with_hashing_floors(plain: float, inline: float, process: float) -> list[dict]:
    return [
        _sample("b", "dcmtk", obj_s=1500, mb_s=800, cpu_s=0.7, sender=0.6),
        _sample("b", "store-scp-fsync-off", obj_s=1000, mb_s=520, cpu_s=2.3, sender=0.6),
        _sample("b", "floor-fsync-off", obj_s=1600, mb_s=plain, cpu_s=0.8, sender=0.6),
        _sample("b", "floor-sha256-inline-fsync-off", obj_s=1, mb_s=inline, cpu_s=1.5, sender=0.6),
        _sample(
            "b", "floor-sha256-process-fsync-off", obj_s=1, mb_s=process, cpu_s=1.6, sender=0.6
        ),
    ]


def test_floor_with_sha256_note_uses_the_better_way_of_hashing() -> None:
    text = _render(_row_b_with_hashing_floors(850, 560, 590), {})
    assert (
        "b: the fsync-off target (1x DCMTK = 800 MB/s) is above what Python does on this "
        "machine while computing the SHA-256 of every data set" in text
    )
    assert "reached 850 MB/s (1.06x) without hashing but at best 590 MB/s (0.74x DCMTK)" in text
    assert "hashing in a second process (the better of its two ways)" in text
    assert "| Python floor + SHA-256 inline | no fsync |" in text
    assert "| Python floor + SHA-256 in a process | no fsync |" in text
    text = _render(_row_b_with_hashing_floors(850, 610, 590), {})
    assert "at best 610 MB/s (0.76x DCMTK) with it, hashing on its receiving thread" in text


def test_no_sha256_floor_note_when_one_way_reaches_the_target_or_the_plain_floor_misses() -> None:
    assert "while computing the SHA-256" not in _render(
        _row_b_with_hashing_floors(850, 560, 810), {}
    )
    text = _render(_row_b_with_hashing_floors(700, 560, 590), {})
    assert "no hashing and no tracking, reached 700 MB/s (0.88x DCMTK)" in text
    assert "while computing the SHA-256" not in text
    failed = _row_b_with_hashing_floors(850, 560, 590)
    failed[3].update(ok=False, error="server died")
    failed[4].update(ok=False, error="server died")
    assert "while computing the SHA-256" not in _render(failed, {})
