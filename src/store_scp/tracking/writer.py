"""Tracker writes of the receiver, made by one background thread, many per transaction.

The C-STORE-RSP never waits for the tracker: the committed object is the record, and the
start-up reconciler registers any object whose row was lost (crash, tracker error). Batching
keeps the tracker's cost per object small under load. Other tracker calls of the receiver
(opening and sealing its batches) go through the same queue, so they happen in order with the
receipts: a batch is sealed only after every receipt committed into it was written.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable

from .base import Receipt, Tracker

log = logging.getLogger("store_scp.tracking")

_MAX_BATCH = 500
_STOP = None
#: Pause between batches. The thread would otherwise wake for every receipt and take the GIL
#: from the event loop each time; a short pause turns a stream of receipts into few batches.
BATCH_INTERVAL = 0.05

Call = Callable[[Tracker], object]


class ReceiptWriter:
    def __init__(self, tracker: Tracker) -> None:
        self.tracker = tracker
        self._queue: queue.SimpleQueue[Receipt | Call | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="receipt-writer", daemon=True)
        self._thread.start()

    def submit(self, receipt: Receipt) -> None:
        self._queue.put(receipt)

    def submit_call(self, call: Call) -> None:
        """Run `call(tracker)` after every receipt submitted before it."""
        self._queue.put(call)

    def close(self, timeout: float = 30) -> None:
        """Write what is queued, then stop."""
        self._queue.put(_STOP)
        self._thread.join(timeout)

    def _write(self, batch: list[Receipt]) -> None:
        if not batch:
            return
        try:
            self.tracker.record_receipts(batch)
        except Exception:
            # Not lost: the objects are committed; the reconciler registers them.
            log.exception(
                "tracker write failed", extra={"receipts": len(batch), "key": batch[0].key}
            )
        batch.clear()

    def _call(self, call: Call) -> None:
        try:
            call(self.tracker)
        except Exception:
            log.exception("tracker call failed")

    def _run(self) -> None:
        batch: list[Receipt] = []
        while True:
            item = self._queue.get()
            while True:
                if item is _STOP:
                    self._write(batch)
                    return
                if isinstance(item, Receipt):
                    batch.append(item)
                else:
                    self._write(batch)
                    self._call(item)
                if len(batch) >= _MAX_BATCH:
                    self._write(batch)
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
            self._write(batch)
            time.sleep(BATCH_INTERVAL)
