"""The receiver's open batch: rollover and age, on a fake clock."""

from __future__ import annotations

import time
from types import SimpleNamespace

import pytest

from store_scp.pipeline import batching
from store_scp.pipeline.batching import BatchAllocator


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    now = [1_700_000_000.0]
    fake = SimpleNamespace(time=lambda: now[0], strftime=time.strftime, gmtime=time.gmtime)
    monkeypatch.setattr(batching, "time", fake)
    return now


def test_a_batch_ages_from_its_first_object_not_from_its_opening(clock: list[float]) -> None:
    """An open batch that waited through an idle hour is as young as its first object: the
    seal policy's max age must not cut the next study in two a second after it starts."""
    alloc = BatchAllocator()
    empty = alloc.current
    clock[0] += 3600
    assert alloc.assign("1.2.3.1", 100) == empty.batch_id
    assert alloc.current.opened_at == clock[0]
    clock[0] += 5
    alloc.assign("1.2.3.2", 100)
    assert alloc.current.opened_at == clock[0] - 5  # later objects do not make it younger
    assert alloc.current.last_object_at == clock[0]


def test_a_second_receipt_of_one_instance_rolls_to_a_new_batch(clock: list[float]) -> None:
    alloc = BatchAllocator()
    first = alloc.assign("1.2.3.1", 100)
    alloc.done(first)
    clock[0] += 1
    second = alloc.assign("1.2.3.1", 100)
    assert second != first
    assert alloc.current.opened_at == clock[0]
    assert alloc.sealable() == [first]


def test_a_batch_never_holds_more_nested_folders_than_a_job_may_import(
    clock: list[float],
) -> None:
    """HealthImaging imports at most 10,000 nested folders per job (here 5): an object whose
    study and series folders would pass the limit opens a new batch."""
    alloc = BatchAllocator(max_folders=5)
    first = alloc.assign("1.1", 10, ("s1", "s1/a"))
    assert alloc.assign("1.2", 10, ("s1", "s1/b")) == first  # one new folder: 3
    assert alloc.assign("1.3", 10, ("s2", "s2/a")) == first  # 5
    assert alloc.assign("1.4", 10, ("s2", "s2/a")) == first  # no new folder
    second = alloc.assign("1.5", 10, ("s1", "s1/c"))  # would be 6
    assert second != first
    assert alloc.current.folders == {"s1", "s1/c"}
    assert alloc.sealable() == []  # the first is still in flight
    for _ in range(4):
        alloc.done(first)
    assert alloc.sealable() == [first]
