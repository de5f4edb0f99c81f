"""CPU time and resident memory of a server's process tree, read from /proc (Linux).

A sampler thread walks the tree under the server's pid every 50 ms and records the summed
VmRSS (peak kept) and the CPU time of every process it has seen. CPU seconds of the tree are
the larger of two estimates, so forked children are counted whether or not the server reaps
them with wait():

- live processes' utime + stime, plus cutime + cstime (children already reaped by wait());
- the last utime + stime sampled for every process ever seen in the tree (children that exit
  unreaped, or are reaped without wait(), lose at most their last 50 ms).

psutil is used to enumerate children when installed; otherwise /proc is walked.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass

try:  # optional
    import psutil
except ImportError:  # pragma: no cover - depends on the machine
    psutil = None

CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class ProcStat:
    pid: int
    ppid: int
    state: str
    own_ticks: int  # utime + stime
    child_ticks: int  # cutime + cstime


def read_stat(pid: int) -> ProcStat | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    # The command name (field 2) may hold spaces or parentheses: split after the last ')'.
    fields = data[data.rindex(b")") + 2 :].split()
    return ProcStat(
        pid=pid,
        ppid=int(fields[1]),
        state=fields[0].decode(),
        own_ticks=int(fields[11]) + int(fields[12]),
        child_ticks=int(fields[13]) + int(fields[14]),
    )


def read_rss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0  # gone, or a zombie (no VmRSS line)


class _TreeWalker:
    """Finds the descendants of a root pid; remembers each pid's parent between walks."""

    def __init__(self, root: int) -> None:
        self.root = root
        self._parent: dict[int, int] = {}

    def pids(self) -> list[int]:
        if psutil is not None:
            try:
                proc = psutil.Process(self.root)
                return [self.root, *(c.pid for c in proc.children(recursive=True))]
            except psutil.Error:
                return []
        live = {int(name) for name in os.listdir("/proc") if name.isdigit()}
        for pid in list(self._parent):
            if pid not in live:
                del self._parent[pid]
        for pid in live - self._parent.keys():
            st = read_stat(pid)
            if st is not None:
                self._parent[pid] = st.ppid
        children: dict[int, list[int]] = {}
        for pid, ppid in self._parent.items():
            children.setdefault(ppid, []).append(pid)
        if self.root not in live:
            return []
        out, todo = [], [self.root]
        while todo:
            pid = todo.pop()
            out.append(pid)
            todo.extend(children.get(pid, ()))
        return out


class TreeMonitor:
    """Samples a process tree's RSS and CPU time; call `start()` / `stop()` around a run."""

    def __init__(self, root_pid: int, interval: float = 0.05) -> None:
        self.root = root_pid
        self.interval = interval
        self._walker = _TreeWalker(root_pid)
        self._seen_ticks: dict[int, int] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.peak_rss_kib = 0
        self.samples = 0

    def _sample(self) -> tuple[int, int, list[ProcStat]]:
        """One walk: returns (tree RSS KiB, CPU ticks estimate, stats of live processes)."""
        stats: list[ProcStat] = []
        rss = 0
        for pid in self._walker.pids():
            st = read_stat(pid)
            if st is None:
                continue
            stats.append(st)
            rss += read_rss_kib(pid)
        with self._lock:
            for st in stats:
                if st.own_ticks > self._seen_ticks.get(st.pid, 0):
                    self._seen_ticks[st.pid] = st.own_ticks
            seen = sum(self._seen_ticks.values())
            live = sum(st.own_ticks + st.child_ticks for st in stats)
            self.peak_rss_kib = max(self.peak_rss_kib, rss)
            self.samples += 1
        return rss, max(seen, live), stats

    def rss_kib(self) -> int:
        return self._sample()[0]

    def cpu_seconds(self) -> float:
        return self._sample()[1] / CLK_TCK

    def live_pids(self) -> set[int]:
        return {st.pid for st in self._sample()[2] if st.state != "Z"}

    def reset_peak(self) -> None:
        with self._lock:
            self.peak_rss_kib = 0

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="treemon", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self._sample()

    def settle(self, baseline: set[int], timeout: float = 3.0) -> None:
        """Wait until every process forked during the run has exited (or timeout)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not (self.live_pids() - baseline):
                return
            time.sleep(0.05)
