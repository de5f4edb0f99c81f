"""Early writeback: when it is due, and where the next one falls (the receiver, the bench's
commit probe and its Python floor all go through `writeback_due`)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from store_scp.server.store import (
    WRITEBACK_EVERY,
    WRITEBACK_FIRST,
    start_writeback,
    writeback_due,
)


@pytest.mark.skipif(start_writeback is None, reason="no sync_file_range(2) here")
def test_writeback_falls_at_doubling_distances_up_to_the_cap(tmp_path: Path) -> None:
    fd = os.open(tmp_path / "f", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        os.write(fd, bytes(WRITEBACK_FIRST))
        # Not reached yet: unchanged.
        assert writeback_due(fd, WRITEBACK_FIRST - 1, WRITEBACK_FIRST) == WRITEBACK_FIRST
        # Reached: started, and the next one is as far again.
        assert writeback_due(fd, WRITEBACK_FIRST, WRITEBACK_FIRST) == 2 * WRITEBACK_FIRST
        # Far into a large object: never more than WRITEBACK_EVERY apart.
        big = 10 * WRITEBACK_EVERY
        assert writeback_due(fd, big, big) == big + WRITEBACK_EVERY
        # -1: writeback off (fsync off), whatever was written.
        assert writeback_due(fd, big, -1) == -1
    finally:
        os.close(fd)
