"""Prove from an strace log that every C-STORE success was durable before it was sent.

Run the receiver under (or attach to it with) the command of :func:`strace_command`, let it
receive, stop it, then call :func:`check_durability_order` on the log. For every C-STORE-RSP with
a success or warning status that the receiver wrote to an accepted socket, the log must show, in
this order:

1. the last write into the object's staging file (the file that is renamed to the object key);
2. an fsync (or fdatasync) of a descriptor opened on that staging path, started after (1) and
   finished before the rename started;
3. the rename of the staging file to ``.../<SOP Instance UID>.dcm``;
4. an fsync of a descriptor opened on the destination folder, started after the rename finished;
5. for every folder of the key that the trace shows being created: an fsync of its parent,
   started after the mkdir finished;
6. the first byte of the C-STORE-RSP written to the socket, after (2), (4) and (5) finished.

"Before" means: by position in the merged ``strace -f`` log, and also by timestamp. strace
handles one ptrace stop at a time and writes the log in that order; a thread stopped at the exit
of a syscall runs on only after strace logged that exit, so whatever another thread does because
the syscall returned (the receiver's loop thread writing the response once the commit thread is
done) is logged after it. A syscall interrupted by another thread's line is split into
``name(... <unfinished ...>`` (its entry) and ``<... name resumed> ...`` (its completion); each
call keeps both positions, and an ordering is only accepted when the completion of the earlier
step precedes the *entry* of the later one.

Attach before the association starts: a socket accepted before strace attached is unknown, so
its responses are not found and the check fails (it never passes on missing evidence).

The C-STORE-RSP is found by content, not by guessing: the bytes written to a socket descriptor
returned by accept/accept4 are reassembled into PDUs; in each P-DATA-TF (type 0x04) the command
fragments are joined and decoded (implicit VR little endian), and a command whose Command Field
is 0x8001 names the SOP Instance UID it answers. ``-s 4096 -xx`` keeps those bytes in the log.

Descriptor numbers are resolved per process: tracees share one table unless the log shows a
fork (clone without CLONE_FILES); pass ``thread_groups`` (tid -> pid, e.g. from /proc) when
several already-running processes are attached with several ``-p``.

The module has no dependency besides the standard library, so a benchmark can import it.
"""

from __future__ import annotations

import itertools
import posixpath
import re
import struct
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "STRACE_SYSCALLS",
    "Call",
    "Commit",
    "Flush",
    "StoreResponse",
    "TraceAnalysis",
    "analyze_trace",
    "check_durability_order",
    "parse_calls",
    "strace_command",
]

#: Syscalls the analysis needs. "?" lets strace skip names an architecture does not have
#: (aarch64 has no open, rename, mkdir, fork).
STRACE_SYSCALLS: tuple[str, ...] = (
    "fsync",
    "fdatasync",
    "?rename",
    "renameat",
    "?renameat2",
    "write",
    "writev",
    "sendto",
    "sendmsg",
    "?open",
    "openat",
    "close",
    "accept",
    "accept4",
    "?mkdir",
    "mkdirat",
    "clone",
    "?clone3",
    "?fork",
    "?vfork",
)

C_STORE_RSP = 0x8001
_P_DATA_TF = 0x04
_TAG_COMMAND_FIELD = 0x00000100
_TAG_MESSAGE_ID_RESPONDED = 0x00000120
_TAG_STATUS = 0x00000900
_TAG_AFFECTED_SOP_INSTANCE = 0x00001000


def strace_command(
    trace_path: str | Path, pids: Iterable[int] = (), *, strace: str = "strace"
) -> list[str]:
    """The strace command line the analysis expects: attach to `pids`, or append a command."""
    cmd = [
        strace,
        "-f",
        "-tt",
        "-s",
        "4096",
        "-xx",
        "-e",
        "trace=" + ",".join(STRACE_SYSCALLS),
        "-o",
        str(trace_path),
    ]
    for pid in pids:
        cmd += ["-p", str(pid)]
    return cmd


# -- parsing the log ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Call:
    """One finished syscall: its text and where it started and ended in the log."""

    tid: int
    name: str
    args: str  # the text between the parentheses
    result: str  # the text after "= "
    start: int  # 1-based line of its entry (its only line when not interrupted)
    end: int  # 1-based line of its completion
    start_ts: float  # seconds (since midnight for -t/-tt, since the epoch for -ttt)
    end_ts: float

    @property
    def ret(self) -> int | None:
        m = re.match(r"-?\d+", self.result)
        return int(m.group()) if m else None

    @property
    def ok(self) -> bool:
        ret = self.ret
        return ret is not None and ret >= 0

    def where(self) -> str:
        return f"line {self.start}" if self.start == self.end else f"lines {self.start}-{self.end}"


_LEADER = re.compile(
    r"^(?:\[pid\s+)?(?P<tid>\d+)\]?\s+(?P<ts>\d+:\d\d:\d\d(?:\.\d+)?|\d+\.\d+)\s+(?P<body>.*)$"
)
_LEADER_NO_PID = re.compile(r"^(?P<ts>\d+:\d\d:\d\d(?:\.\d+)?|\d+\.\d+)\s+(?P<body>.*)$")
_RESUMED = re.compile(r"^<\.\.\. (?P<name>\w+) resumed>(?P<rest>.*)$")
_ENTRY = re.compile(r"^(?P<name>\w+)\((?P<rest>.*)$")
_UNFINISHED = " <unfinished ...>"
_RESULT = re.compile(r"\)\s*= (?P<result>[^=]*)$")


@dataclass(slots=True)
class _Pending:
    name: str
    text: str
    line: int
    ts: float


class _Clock:
    """Timestamps of -t/-tt (time of day, wrapping at midnight) or -ttt (epoch)."""

    def __init__(self) -> None:
        self._last = 0.0
        self._day = 0.0

    def __call__(self, text: str) -> float:
        if ":" in text:
            h, m, s = text.split(":")
            value = int(h) * 3600 + int(m) * 60 + float(s) + self._day
            if value < self._last - 43200:  # the log crossed midnight
                self._day += 86400
                value += 86400
        else:
            value = float(text)
        self._last = value
        return value


def parse_calls(lines: Iterable[str], problems: list[str] | None = None) -> list[Call]:
    """Finished syscalls of an `strace -f -tt` log, in the order of their completion lines.

    Signals, exits and lines that are not syscalls are skipped; a call that never finished
    (its thread was killed) is dropped. Anything odd is appended to `problems`.
    """
    problems = problems if problems is not None else []
    clock = _Clock()
    pending: dict[int, _Pending] = {}
    calls: list[Call] = []
    for lineno, raw in enumerate(lines, 1):
        line = raw.rstrip("\n")
        m = _LEADER.match(line)
        if m is not None:
            tid = int(m.group("tid"))
        else:
            m = _LEADER_NO_PID.match(line)
            if m is None:
                if line.strip():
                    problems.append(f"line {lineno}: not an strace line")
                continue
            tid = 0
        ts = clock(m.group("ts"))
        body = m.group("body")
        if body.startswith(("---", "+++")):
            if body.startswith("+++") and tid in pending:
                del pending[tid]  # the thread ended inside a syscall
            continue
        resumed = _RESUMED.match(body)
        if resumed is not None:
            entry = pending.pop(tid, None)
            if entry is None or entry.name != resumed.group("name"):
                problems.append(f"line {lineno}: resumed {resumed.group('name')} without entry")
                continue
            text, start, start_ts = entry.text + resumed.group("rest"), entry.line, entry.ts
            name = entry.name
        else:
            entered = _ENTRY.match(body)
            if entered is None:
                problems.append(f"line {lineno}: cannot parse {body[:60]!r}")
                continue
            name, text = entered.group("name"), entered.group("rest")
            if text.endswith(_UNFINISHED):
                if tid in pending:
                    problems.append(f"line {lineno}: thread {tid} entered twice")
                pending[tid] = _Pending(name, text[: -len(_UNFINISHED)], lineno, ts)
                continue
            start, start_ts = lineno, ts
        result = _RESULT.search(text)
        if result is None:
            problems.append(f"line {lineno}: {name} without a result")
            continue
        calls.append(
            Call(
                tid=tid,
                name=name,
                args=text[: result.start()],
                result=result.group("result").strip(),
                start=start,
                end=lineno,
                start_ts=start_ts,
                end_ts=ts,
            )
        )
    return calls


_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"(?:\.\.\.)?|[\[\]{}(),]|[^"\[\]{}(),]+')
_STRING = re.compile(r'"((?:[^"\\]|\\.)*)"(\.\.\.)?')
_ESCAPES = {"n": 10, "t": 9, "r": 13, "v": 11, "f": 12, "a": 7, "b": 8, "\\": 92, '"': 34}


def split_args(text: str) -> list[str]:
    """Top-level, comma-separated arguments of a syscall (quotes and brackets respected)."""
    args: list[str] = []
    depth = 0
    current: list[str] = []
    for tok in _TOKEN.findall(text):
        if tok in "([{" and len(tok) == 1:
            depth += 1
        elif tok in ")]}" and len(tok) == 1:
            depth -= 1
        elif tok == "," and depth == 0:
            args.append("".join(current).strip())
            current = []
            continue
        current.append(tok)
    if current or args:
        args.append("".join(current).strip())
    return args


def decode_string(literal: str) -> tuple[bytes, bool]:
    """Bytes of an strace string literal (`"..."`, maybe followed by `...`); truncated?"""
    m = _STRING.fullmatch(literal.strip())
    if m is None:
        raise ValueError(f"not a string literal: {literal[:40]!r}")
    body, out, i = m.group(1), bytearray(), 0
    while i < len(body):
        c = body[i]
        if c != "\\":
            out += c.encode("utf-8", "surrogateescape")
            i += 1
            continue
        n = body[i + 1]
        if n == "x":
            out.append(int(body[i + 2 : i + 4], 16))
            i += 4
        elif n in "01234567":
            j = i + 1
            while j < len(body) and j < i + 4 and body[j] in "01234567":
                j += 1
            out.append(int(body[i + 1 : j], 8) & 0xFF)
            i = j
        else:
            out.append(_ESCAPES.get(n, ord(n)))
            i += 2
    return bytes(out), m.group(2) is not None


def _fd(arg: str) -> int | None:
    m = re.match(r"-?\d+", arg.strip())
    return int(m.group()) if m else None


# -- what the calls mean -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Flush:
    """An fsync/fdatasync of a descriptor opened on `path` (None: unknown descriptor)."""

    path: str | None
    call: Call


@dataclass(frozen=True, slots=True)
class _Open:
    path: str
    created: bool
    call: Call


@dataclass(frozen=True, slots=True)
class _Rename:
    src: str
    dst: str
    call: Call


@dataclass(frozen=True, slots=True)
class StoreResponse:
    """A C-STORE-RSP written to a socket; `call` wrote its first byte."""

    sop_instance_uid: str
    status: int
    message_id: int | None
    call: Call

    @property
    def stored(self) -> bool:
        """Success or warning: the sender will consider the object stored."""
        s = self.status
        return s == 0x0000 or s == 0x0001 or 0xB000 <= s <= 0xBFFF


@dataclass(slots=True)
class Commit:
    """The durable steps found for one acknowledged object."""

    response: StoreResponse
    staging: str
    key_path: str
    rename: Call
    file_flush: Call | None = None
    dir_flush: Call | None = None


@dataclass(slots=True)
class TraceAnalysis:
    calls: list[Call]
    responses: list[StoreResponse]
    renames: list[_Rename]
    flushes: list[Flush]
    mkdirs: list[tuple[str, Call]]
    commits: list[Commit]
    violations: list[str]
    problems: list[str]


@dataclass(slots=True)
class _Socket:
    opened_at: int = 0  # log line of the accept that returned it
    buf: bytearray = field(default_factory=bytearray)
    buf_call: Call | None = None  # wrote the first byte of `buf`
    command: list[bytes] = field(default_factory=list)
    command_call: Call | None = None  # wrote the first fragment of `command`


_Fd = _Open | _Socket


class _Model:
    """Replays the calls: descriptor tables per process, files written, flushes, responses."""

    def __init__(self, thread_groups: Mapping[int, int] | None, problems: list[str]) -> None:
        self.group_of: dict[int, int] = dict(thread_groups or {})
        self.tables: dict[int, dict[int, _Fd]] = {}
        self.problems = problems
        self.opens: list[_Open] = []
        self.file_writes: list[tuple[str, Call]] = []
        self.flushes: list[Flush] = []
        self.renames: list[_Rename] = []
        self.mkdirs: list[tuple[str, Call]] = []
        self.responses: list[StoreResponse] = []

    def table(self, tid: int) -> dict[int, _Fd]:
        group = self.group_of.setdefault(tid, -1)
        return self.tables.setdefault(group, {})

    def resolve(self, tid: int, dirfd: str, path: str) -> str:
        if path.startswith("/"):
            return posixpath.normpath(path)
        if dirfd.strip() != "AT_FDCWD":
            fd = _fd(dirfd)
            base = self.table(tid).get(fd) if fd is not None else None
            if isinstance(base, _Open):
                return posixpath.normpath(posixpath.join(base.path, path))
        return posixpath.normpath(path)  # relative to an unknown working folder

    def path_arg(self, arg: str) -> str:
        return decode_string(arg)[0].decode("utf-8", "surrogateescape")

    def apply(self, call: Call) -> None:
        name = call.name
        handler = getattr(self, f"_on_{name}", None)
        if handler is None:
            return
        try:
            handler(call)
        except (ValueError, IndexError, struct.error) as exc:
            self.problems.append(f"{call.where()}: cannot decode {name}: {exc}")

    # one handler per syscall ----------------------------------------------------------------

    def _on_openat(self, call: Call, *, with_dirfd: bool = True) -> None:
        if not call.ok:
            return
        args = split_args(call.args)
        dirfd, rest = (args[0], args[1:]) if with_dirfd else ("AT_FDCWD", args)
        opened = _Open(
            self.resolve(call.tid, dirfd, self.path_arg(rest[0])), "O_CREAT" in rest[1], call
        )
        self.table(call.tid)[call.ret or 0] = opened
        self.opens.append(opened)

    def _on_open(self, call: Call) -> None:
        self._on_openat(call, with_dirfd=False)

    def _on_close(self, call: Call) -> None:
        fd = _fd(call.args)
        if fd is None:
            return
        table = self.table(call.tid)
        target = table.get(fd)
        opened_at = (
            target.call.end if isinstance(target, _Open) else target.opened_at if target else 0
        )
        # A close is applied at its completion, but the kernel frees the number in between: a
        # call of another thread that returned the same number after this close was entered
        # (`close(3 <unfinished ...>`, `openat(...) = 3`, `<... close resumed>`) got it anew.
        if opened_at > call.start:
            return
        table.pop(fd, None)  # Linux frees the descriptor even on EINTR

    def _on_accept4(self, call: Call) -> None:
        if call.ok:
            self.table(call.tid)[call.ret or 0] = _Socket(opened_at=call.end)

    _on_accept = _on_accept4

    def _on_fsync(self, call: Call) -> None:
        if not call.ok:
            return
        fd = _fd(call.args)
        target = self.table(call.tid).get(fd) if fd is not None else None
        self.flushes.append(Flush(target.path if isinstance(target, _Open) else None, call))

    _on_fdatasync = _on_fsync

    def _rename(self, call: Call, src: str, dst: str) -> None:
        if call.ok:
            self.renames.append(_Rename(src, dst, call))

    def _on_rename(self, call: Call) -> None:
        args = split_args(call.args)
        src = self.resolve(call.tid, "AT_FDCWD", self.path_arg(args[0]))
        self._rename(call, src, self.resolve(call.tid, "AT_FDCWD", self.path_arg(args[1])))

    def _on_renameat(self, call: Call) -> None:
        args = split_args(call.args)
        src = self.resolve(call.tid, args[0], self.path_arg(args[1]))
        self._rename(call, src, self.resolve(call.tid, args[2], self.path_arg(args[3])))

    _on_renameat2 = _on_renameat

    def _on_mkdir(self, call: Call) -> None:
        if call.ok:
            path = self.path_arg(split_args(call.args)[0])
            self.mkdirs.append((self.resolve(call.tid, "AT_FDCWD", path), call))

    def _on_mkdirat(self, call: Call) -> None:
        if call.ok:
            args = split_args(call.args)
            self.mkdirs.append((self.resolve(call.tid, args[0], self.path_arg(args[1])), call))

    def _on_clone(self, call: Call) -> None:
        child = call.ret
        if child is None or child <= 0:
            return
        parent = self.group_of.setdefault(call.tid, -1)
        if "CLONE_FILES" in call.args:
            self.group_of[child] = parent  # a thread: one descriptor table
        else:
            self.group_of[child] = child  # a process: a copy of the table
            self.tables[child] = dict(self.tables.get(parent, {}))

    _on_clone3 = _on_clone
    _on_fork = _on_clone
    _on_vfork = _on_clone

    def _written(self, call: Call) -> tuple[int, _Fd] | None:
        """(fd, what it is) for a successful write to a descriptor we know."""
        if not call.ok or not call.ret:
            return None
        fd = _fd(call.args)
        target = self.table(call.tid).get(fd) if fd is not None else None
        return None if target is None or fd is None else (fd, target)

    def _on_write(self, call: Call) -> None:
        written = self._written(call)
        if written is None:
            return
        target = written[1]
        if isinstance(target, _Open):
            self.file_writes.append((target.path, call))
            return
        args = split_args(call.args)
        arg = args[1] if call.name in ("write", "sendto") else call.args
        self._socket_bytes(target, call, arg)

    _on_sendto = _on_write
    _on_writev = _on_write
    _on_sendmsg = _on_write

    def _socket_bytes(self, sock: _Socket, call: Call, arg: str) -> None:
        if call.name in ("write", "sendto"):
            data, truncated = decode_string(arg)
        else:  # writev, sendmsg: every iov_base in order
            data, truncated = b"", False
            for m in re.finditer(r'iov_base=("(?:[^"\\]|\\.)*"(?:\.\.\.)?)', arg):
                part, cut = decode_string(m.group(1))
                data += part
                truncated = truncated or cut
        sent = call.ret or 0
        if truncated and len(data) < sent:
            self.problems.append(f"{call.where()}: socket write truncated in the log (use -s)")
        data = data[:sent]
        if not sock.buf:
            sock.buf_call = call
        sock.buf += data
        while len(sock.buf) >= 6:
            if not 0x01 <= sock.buf[0] <= 0x07:
                self.problems.append(f"{call.where()}: socket bytes are not a PDU; resyncing")
                sock.buf.clear()
                break
            total = 6 + struct.unpack(">I", sock.buf[2:6])[0]
            if len(sock.buf) < total:
                break
            pdu, first = bytes(sock.buf[:total]), sock.buf_call or call
            del sock.buf[:total]
            sock.buf_call = call
            if pdu[0] == _P_DATA_TF:
                self._p_data(sock, pdu, first)
        if truncated and len(data) < sent:
            sock.buf.clear()

    def _p_data(self, sock: _Socket, pdu: bytes, call: Call) -> None:
        pos = 6
        while pos + 6 <= len(pdu):
            (item_len,) = struct.unpack(">I", pdu[pos : pos + 4])
            header = pdu[pos + 5]
            value = pdu[pos + 6 : pos + 4 + item_len]
            pos += 4 + item_len
            if not header & 0x01:
                continue  # a data set fragment
            if not sock.command:
                sock.command_call = call
            sock.command.append(value)
            if header & 0x02:
                command = _decode_command(b"".join(sock.command))
                first = sock.command_call or call
                sock.command.clear()
                if command.get(_TAG_COMMAND_FIELD) == C_STORE_RSP:
                    uid = command.get(_TAG_AFFECTED_SOP_INSTANCE, "")
                    status = command.get(_TAG_STATUS)
                    message_id = command.get(_TAG_MESSAGE_ID_RESPONDED)
                    self.responses.append(
                        StoreResponse(
                            str(uid),
                            status if isinstance(status, int) else -1,
                            message_id if isinstance(message_id, int) else None,
                            first,
                        )
                    )


def _decode_command(raw: bytes) -> dict[int, int | str]:
    """The few elements we need of a command set (implicit VR little endian)."""
    out: dict[int, int | str] = {}
    pos = 0
    while pos + 8 <= len(raw):
        group, element, length = struct.unpack("<HHI", raw[pos : pos + 8])
        value = raw[pos + 8 : pos + 8 + length]
        pos += 8 + length
        tag = group << 16 | element
        if tag in (_TAG_COMMAND_FIELD, _TAG_STATUS, _TAG_MESSAGE_ID_RESPONDED) and length == 2:
            out[tag] = struct.unpack("<H", value)[0]
        elif tag == _TAG_AFFECTED_SOP_INSTANCE:
            out[tag] = value.decode("ascii", "replace").rstrip("\x00 ")
    return out


# -- the check ---------------------------------------------------------------------------------


def _before(a: Call, b: Call) -> bool:
    """`a` finished before `b` was entered: by log position and by timestamp."""
    return a.end < b.start and a.end_ts <= b.start_ts


def _ancestors(path: str) -> Iterator[str]:
    d = posixpath.dirname(path)
    while d and d != posixpath.dirname(d):
        yield d
        d = posixpath.dirname(d)


def analyze_trace(
    trace_path: str | Path,
    *,
    expected_uids: Iterable[str] | None = None,
    thread_groups: Mapping[int, int] | None = None,
) -> TraceAnalysis:
    """Parse the log and check the durability order of every acknowledged C-STORE."""
    problems: list[str] = []
    with open(trace_path, encoding="utf-8", errors="surrogateescape") as f:
        calls = parse_calls(f, problems)
    model = _Model(thread_groups, problems)
    for call in calls:  # completion order: the order their effects became visible
        model.apply(call)
    violations: list[str] = []
    commits: list[Commit] = []
    claimed: set[int] = set()
    # Timestamps must agree with the log order; a clock jump would make them meaningless.
    for prev, nxt in itertools.pairwise(calls):
        if nxt.end_ts < prev.end_ts:
            violations.append(f"timestamps go backwards at line {nxt.end}")
            break
    responses = sorted(model.responses, key=lambda r: r.call.start)
    for rsp in responses:
        if not rsp.stored:
            continue
        commit, found = _check_response(model, rsp, claimed)
        violations += found
        if commit is not None:
            commits.append(commit)
    if expected_uids is not None:
        stored = {r.sop_instance_uid for r in responses if r.stored}
        for uid in expected_uids:
            if uid not in stored:
                violations.append(f"{uid}: no successful C-STORE-RSP found in the trace")
    elif not any(r.stored for r in responses):
        violations.append("no successful C-STORE-RSP found in the trace")
    return TraceAnalysis(
        calls, responses, model.renames, model.flushes, model.mkdirs, commits, violations, problems
    )


def _check_response(
    model: _Model, rsp: StoreResponse, claimed: set[int]
) -> tuple[Commit | None, list[str]]:
    uid, w = rsp.sop_instance_uid, rsp.call
    tag = f"{uid} (C-STORE-RSP at {w.where()})"
    name = f"{uid}.dcm"
    candidates = [
        (i, r)
        for i, r in enumerate(model.renames)
        if i not in claimed and posixpath.basename(r.dst) == name and r.call.end < w.start
    ]
    if not candidates:
        late = [r for r in model.renames if posixpath.basename(r.dst) == name]
        if late:
            return None, [f"{tag}: the rename to {name} finished after the response was sent"]
        return None, [f"{tag}: no rename to {name} before the response"]
    index, rn = candidates[-1]
    claimed.add(index)
    commit = Commit(rsp, rn.src, rn.dst, rn.call)
    found: list[str] = []
    if not _before(rn.call, w):
        found.append(f"{tag}: rename timestamps are after the response")

    # 1-2: the staging file, fsynced after its last write and before the rename.
    created = [
        o.call for o in model.opens if o.path == rn.src and o.created and o.call.end < rn.call.start
    ]
    floor = created[-1].end if created else 0
    last_write = max(
        (c.end for p, c in model.file_writes if p == rn.src and floor < c.end < rn.call.start),
        default=floor,
    )
    file_flushes = [f.call for f in model.flushes if f.path == rn.src and f.call.end > floor]
    good = [c for c in file_flushes if c.start > last_write and _before(c, rn.call)]
    if good:
        commit.file_flush = good[-1]
    elif not file_flushes:
        found.append(f"{tag}: no fsync of the staging file")
    elif all(c.start <= last_write for c in file_flushes):
        found.append(f"{tag}: the staging file was fsynced before its last write")
    else:
        found.append(f"{tag}: the fsync of the staging file did not finish before the rename")

    # 4: the destination folder, fsynced after the rename, before the response.
    folder = posixpath.dirname(rn.dst)
    dir_flushes = [f.call for f in model.flushes if f.path == folder and f.call.start > rn.call.end]
    good = [c for c in dir_flushes if _before(c, w)]
    if good:
        commit.dir_flush = good[0]
    elif not dir_flushes:
        found.append(f"{tag}: no fsync of the destination folder after the rename")
    else:
        found.append(f"{tag}: the destination folder was fsynced only after the response")

    # 5: folders of the key created meanwhile: their entries made durable too.
    for d in _ancestors(rn.dst):
        made = [c for p, c in model.mkdirs if p == d and c.end < w.start]
        if not made:
            continue
        mk = made[-1]
        parent = posixpath.dirname(d)
        if not any(
            f.path == parent and f.call.start > mk.end and _before(f.call, w) for f in model.flushes
        ):
            found.append(f"{tag}: folder {posixpath.basename(d)} created, parent not fsynced")
    return commit, found


def check_durability_order(
    trace_path: str | Path,
    *,
    expected_uids: Iterable[str] | None = None,
    thread_groups: Mapping[int, int] | None = None,
) -> list[str]:
    """Violations of the durability order in the strace log; [] means proven.

    With `expected_uids`, each of them must have a successful C-STORE-RSP in the log; without,
    at least one successful C-STORE-RSP must be found (an empty log proves nothing).
    """
    return analyze_trace(
        trace_path, expected_uids=expected_uids, thread_groups=thread_groups
    ).violations
