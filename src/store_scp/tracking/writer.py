"""Receipts are written to the tracker by one background thread, many per transaction.

The C-STORE-RSP never waits for the tracker: the committed object is the record, and the
start-up reconciler registers any object whose row was lost (crash, tracker error). Batching
keeps the tracker's cost per object small under load.
"""

from __future__ import annotations

import logging
import queue
import threading
import time

from .base import Receipt, Tracker

log = logging.getLogger("store_scp.tracking")

_MAX_BATCH = 500
_STOP = None
#: Pause between batches. The thread would otherwise wake for every receipt and take the GIL
#: from the event loop each time; a short pause turns a stream of receipts into few batches.
BATCH_INTERVAL = 0.05


class ReceiptWriter:
    def __init__(self, tracker: Tracker) -> None:
        self.tracker = tracker
        self._queue: queue.SimpleQueue[Receipt | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="receipt-writer", daemon=True)
        self._thread.start()

    def submit(self, receipt: Receipt) -> None:
        self._queue.put(receipt)

    def close(self, timeout: float = 30) -> None:
        """Write what is queued, then stop."""
        self._queue.put(_STOP)
        self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            batch: list[Receipt] = []
            stop = first is _STOP
            if first is not None:
                batch.append(first)
            while not stop and len(batch) < _MAX_BATCH:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is _STOP:
                    stop = True
                else:
                    batch.append(item)
            if batch:
                try:
                    self.tracker.record_receipts(batch)
                except Exception:
                    # Not lost: the objects are committed; the reconciler registers them.
                    log.exception(
                        "tracker write failed", extra={"receipts": len(batch), "key": batch[0].key}
                    )
            if stop:
                return
            time.sleep(BATCH_INTERVAL)
