"""Fail points: inert unless armed, a real kill -9 at the armed hit, each placed exactly once."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import timeit
from pathlib import Path

import pytest

from store_scp import failpoints

SRC = Path(failpoints.__file__).resolve().parent


def run(spec: str, hits: int) -> subprocess.CompletedProcess[str]:
    """A process that reaches `worker.admitted` then `receive.committed`, `hits` times."""
    code = (
        "from store_scp import failpoints\n"
        f"for i in range({hits}):\n"
        "    print('reaching', i + 1, flush=True)\n"
        "    failpoints.hit('worker.admitted')\n"
        "    failpoints.hit('receive.committed')\n"
        "print('survived', flush=True)\n"
    )
    env = {**os.environ, failpoints.ENV: spec}
    return subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=30
    )


def test_an_armed_point_kills_the_process_at_its_count() -> None:
    out = run("receive.committed:3", hits=5)
    assert out.returncode == -9
    assert out.stdout.split("\n")[:-1] == ["reaching 1", "reaching 2", "reaching 3"]
    assert out.stderr == "failpoint receive.committed: kill -9\n"


def test_points_not_armed_or_not_yet_due_do_nothing() -> None:
    out = run("receive.answered,receive.committed:9", hits=3)
    assert (out.returncode, out.stdout.splitlines()[-1], out.stderr) == (0, "survived", "")


def test_an_unknown_point_is_refused_at_start() -> None:
    out = run("receive.comitted", hits=1)
    assert out.returncode == 1
    assert "unknown fail point 'receive.comitted'" in out.stderr


@pytest.mark.parametrize(
    ("spec", "armed"),
    [
        ("", {}),
        ("worker.admitted", {"worker.admitted": 1}),
        (" worker.admitted:2 , receive.sealed ", {"worker.admitted": 2, "receive.sealed": 1}),
    ],
)
def test_parse(spec: str, armed: dict[str, int]) -> None:
    assert failpoints.parse(spec) == armed


@pytest.mark.parametrize("spec", ["nope", "worker.admitted:0", "worker.admitted:x"])
def test_parse_refuses(spec: str) -> None:
    with pytest.raises(ValueError):
        failpoints.parse(spec)


def test_each_point_is_placed_exactly_once_in_the_code() -> None:
    calls = re.compile(r"failpoints\.hit\(\s*\"([^\"]+)\"\s*\)")
    placed = [
        name
        for path in SRC.rglob("*.py")
        if path.name != "failpoints.py"
        for name in calls.findall(path.read_text())
    ]
    assert sorted(placed) == sorted(failpoints.POINTS)


def test_an_unarmed_point_costs_nanoseconds() -> None:
    assert failpoints.ENV not in os.environ
    number = 200_000
    best = min(timeit.repeat(lambda: failpoints.hit("receive.committed"), number=number, repeat=5))
    empty = min(timeit.repeat(lambda: None, number=number, repeat=5))
    per_call_ns = (best - empty) / number * 1e9
    print(f"unarmed fail point: {per_call_ns:.0f} ns a call")
    assert per_call_ns < 500  # tens of nanoseconds; the bound leaves room for a loaded machine
