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
