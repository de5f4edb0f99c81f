"""Benchmark store-scp against DCMTK storescp and pynetdicom's storescp on the same data.

    python3 bench/run.py [--quick] [--repeat 3] [--only a,c] [--servers dcmtk,store-scp]
                         [--out bench/results/NAME.json]

See bench/README.md for what each row measures and how.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import datagen
import report
import servers
from cpubound import CpuFacts, measure_sha256, measure_store_floor
from diskflush import FlushResult, measure_commit_bound, measure_flush
from procmon import TreeMonitor
from servers import HOST, Launch, ServerProcess, ServerSpec
from ulclient import EchoError, measure_echo

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
SENDER_TIMEOUT_S = 900.0


@dataclass(frozen=True)
class Row:
    key: str
    title: str
    data: str  # key into datagen.standard_specs(); "" for the echo row
    parallel: bool = False
    nagle: bool = False
    metric: str = "obj_s"  # the figure compared with DCMTK: obj_s or mb_s


ROWS: dict[str, Row] = {
    "a": Row("a", "16 KB, 1 association", "small"),
    "b": Row("b", "0.5 MB, 1 association", "medium", metric="mb_s"),
    "c": Row("c", "50 MB, 1 association", "large", metric="mb_s"),
    "d": Row("d", "0.5 MB, 16 parallel associations", "medium", parallel=True, metric="mb_s"),
    "e": Row("e", "16 KB, Nagle-on sender", "nagle", nagle=True),
    "f": Row("f", "new association + C-ECHO (in-process client)", ""),
}


#: Rows whose fsync-on target is checked against the disk: (writers, objects per writer). The
#: objects have the size of the row's files; each bound is the median of three measurements.
COMMIT_BOUNDS: dict[str, tuple[int, int]] = {"b": (1, 200), "c": (1, 6), "d": (16, 16)}


@dataclass
class RunSample:
    row: str
    server: str
    rep: int
    ok: bool
    error: str = ""
    files_sent: int = 0
    files_stored: int = 0
    bytes_sent: int = 0
    wall_s: float = 0.0
    obj_s: float = 0.0
    mb_s: float = 0.0
    cpu_s: float = 0.0
    sender_cpu_s: float = 0.0  # CPU of the storescu processes (user + system)
    idle_rss_mb: float = 0.0
    peak_rss_mb: float = 0.0
    rss_growth_mb: float = 0.0
    sender_exit_codes: list[int] = field(default_factory=list)
    echo_ms: list[float] = field(default_factory=list)
    retried_after: list[str] = field(default_factory=list)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def rel(path: Path) -> str:
    """A path for printing and for the JSON: relative to the repository when inside it."""
    try:
        return str(path.resolve().relative_to(REPO_DIR))
    except ValueError:
        return path.name


# --- environment facts -------------------------------------------------------------------------


def _first_line(cmd: list[str]) -> str:
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unavailable ({exc.__class__.__name__})"
    lines = (res.stdout or res.stderr).strip().splitlines()
    return lines[0].strip() if lines else ""


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _filesystem_of(path: Path) -> str:
    best, fstype = "", "unknown"
    target = str(path.resolve())
    try:
        for line in Path("/proc/mounts").read_text().splitlines():
            parts = line.split()
            mnt = parts[1]
            if (target == mnt or target.startswith(mnt.rstrip("/") + "/")) and len(mnt) > len(best):
                best, fstype = mnt, parts[2]
    except OSError:
        pass
    return fstype


def environment_facts(work_dir: Path) -> dict[str, str]:
    import pydicom
    import pynetdicom

    commit = _first_line(["git", "-C", str(REPO_DIR), "rev-parse", "--short", "HEAD"])
    dirty = _first_line(["git", "-C", str(REPO_DIR), "status", "--porcelain", "--", "src"])
    return {
        "cpu": _cpu_model(),
        "cores": str(os.cpu_count()),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "dcmtk": _first_line([str(servers.STORESCP), "--version"]).strip("$ "),
        "pynetdicom": pynetdicom.__version__,
        "pydicom": pydicom.__version__,
        "store_scp_commit": commit + (" (src modified)" if dirty else ""),
        "data_filesystem": _filesystem_of(work_dir),
    }


# --- one run -----------------------------------------------------------------------------------


def _sender_cmd(called_ae: str, port: int, folder: Path) -> list[str]:
    return [
        str(servers.STORESCU),
        "-aet",
        servers.CALLING_AE,
        "-aec",
        called_ae,
        "+sd",
        "+r",
        HOST,
        str(port),
        str(folder),
    ]


def _last_line(path: Path) -> str:
    try:
        lines = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return lines[-1][:200] if lines else ""


def _warm(root: Path) -> None:
    """Read a row's files once, so that no server's first run pays for storescu reading them
    from the disk (earlier rows' gigabytes may have pushed them out of the page cache)."""
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            with open(os.path.join(dirpath, name), "rb") as f:
                while f.read(1 << 20):
                    pass


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_transfer(
    row: Row, spec: ServerSpec, rep: int, data: datagen.DataSet, run_dir: Path
) -> RunSample:
    sample = RunSample(row=row.key, server=spec.key, rep=rep, ok=False)
    sample.files_sent = data.files
    sample.bytes_sent = data.total_bytes
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    out_dir = run_dir / "out"
    port = servers.free_port()
    launch = Launch(port=port, out_dir=out_dir, parallel=row.parallel, nodelay=not row.nagle)
    server = ServerProcess(spec, launch, run_dir / "server.log")
    try:
        why = server.wait_ready(10.0)
        if why is not None:
            sample.error = f"server not ready: {why}"
            return sample
        time.sleep(0.2)
        mon = TreeMonitor(server.pid)
        baseline_pids = mon.live_pids()
        idle_kib = mon.rss_kib()
        cpu0 = mon.cpu_seconds()
        mon.reset_peak()
        mon.start()

        folders = data.part_dirs() if row.parallel else [data.root]
        env = servers.base_env(nodelay=not row.nagle)
        logs = [run_dir / f"sender-{i:02d}.log" for i in range(len(folders))]
        handles = [open(p, "wb") for p in logs]  # noqa: SIM115 - closed below
        children0 = _children_cpu()
        t0 = time.perf_counter()
        procs = [
            subprocess.Popen(
                _sender_cmd(spec.called_ae, port, folder),
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=h,
                stderr=subprocess.STDOUT,
            )
            for folder, h in zip(folders, handles, strict=True)
        ]
        codes = []
        for p in procs:
            try:
                codes.append(
                    p.wait(timeout=max(1.0, SENDER_TIMEOUT_S - (time.perf_counter() - t0)))
                )
            except subprocess.TimeoutExpired:
                p.kill()
                codes.append(p.wait())
        t1 = time.perf_counter()
        # Only the senders end between the two readings: their CPU, whatever the server.
        sample.sender_cpu_s = _children_cpu() - children0
        for h in handles:
            h.close()
        mon.stop()
        mon.settle(baseline_pids)
        cpu1 = mon.cpu_seconds()

        sample.sender_exit_codes = codes
        sample.wall_s = t1 - t0
        sample.idle_rss_mb = idle_kib * 1024 / 1e6
        sample.peak_rss_mb = max(mon.peak_rss_kib, idle_kib) * 1024 / 1e6
        sample.rss_growth_mb = sample.peak_rss_mb - sample.idle_rss_mb
        sample.cpu_s = cpu1 - cpu0
        sample.files_stored = spec.count(out_dir)
        sample.obj_s = data.files / sample.wall_s
        sample.mb_s = data.total_bytes / 1e6 / sample.wall_s
        failed = [i for i, c in enumerate(codes) if c != 0]
        problems = []
        if failed:
            first = _last_line(logs[failed[0]])
            problems.append(f"{len(failed)}/{len(codes)} storescu exited non-zero ({first})")
        if sample.files_stored != data.files:
            problems.append(f"{sample.files_stored}/{data.files} objects stored")
        if server.proc.poll() is not None:
            problems.append(f"server exited with code {server.proc.returncode}")
        sample.error = "; ".join(problems)
        sample.ok = not problems
        return sample
    finally:
        server.stop()
        if sample.ok:
            _retire(run_dir)
        else:
            keep = run_dir.parent / f"failed-{row.key}-{spec.key}-{rep}"
            shutil.rmtree(keep, ignore_errors=True)
            shutil.rmtree(out_dir, ignore_errors=True)
            run_dir.rename(keep)
        os.sync()  # write-back of this run must not land in the next one


def _retire(run_dir: Path) -> None:
    """Free a finished run's disk space but keep its inodes until the bench ends.

    On ext4 an inode freed less than a minute ago is skipped when a new one is allocated (the
    `recently_deleted` check), and each skip reads its inode: deleting a run's thousands of
    files would make every file creation of the next run, whatever its server, pay a scan
    over them (measured: up to 250 us of kernel time per file). Truncating frees the blocks
    without freeing the inodes; the folder is removed with the others at the end."""
    for path in run_dir.rglob("*"):
        if path.is_file() and not path.is_symlink():
            with contextlib.suppress(OSError):
                os.truncate(path, 0)
    spent = run_dir.parent / ".spent"
    spent.mkdir(exist_ok=True)
    run_dir.rename(spent / f"{run_dir.name}-{time.monotonic_ns()}")


def run_echo(spec: ServerSpec, rep: int, iterations: int, run_dir: Path) -> RunSample:
    sample = RunSample(row="f", server=spec.key, rep=rep, ok=False)
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    port = servers.free_port()
    launch = Launch(port=port, out_dir=run_dir / "out", parallel=False, nodelay=True)
    server = ServerProcess(spec, launch, run_dir / "server.log")
    try:
        why = server.wait_ready(10.0)
        if why is not None:
            sample.error = f"server not ready: {why}"
            return sample
        try:
            result = measure_echo(HOST, port, spec.called_ae, servers.CALLING_AE, iterations)
        except (EchoError, OSError) as exc:
            sample.error = f"echo failed: {exc}"
            return sample
        sample.echo_ms = result.samples_ms
        sample.ok = True
        return sample
    finally:
        server.stop()
        shutil.rmtree(run_dir, ignore_errors=True)


def _server_died(sample: RunSample) -> bool:
    return sample.error.startswith("server not ready") or "server exited" in sample.error


def run_with_retries(
    row: Row,
    spec: ServerSpec,
    rep: int,
    args: argparse.Namespace,
    datasets: dict[str, datagen.DataSet],
    run_dir: Path,
) -> RunSample:
    """One run; run again (up to twice) if the server failed to start or died under it.

    Other processes on a shared machine can disturb a server; the failures are kept in the
    sample (`retried_after`) and shown in the report, never hidden.
    """
    errors: list[str] = []
    while True:
        if row.key == "f":
            sample = run_echo(spec, rep, args.echo_iterations, run_dir)
        else:
            sample = run_transfer(row, spec, rep, datasets[row.data], run_dir)
        if sample.ok or not _server_died(sample) or len(errors) >= 2:
            sample.retried_after = errors
            return sample
        log(f"{row.key} {spec.key} #{rep}: {sample.error}; running it again")
        errors.append(sample.error)


# --- availability and the durability gate ------------------------------------------------------


def servers_for_row(row_key: str, active: list[ServerSpec]) -> list[ServerSpec]:
    """The servers a row runs: row f (C-ECHO) needs no second store-scp; the Python floor runs
    only in its rows."""
    return [
        s
        for s in active
        if not (row_key == "f" and s.key == "store-scp-fsync-off")
        and (s.rows is None or row_key in s.rows)
    ]


def probe(spec: ServerSpec, run_dir: Path) -> str | None:
    """None if the server starts and answers a C-ECHO within 10 s, else why not."""
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    launch = Launch(servers.free_port(), run_dir / "out", parallel=False, nodelay=True)
    try:
        server = ServerProcess(spec, launch, run_dir / "server.log")
    except OSError as exc:
        return f"cannot start: {exc}"
    try:
        return server.wait_ready(10.0)
    finally:
        server.stop()
        shutil.rmtree(run_dir, ignore_errors=True)


def durability_gate(expr: str) -> tuple[bool, str]:
    """Run the durability-order test on this working tree: (passed, one-line verdict)."""
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", expr, "tests"]
    log(f"durability gate: python3 -m pytest -q -k {expr} tests")
    try:
        res = subprocess.run(
            cmd, cwd=REPO_DIR, capture_output=True, text=True, timeout=900, check=False
        )
    except subprocess.TimeoutExpired:
        return False, "durability-order test timed out"
    tail = (res.stdout.strip().splitlines() or [""])[-1]
    if res.returncode == 0:
        return True, f"durability-order test passed ({tail})"
    if res.returncode == 5:
        return False, f"no durability-order test found (pytest -k {expr} selected nothing)"
    return False, f"durability-order test failed (pytest exit {res.returncode}: {tail})"


def measure_commit_bounds(
    rows: list[str], datasets: dict[str, datagen.DataSet], runs_dir: Path
) -> dict[str, dict[str, Any]]:
    """The disk's best-case durable-commit MB/s for the rows of COMMIT_BOUNDS that run."""
    bounds: dict[str, dict[str, Any]] = {}
    for row_key, (writers, objects) in COMMIT_BOUNDS.items():
        if row_key not in rows or ROWS[row_key].data not in datasets:
            continue
        data = datasets[ROWS[row_key].data]
        size = data.total_bytes // data.files
        tries = []
        for i in range(3):
            folder = runs_dir / f"commit-probe-{row_key}-{i}"
            tries.append(measure_commit_bound(folder, size, writers, objects).mb_s)
            _retire(folder)  # its space is free again before the next measurement
        bounds[row_key] = {
            "mb_s": statistics.median(tries),
            "samples_mb_s": tries,
            "size": size,
            "writers": writers,
            "objects_per_writer": objects,
        }
        log(f"durable commits, row {row_key}: median {statistics.median(tries):.0f} MB/s")
    return bounds


def measure_cpu(runs_dir: Path) -> CpuFacts:
    """SHA-256 rate and the store floor of a 16 KB object on this machine (see cpubound)."""
    sha = measure_sha256()
    floor = measure_store_floor(runs_dir / "store-floor-probe")
    _retire(runs_dir / "store-floor-probe")
    log(f"SHA-256 {sha / 1e9:.2f} GB/s; store floor of a 16 KB object {floor:.1f} us")
    return CpuFacts(cores=os.cpu_count() or 1, sha256_bytes_per_s=sha, store_floor_us=floor)


# --- main --------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="about 10x fewer objects: a smoke run")
    ap.add_argument("--repeat", type=int, default=3, help="runs per row and server (default 3)")
    ap.add_argument("--only", default="", help="rows to run, e.g. 'a' or 'a,c,f' (default all)")
    ap.add_argument(
        "--servers",
        default="dcmtk,pynetdicom,store-scp,floor",
        help="server families to run (default dcmtk,pynetdicom,store-scp,floor)",
    )
    ap.add_argument("--out", type=Path, help="JSON results file (default bench/results/...)")
    ap.add_argument(
        "--from-json", type=Path, help="measure nothing: print the table of a saved JSON file"
    )
    ap.add_argument(
        "--work-dir",
        type=Path,
        default=BENCH_DIR / ".data",
        help="data cache and server output folders (default bench/.data); its disk is the "
        "one whose flush latency is measured",
    )
    ap.add_argument("--echo-iterations", type=int, help="row f iterations (200; 50 with --quick)")
    ap.add_argument("--flush-samples", type=int, default=200, help="disk flush samples (200)")
    ap.add_argument(
        "--durability-test",
        default="durability_order",
        help="pytest -k expression of the durability-order test gating fsync-on figures",
    )
    ap.add_argument(
        "--show-unverified",
        action="store_true",
        help="print fsync-on figures even if the durability-order test did not pass "
        "(marked UNVERIFIED)",
    )
    args = ap.parse_args(argv)
    rows = [r.strip() for r in args.only.split(",") if r.strip()] or list(ROWS)
    bad = [r for r in rows if r not in ROWS]
    if bad:
        ap.error(f"unknown row(s) {bad}; rows are {', '.join(ROWS)}")
    args.rows = rows
    families = {s.strip() for s in args.servers.split(",") if s.strip()}
    unknown = families - {s.family for s in servers.ALL_SERVERS}
    if unknown:
        ap.error(f"unknown server(s) {sorted(unknown)}")
    args.families = families
    if args.repeat < 1:
        ap.error("--repeat must be at least 1")
    if args.echo_iterations is None:
        args.echo_iterations = 50 if args.quick else 200
    return args


def render_saved(path: Path, show_unverified: bool) -> int:
    """Print the table of a saved JSON results file again (e.g. with --show-unverified)."""
    saved = json.loads(path.read_text())
    ctx = report.Context(
        command=saved["command"],
        quick=saved["quick"],
        repeat=saved["repeat"],
        facts=saved["environment"],
        datasets={k: (v["name"], v["files"], v["bytes"]) for k, v in saved["datasets"].items()},
        flush=FlushResult(saved["disk_flush_ms"]["samples"]),
        commit_bounds={k: v["mb_s"] for k, v in saved.get("commit_bounds", {}).items()},
        gate_passed=saved["durability_gate"]["passed"],
        gate_text=saved["durability_gate"]["verdict"],
        show_unverified=show_unverified,
        unavailable=saved["unavailable"],
        elapsed_s=saved["elapsed_s"],
        cpu=CpuFacts(**saved["cpu"]) if "cpu" in saved else None,
    )
    print(report.render(ctx, saved["samples"], ROWS, servers.ALL_SERVERS))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.from_json is not None:
        return render_saved(args.from_json, args.show_unverified)
    started = time.monotonic()
    work_dir: Path = args.work_dir.resolve()
    cache_dir = work_dir / "cache"
    runs_dir = work_dir / "runs"
    cache_dir.mkdir(parents=True, exist_ok=True)
    # A previous bench's folders are removed at the end of this one (see _retire).
    old_runs = work_dir / f"old-runs-{time.monotonic_ns()}"
    if runs_dir.exists():
        runs_dir.rename(old_runs)
    runs_dir.mkdir(parents=True)
    command = "python3 bench/run.py" + "".join(f" {a}" for a in (argv or sys.argv[1:]))

    for tool in (servers.STORESCU, servers.STORESCP, servers.ECHOSCU):
        if not tool.exists():
            log(f"{tool.name} not found in {tool.parent}: apt-get install -y dcmtk")
            return 2

    facts = environment_facts(work_dir)

    # Data, generated once into the cache.
    specs = datagen.standard_specs(args.quick)
    needed = {ROWS[r].data for r in args.rows if ROWS[r].data}
    datasets = {k: datagen.ensure_dataset(cache_dir, specs[k]) for k in sorted(needed)}

    # Which servers run.
    specs_to_run = [s for s in servers.ALL_SERVERS if s.family in args.families]
    unavailable: dict[str, str] = {}
    for family in sorted({s.family for s in specs_to_run}):
        spec = next(s for s in specs_to_run if s.family == family)
        why = probe(spec, runs_dir / f"probe-{family}")
        if why is not None:
            unavailable[family] = why
            log(f"{family}: not available ({why})")
    active = [s for s in specs_to_run if s.family not in unavailable]

    gate_passed, gate_text = False, "not run (store-scp not benchmarked)"
    if any(s.fsync for s in active):
        gate_passed, gate_text = durability_gate(args.durability_test)
        log(gate_text)

    # The disk, in the same run.
    log("measuring disk flush latency ...")
    flush: FlushResult = measure_flush(runs_dir / "flush-probe", samples=args.flush_samples)
    _retire(runs_dir / "flush-probe")
    log(f"disk flush: median {flush.median_ms:.2f} ms, p90 {flush.p90_ms:.2f} ms")

    samples: list[RunSample] = []
    for row_key in args.rows:
        row = ROWS[row_key]
        if row.data:
            _warm(datasets[row.data].root)
        row_specs = servers_for_row(row.key, active)
        for rep in range(1, args.repeat + 1):
            for spec in row_specs:
                run_dir = runs_dir / f"{row.key}-{spec.key}-{rep}"
                s = run_with_retries(row, spec, rep, args, datasets, run_dir)
                if row.key == "f":
                    detail = f"median {statistics.median(s.echo_ms):.2f} ms" if s.ok else s.error
                else:
                    detail = (
                        f"{s.files_stored}/{s.files_sent} in {s.wall_s:.2f} s, "
                        f"{s.obj_s:.0f} obj/s, {s.mb_s:.1f} MB/s, cpu {s.cpu_s:.2f} s "
                        f"(sender {s.sender_cpu_s:.2f} s), "
                        f"rss {s.idle_rss_mb:.0f}->{s.peak_rss_mb:.0f} MB"
                    )
                    if s.error:
                        detail += f" [{s.error}]"
                log(f"{row.key} {spec.key} #{rep}: {detail}")
                samples.append(s)

    # After the servers: half a gigabyte of fsynced writes and truncations just before the
    # first runs could slow their file creations (whichever server runs first).
    commit_bounds = measure_commit_bounds(args.rows, datasets, runs_dir)
    cpu = measure_cpu(runs_dir)

    elapsed = time.monotonic() - started
    ctx = report.Context(
        command=command,
        quick=args.quick,
        repeat=args.repeat,
        facts=facts,
        datasets={k: (d.spec.name, d.files, d.total_bytes) for k, d in datasets.items()},
        flush=flush,
        commit_bounds={k: v["mb_s"] for k, v in commit_bounds.items()},
        gate_passed=gate_passed,
        gate_text=gate_text,
        show_unverified=args.show_unverified,
        unavailable=unavailable,
        elapsed_s=elapsed,
        cpu=cpu,
    )
    text = report.render(ctx, [asdict(s) for s in samples], ROWS, servers.ALL_SERVERS)
    print(text)

    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    out: Path = (
        args.out or BENCH_DIR / "results" / f"bench-{stamp}{'-quick' if args.quick else ''}.json"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    payload: dict[str, Any] = {
        "command": command,
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "quick": args.quick,
        "repeat": args.repeat,
        "environment": facts,
        "datasets": {
            k: {"name": d.spec.name, "files": d.files, "bytes": d.total_bytes}
            for k, d in datasets.items()
        },
        "disk_flush_ms": {
            "median": flush.median_ms,
            "p90": flush.p90_ms,
            "samples": flush.samples_ms,
            "what": "write 16 KB + fsync + rename + fsync dir",
        },
        "commit_bounds": commit_bounds,
        "cpu": asdict(cpu),
        "durability_gate": {"passed": gate_passed, "verdict": gate_text},
        "servers": {
            s.key: {"name": s.name, "durability": s.durability, "family": s.family}
            for s in servers.ALL_SERVERS
        },
        "unavailable": unavailable,
        "samples": [asdict(s) for s in samples],
        "elapsed_s": elapsed,
    }
    out.write_text(json.dumps(payload, indent=1))
    out.with_suffix(".md").write_text(text + "\n")
    log(f"results: {rel(out)} and {rel(out.with_suffix('.md'))} ({elapsed:.0f} s)")
    shutil.rmtree(runs_dir / ".spent", ignore_errors=True)
    shutil.rmtree(old_runs, ignore_errors=True)
    if any(p.name.startswith("failed-") for p in runs_dir.iterdir()):
        log(f"logs of failed runs kept under {rel(runs_dir)}")
    else:
        shutil.rmtree(runs_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
