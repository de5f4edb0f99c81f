"""The Tracker port: one row per receipt of a SOP instance, and its fate.

A receipt is one received copy of a SOP instance (UID + digest + time). Receiving the same
SOP Instance UID twice makes two receipts; none is overwritten.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol


class State(StrEnum):
    RECEIVED = "RECEIVED"
    IMPORTING = "IMPORTING"
    IMPORTED = "IMPORTED"
    FAILED = "FAILED"


@dataclass(frozen=True, slots=True)
class Receipt:
    key: str  # object key in the ObjectStore; unique per receipt
    batch_id: str
    sop_instance_uid: str
    sop_class_uid: str
    study_instance_uid: str
    series_instance_uid: str
    transfer_syntax_uid: str
    size: int  # bytes of the stored Part 10 file
    sha256: str  # hex digest of the dataset bytes as received
    calling_ae: str
    peer: str  # "ip:port", or "" when unknown (reconciled objects)
    received_at: float  # unix time


class Tracker(Protocol):
    """Adapters: tracking.sqlite.SqliteTracker (embedded), tracking.dynamodb (AWS)."""

    def record_receipt(self, receipt: Receipt) -> bool:
        """Insert a RECEIVED row. Idempotent by key: returns False if the key was known."""
        ...

    def record_receipts(self, receipts: Sequence[Receipt]) -> int:
        """record_receipt for many at once (one transaction where the store has them);
        returns how many keys were new."""
        ...

    def known_keys(self, keys: Iterable[str]) -> set[str]:
        """The subset of `keys` that already has a row."""
        ...

    def receipts_for_instance(self, sop_instance_uid: str) -> list[Receipt]:
        """Every receipt of one SOP instance, oldest first."""
        ...

    def close(self) -> None: ...
