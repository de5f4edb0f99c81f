"""The bench's Markdown report: medians of the repeats, ratios against DCMTK, the targets."""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from cpubound import CpuFacts, cpu_bound_mb_s
from diskflush import FlushResult

# store-scp performance targets: minimum ratio to DCMTK on the row's metric.
RATIO_TARGETS: dict[tuple[str, str], float] = {
    ("a", "store-scp-fsync-on"): 1.0,
    ("a", "store-scp-fsync-off"): 1.5,
    ("b", "store-scp-fsync-on"): 1.0,
    ("b", "store-scp-fsync-off"): 1.0,
    ("c", "store-scp-fsync-on"): 0.8,
    ("c", "store-scp-fsync-off"): 1.0,
    ("d", "store-scp-fsync-on"): 1.0,
    ("d", "store-scp-fsync-off"): 1.0,
    ("e", "store-scp-fsync-on"): 20.0,
    ("e", "store-scp-fsync-off"): 20.0,
}
ECHO_TARGET_MS = 2.0
RSS_GROWTH_TARGET_MB = 30.0


class RowLike(Protocol):
    @property
    def title(self) -> str: ...
    @property
    def data(self) -> str: ...
    @property
    def metric(self) -> str: ...


class ServerLike(Protocol):
    @property
    def key(self) -> str: ...
    @property
    def name(self) -> str: ...
    @property
    def durability(self) -> str: ...
    @property
    def fsync(self) -> bool: ...


@dataclass(frozen=True)
class Context:
    command: str
    quick: bool
    repeat: int
    facts: Mapping[str, str]
    datasets: Mapping[str, tuple[str, int, int]]  # key -> (name, files, bytes)
    flush: FlushResult
    commit_bounds: Mapping[str, float]  # row -> best-case MB/s of durable commits on this disk
    gate_passed: bool
    gate_text: str
    show_unverified: bool
    unavailable: Mapping[str, str]
    elapsed_s: float
    cpu: CpuFacts | None = None  # absent from results saved before it was measured


def _median(values: Iterable[float]) -> float:
    vals = list(values)
    return statistics.median(vals) if vals else float("nan")


def _fmt(value: float, digits: int = 1) -> str:
    if value != value:  # NaN
        return "-"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.{digits}f}"


def _check(ok: bool) -> str:
    return "ok" if ok else "MISS"


def _bound_notes(
    rk: str,
    row: RowLike,
    ctx: Context,
    groups: Mapping[tuple[str, str], list[Mapping[str, Any]]],
    dcmtk: float | None,
) -> list[str]:
    """Where a target asks for more than this machine allows any server, say so with the
    measurement that shows it (taken in the same run)."""
    if dcmtk is None:
        return []
    notes = []
    ours = groups.get((rk, "store-scp-fsync-on"), [])
    goal = RATIO_TARGETS.get((rk, "store-scp-fsync-on"))
    fl = ctx.flush
    # One association, fsync on: at most one object per disk flush. Said whether or not the
    # figure itself is shown.
    if rk in ("a", "e") and ours and goal is not None and dcmtk * goal > fl.bound_objects_per_s:
        notes.append(
            f"{rk}: the fsync-on target ({goal:g}x DCMTK = {dcmtk * goal:,.0f} "
            f"objects/s) is above what this disk allows with fsync on over one association "
            f"({fl.bound_objects_per_s:,.0f} objects/s = 1 / median flush of "
            f"{fl.median_ms:.2f} ms): the disk, not the code, bounds it"
        )
    bound = ctx.commit_bounds.get(rk)
    if ours and goal is not None and bound is not None and dcmtk * goal > bound:
        notes.append(
            f"{rk}: the fsync-on target ({goal:g}x DCMTK = {dcmtk * goal:,.0f} MB/s) is above "
            f"what this disk allows for durable commits of these objects even with their bytes "
            f"already in memory ({bound:,.0f} MB/s): the disk, not the code, bounds it"
        )
    base = groups.get((rk, "dcmtk"), [])
    own = groups.get((rk, "store-scp-fsync-off"), [])
    goal = RATIO_TARGETS.get((rk, "store-scp-fsync-off"))
    if row.metric == "obj_s" and rk != "e" and goal is not None and base and own:
        # storescu sends an object, then waits for its response before it reads its next
        # file: its own work and the server's response time add up, object after object.
        files = base[0]["files_sent"]
        sender_us = _median(s.get("sender_cpu_s", float("nan")) for s in own) / files * 1e6
        dcmtk_us = _median(s["cpu_s"] for s in base) / files * 1e6
        budget_us = 1e6 / (dcmtk * goal) - sender_us
        if sender_us == sender_us and budget_us < dcmtk_us:
            note = (
                f"{rk}: the fsync-off target ({goal:g}x DCMTK = {dcmtk * goal:,.0f} objects/s, "
                f"{1e6 / (dcmtk * goal):.0f} us per object) leaves {budget_us:.0f} us per object "
                f"to the server beside storescu's own {sender_us:.0f} us of CPU (storescu waits "
                f"for each response before it reads its next file); DCMTK's storescp itself "
                f"spends {dcmtk_us:.0f} us of CPU per object"
            )
            if ctx.cpu is not None:
                floor = ctx.cpu.store_floor_us
                note += (
                    f"; the system calls alone that any receiver storing each object as a file "
                    f"makes between an object's last byte and its answer (recv, write, rename, "
                    f"send) take {floor:.1f} us here"
                )
                if floor >= budget_us:
                    note += (
                        f", more than the {budget_us:.0f} us left: the machine, not the code, "
                        f"bounds it"
                    )
                else:
                    note += (
                        f", which leaves {budget_us - floor:.1f} us for waking up and parsing "
                        f"the PDU, the command and the data set header"
                    )
            notes.append(note)
    notes.extend(_cpu_bound_notes(rk, row, ctx, groups, dcmtk))
    notes.extend(_floor_notes(rk, row, groups, dcmtk))
    return notes


def _floor_notes(
    rk: str,
    row: RowLike,
    groups: Mapping[tuple[str, str], list[Mapping[str, Any]]],
    dcmtk: float,
) -> list[str]:
    """Targets that even the Python floor (floorscp.py, the least a receiver can do per
    object, in one thread with blocking calls) misses in the same run; failing that, targets
    that the floor misses once it computes the SHA-256 store-scp must compute (the better of
    its two ways of hashing)."""
    notes = []
    unit = "objects/s" if row.metric == "obj_s" else "MB/s"

    def median_of(key: str) -> float | None:
        runs = groups.get((rk, key), [])
        if not runs or not all(s["ok"] for s in runs):
            return None
        return _median(s[row.metric] for s in runs)

    for mode in ("off", "on"):
        goal = RATIO_TARGETS.get((rk, f"store-scp-fsync-{mode}"))
        if goal is None or not groups.get((rk, f"store-scp-fsync-{mode}")):
            continue
        commit = "fsync, rename, fsync of the folder" if mode == "on" else "rename"
        above = (
            f"{rk}: the fsync-{mode} target ({goal:g}x DCMTK = {dcmtk * goal:,.0f} {unit}) is "
            f"above what Python does on this machine"
        )
        plain = median_of(f"floor-fsync-{mode}")
        if plain is not None and plain < dcmtk * goal:
            notes.append(
                f"{above}: the Python floor "
                f"(bench/floorscp.py), which per object only frames the PDUs, decodes the "
                f"command, writes the data set to a file, commits it ({commit}) and answers, "
                f"in one thread with no event loop, no checks, no hashing and no tracking, "
                f"reached {plain:,.0f} {unit} ({plain / dcmtk:.2f}x DCMTK) in this run"
            )
            continue
        hashed = {
            how: value
            for how in ("inline", "process")
            if (value := median_of(f"floor-sha256-{how}-fsync-{mode}")) is not None
        }
        if not hashed:
            continue
        how, best = max(hashed.items(), key=lambda item: item[1])
        if best >= dcmtk * goal:
            continue
        where = "on its receiving thread" if how == "inline" else "in a second process"
        notes.append(
            f"{above} while computing the SHA-256 of every "
            f"data set, as store-scp must: the Python floor (bench/floorscp.py; frames, "
            f"decodes the command, writes, commits ({commit}), answers; no checks, no "
            f"tracking) reached "
            + (f"{plain:,.0f} {unit} ({plain / dcmtk:.2f}x) without hashing but " if plain else "")
            + f"at best {best:,.0f} {unit} ({best / dcmtk:.2f}x DCMTK) with it, hashing {where}"
            f" (the better of its two ways) in this run"
        )
    return notes


def _cpu_bound_notes(
    rk: str,
    row: RowLike,
    ctx: Context,
    groups: Mapping[tuple[str, str], list[Mapping[str, Any]]],
    dcmtk: float,
) -> list[str]:
    """MB/s targets above what the cores can give a receiver as lean as DCMTK's storescp
    that also computes the SHA-256 store-scp must compute, beside the sender's CPU."""
    base = groups.get((rk, "dcmtk"), [])
    ds = ctx.datasets.get(row.data)
    if row.metric != "mb_s" or ctx.cpu is None or not base or ds is None:
        return []
    sender = _median(s.get("sender_cpu_s", float("nan")) for s in base)
    receiver = _median(s["cpu_s"] for s in base)
    total = ds[2]
    cpu = ctx.cpu
    bound = cpu_bound_mb_s(total, cpu.cores, sender, receiver, cpu.sha256_bytes_per_s)
    above = [
        f"fsync-{mode} target ({goal:g}x DCMTK = {dcmtk * goal:,.0f} MB/s)"
        for mode in ("off", "on")
        if groups.get((rk, f"store-scp-fsync-{mode}"))
        and (goal := RATIO_TARGETS.get((rk, f"store-scp-fsync-{mode}"))) is not None
        and dcmtk * goal > bound
    ]
    if bound != bound or not above:
        return []
    return [
        f"{rk}: the {' and the '.join(above)} {'is' if len(above) == 1 else 'are'} above what "
        f"{cpu.cores} cores allow: a receiver as lean as DCMTK's storescp in this row "
        f"({receiver:.2f} s of CPU) that also computes the SHA-256 of every byte "
        f"({cpu.sha256_bytes_per_s / 1e9:.2f} GB/s here: {total / cpu.sha256_bytes_per_s:.2f} s), "
        f"beside the sender's {sender:.2f} s, reaches at most {bound:,.0f} MB/s: the CPU, not "
        f"the code, bounds it"
    ]


def render(
    ctx: Context,
    samples: Sequence[Mapping[str, Any]],
    rows: Mapping[str, RowLike],
    servers: Sequence[ServerLike],
) -> str:
    groups: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for s in samples:
        groups.setdefault((s["row"], s["server"]), []).append(s)
    row_keys = [k for k in rows if any(r == k for r, _ in groups)]
    notes: list[str] = [
        f"{s['row']} {s['server']} #{s['rep']}: run again after: {err}"
        for s in samples
        for err in s.get("retried_after", [])
    ]
    out: list[str] = []

    f = ctx.facts
    out.append(f"# store-scp bench{' (quick)' if ctx.quick else ''}")
    out.append("")
    out.append(f"- command: `{ctx.command}`")
    out.append(
        f"- machine: {f.get('cpu')}, {f.get('cores')} cores, Linux {f.get('kernel')}, "
        f"Python {f.get('python')}; data on {f.get('data_filesystem')}"
    )
    out.append(
        f"- servers: {f.get('dcmtk')}; pynetdicom {f.get('pynetdicom')}; "
        f"store-scp at {f.get('store_scp_commit')}"
    )
    out.append(
        "- sender: DCMTK storescu, one association per process, `TCP_NODELAY=1` (row e: without it)"
    )
    for key, (name, files, size) in ctx.datasets.items():
        out.append(f"- data {key}: {name}, {files:,} files, {size / 1e6:,.1f} MB")
    fl = ctx.flush
    out.append(
        f"- disk flush latency (write 16 KB + fsync + rename + fsync dir, "
        f"{len(fl.samples_ms)} samples): median {fl.median_ms:.2f} ms, p90 {fl.p90_ms:.2f} ms "
        f"-> fsync on, one association: at most {fl.bound_objects_per_s:,.0f} objects/s"
    )
    if ctx.commit_bounds:
        out.append(
            "- durable commits on this disk, best case (the row's objects already in memory: "
            "create + write + fsync + rename + fsync dir, median of 3): "
            + ", ".join(
                f"{rk} {mb:,.0f} MB/s{' (16 writers)' if rk == 'd' else ''}"
                for rk, mb in ctx.commit_bounds.items()
            )
        )
    if ctx.cpu is not None:
        out.append(
            f"- CPU: SHA-256 (hashlib, which store-scp must run over every dataset byte) "
            f"{ctx.cpu.sha256_bytes_per_s / 1e9:.2f} GB/s on one core; store floor of a 16 KB "
            f"object (recv + write + rename + send over loopback TCP, no parsing) "
            f"{ctx.cpu.store_floor_us:.1f} us"
        )
    out.append(f"- durability-order gate for fsync-on figures: {ctx.gate_text}")
    for family, why in ctx.unavailable.items():
        out.append(f"- {family}: not available ({why})")
    out.append(
        f"- medians of {ctx.repeat} run(s); MB = 10^6 bytes of Part 10 files sent; RSS = "
        "summed VmRSS of the server's process tree; CPU = server tree CPU during the sending"
    )
    out.append("")

    transfer_rows = [k for k in row_keys if rows[k].data]
    if transfer_rows:
        out.append(
            "| row | server | durability | objects/s | MB/s | CPU s | sender CPU s | idle RSS MB "
            "| peak RSS MB | RSS growth MB | vs DCMTK | target |"
        )
        out.append("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    dcmtk_metric: dict[str, float] = {}
    for rk in transfer_rows:
        row = rows[rk]
        ds = ctx.datasets.get(row.data)
        n = f"{ds[1]:,} x " if ds else ""
        title = f"{rk}: {n}{row.title}"
        metric_name = "objects/s" if row.metric == "obj_s" else "MB/s"
        base = groups.get((rk, "dcmtk"), [])
        if base and all(s["ok"] for s in base):
            dcmtk_metric[rk] = _median(s[row.metric] for s in base)
        for server in servers:
            runs = groups.get((rk, server.key))
            if not runs:
                continue
            name = server.name
            durability = server.durability
            if rk == "e" and server.key == "dcmtk":
                name += " (as shipped, no TCP_NODELAY)"
            withheld = server.fsync and not ctx.gate_passed
            if withheld and ctx.show_unverified:
                durability += ", UNVERIFIED"
            failed = [s for s in runs if not s["ok"]]
            if failed:
                msg = failed[0]["error"]
                out.append(
                    f"| {title} | {name} | {durability} | FAILED | | | | | | | | "
                    f"{len(failed)}/{len(runs)} runs failed |"
                )
                notes.append(f"{rk} {server.key}: {msg}")
                continue
            if withheld and not ctx.show_unverified:
                out.append(
                    f"| {title} | {name} | {durability} | withheld | | | | | | | | "
                    "durability-order test not passed |"
                )
                continue
            obj = _median(s["obj_s"] for s in runs)
            mb = _median(s["mb_s"] for s in runs)
            cpu = _median(s["cpu_s"] for s in runs)
            sender_cpu = _median(s.get("sender_cpu_s", float("nan")) for s in runs)
            idle = _median(s["idle_rss_mb"] for s in runs)
            peak = _median(s["peak_rss_mb"] for s in runs)
            growth = _median(s["rss_growth_mb"] for s in runs)
            value = obj if row.metric == "obj_s" else mb
            ratio = value / dcmtk_metric[rk] if rk in dcmtk_metric else float("nan")
            ratio_txt = f"{ratio:.2f}x" if ratio == ratio else "-"
            targets = []
            goal = RATIO_TARGETS.get((rk, server.key))
            if goal is not None and ratio == ratio:
                targets.append(f">= {goal:g}x {metric_name}: {_check(ratio >= goal)}")
            if rk == "c" and server.key.startswith("store-scp"):
                targets.append(
                    f"RSS growth < {RSS_GROWTH_TARGET_MB:g} MB: "
                    f"{_check(growth < RSS_GROWTH_TARGET_MB)}"
                )
            out.append(
                f"| {title} | {name} | {durability} | {_fmt(obj)} | {_fmt(mb)} | {_fmt(cpu, 2)} "
                f"| {_fmt(sender_cpu, 2)} | {_fmt(idle)} | {_fmt(peak)} | {_fmt(growth)} "
                f"| {ratio_txt} | {'; '.join(targets)} |"
            )
        notes.extend(_bound_notes(rk, rows[rk], ctx, groups, dcmtk_metric.get(rk)))
    if transfer_rows:
        out.append("")
        out.append(
            "vs DCMTK compares objects/s in rows a and e and MB/s in rows b, c and d with DCMTK "
            "storescp in the same row (row e: DCMTK with Nagle on, as Debian ships it)."
        )
        out.append("")

    if "f" in row_keys:
        out.append("| row | server | median ms | p90 ms | vs DCMTK | target |")
        out.append("|---|---|---:|---:|---:|---|")
        base = groups.get(("f", "dcmtk"), [])
        base_ms = (
            _median(_median(s["echo_ms"]) for s in base)
            if base and all(s["ok"] for s in base)
            else float("nan")
        )
        for server in servers:
            runs = groups.get(("f", server.key))
            if not runs:
                continue
            failed = [s for s in runs if not s["ok"]]
            title = "f: new association + C-ECHO + release (in-process client)"
            if failed:
                out.append(f"| {title} | {server.name} | FAILED | | | |")
                notes.append(f"f {server.key}: {failed[0]['error']}")
                continue
            med = _median(_median(s["echo_ms"]) for s in runs)
            everything = sorted(x for s in runs for x in s["echo_ms"])
            p90 = everything[min(len(everything) - 1, int(0.9 * len(everything)))]
            ratio = med / base_ms if base_ms == base_ms else float("nan")
            ratio_txt = f"{ratio:.2f}x" if ratio == ratio else "-"
            target = ""
            if server.key.startswith("store-scp"):
                target = f"< {ECHO_TARGET_MS:g} ms: {_check(med < ECHO_TARGET_MS)}"
            out.append(
                f"| {title} | {server.name} | {med:.2f} | {p90:.2f} | {ratio_txt} | {target} |"
            )
        out.append("")
        out.append("Row f: vs DCMTK is the latency ratio (lower is faster).")
        out.append("")

    if notes:
        out.append("Notes:")
        out.extend(f"- {n}" for n in notes)
        out.append("")
    out.append(f"Total bench time: {ctx.elapsed_s / 60:.1f} min.")
    return "\n".join(out)
