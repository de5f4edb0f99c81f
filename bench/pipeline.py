"""Bench of the whole import pipeline: DCMTK storescu -> store-scp serve with its default
settings (embedded pipeline and datastore) -> every instance IMPORTED into an image set.

    python3 bench/pipeline.py [--quick] [--instances 20000] [--associations 200]
                              [--parallel 4] [--interval 0] [--timeout 900]
                              [--set STORE_SCP_NAME=VALUE] [--json] [--out FILE.json] [--keep]

Sends one study per association, several associations at once, then waits until every
receipt is IMPORTED or FAILED, and reports instances/s through the pipeline, import jobs per
1,000 instances and each study's time to available. See bench/README.md ("Pipeline bench").
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import datetime as dt
import json
import math
import os
import queue
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import datagen
import servers
from procmon import TreeMonitor
from run import environment_facts, log, rel

BENCH_DIR = Path(__file__).resolve().parent
CALLED_AE = "STORE_SCP"
#: store-scp's target for its default seal policy on the embedded datastore: a study's image
#: sets available less than this long after its last C-STORE.
TARGET_SECONDS = 120.0
#: 32 x 32 x 16-bit pixels: a 2 KB frame, about 3.2 KB per file with its header.
PIXELS = 32
SENDER_TIMEOUT_S = 600.0


@dataclass
class Association:
    folder: str
    study_uid: str
    calling_ae: str
    started: float = 0.0  # unix time
    ended: float = 0.0
    exit_code: int | None = None


@dataclass
class Outcome:
    """What one run measured; `asdict` of it is the JSON document."""

    command: str
    date: str
    environment: dict[str, str]
    instances: int
    associations: int
    parallel: int
    interval: float
    file_bytes: int
    server_settings: dict[str, str]
    overrides: dict[str, str]
    ok: bool = False
    errors: list[str] = field(default_factory=list)
    states: dict[str, int] = field(default_factory=dict)
    send_started: float = 0.0
    send_ended: float = 0.0
    first_receipt: float = 0.0
    last_receipt: float = 0.0
    last_available: float = 0.0
    studies: list[dict[str, Any]] = field(default_factory=list)
    jobs: list[dict[str, Any]] = field(default_factory=list)
    image_sets: int = 0
    non_primary: int = 0
    api_checked_studies: int = 0
    server_cpu_s: float = 0.0
    server_peak_rss_mb: float = 0.0
    server_log: dict[str, int] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    timeline: list[dict[str, Any]] = field(default_factory=list)
    association_runs: list[dict[str, Any]] = field(default_factory=list)


# --- figures -----------------------------------------------------------------------------------


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100): the smallest value with at least p % of the
    values at or below it."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def figures(o: Outcome) -> dict[str, float]:
    """The headline numbers, derived from the raw measurements."""
    tta = [s["time_to_available_s"] for s in o.studies]
    send_s = o.send_ended - o.send_started
    pipeline_s = o.last_available - o.first_receipt
    return {
        "send_s": send_s,
        "receive_per_s": o.instances / send_s if send_s > 0 else float("nan"),
        "pipeline_s": pipeline_s,
        "pipeline_per_s": o.instances / pipeline_s if pipeline_s > 0 else float("nan"),
        "jobs": len(o.jobs),
        "jobs_per_1000": len(o.jobs) * 1000 / o.instances if o.instances else float("nan"),
        "tta_p50_s": percentile(tta, 50),
        "tta_p95_s": percentile(tta, 95),
        "tta_max_s": max(tta) if tta else float("nan"),
        "studies_over_target": sum(1 for t in tta if t >= TARGET_SECONDS),
    }


# --- the server --------------------------------------------------------------------------------


def store_scp_command() -> list[str]:
    """`store-scp` as the Python running this bench imports it (PYTHONPATH=src benches a
    checkout); BENCH_STORE_SCP_CMD overrides it."""
    override = os.environ.get("BENCH_STORE_SCP_CMD")
    if override:
        return shlex.split(override)
    return [sys.executable, "-m", "store_scp.cli"]


def server_env(overrides: dict[str, str]) -> dict[str, str]:
    """This environment without any STORE_SCP_* setting: the server runs on its defaults.
    Only the addresses are set (loopback, OS-chosen ports), and what `--set` asks for."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("STORE_SCP_")}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    env["STORE_SCP_HTTP_BIND"] = servers.HOST
    env["STORE_SCP_DATASTORE_API_PORT"] = "0"
    env.update(overrides)
    return env


class Server:
    def __init__(self, data_dir: Path, log_path: Path, overrides: dict[str, str]) -> None:
        self.data_dir = data_dir
        self.log_path = log_path
        self.ready_file = data_dir.parent / "ready.txt"
        cmd = [*store_scp_command(), "serve", "--bind", servers.HOST, "--port", "0"]
        cmd += ["--http-port", "0", "--data-dir", str(data_dir)]
        cmd += ["--ready-file", str(self.ready_file)]
        data_dir.mkdir(parents=True)
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            cmd,
            env=server_env(overrides),
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.ports: dict[str, int] = {}

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while not self.ready_file.exists():
            if self.proc.poll() is not None:
                raise RuntimeError(f"store-scp exited with code {self.proc.returncode}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"store-scp did not start within {timeout:.0f} s")
            time.sleep(0.05)
        self.ports = ast.literal_eval(self.ready_file.read_text())
        if not servers.echo_ok(self.ports["plain"], CALLED_AE):
            raise RuntimeError("store-scp does not answer a C-ECHO")

    def metrics(self) -> dict[str, float]:
        """The pipeline's Prometheus counters and the time-to-available histogram."""
        url = f"http://{servers.HOST}:{self.ports['http']}/metrics"
        with urllib.request.urlopen(url, timeout=10) as resp:
            text = resp.read().decode()
        wanted = (
            "store_scp_import_jobs_total",
            "store_scp_time_to_available_seconds_count",
            "store_scp_time_to_available_seconds_sum",
            'store_scp_time_to_available_seconds_bucket{le="120.0"}',
            "store_scp_receipts",
        )
        out: dict[str, float] = {}
        for line in text.splitlines():
            if line.startswith(wanted):
                name, _, value = line.rpartition(" ")
                out[name] = float(value)
        return out

    def stop(self) -> int:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._log.close()
        return self.proc.returncode

    def log_summary(self) -> dict[str, int]:
        """Warning and error lines of the server's JSON log, and SQLite lock errors."""
        counts = {"WARNING": 0, "ERROR": 0, "CRITICAL": 0, "database is locked": 0}
        with open(self.log_path, errors="replace") as f:
            for line in f:
                if "database is locked" in line:
                    counts["database is locked"] += 1
                try:
                    level = json.loads(line).get("level", "")
                except ValueError:
                    continue
                if level in counts:
                    counts[level] += 1
        return counts


# --- sending -----------------------------------------------------------------------------------


def send_all(
    port: int,
    data: datagen.DataSet,
    studies: dict[str, str],
    parallel: int,
    interval: float,
    run_dir: Path,
) -> list[Association]:
    """One storescu per study folder, `parallel` at a time; each sender slot is its own
    calling AE (a modality), so the per-AE association limit does not apply across slots.
    With `interval` > 0, association k starts no earlier than k * interval seconds after the
    first (a steady arrival of studies rather than a burst)."""
    todo: queue.SimpleQueue[tuple[int, Association]] = queue.SimpleQueue()
    done: list[Association] = []
    for k, part in enumerate(data.part_dirs()):
        todo.put((k, Association(part.name, studies[part.name], "")))
    t0 = time.monotonic()
    logs = run_dir / "senders"
    logs.mkdir()
    env = servers.base_env(nodelay=True)

    def sender(slot: int) -> None:
        while True:
            try:
                k, a = todo.get_nowait()
            except queue.Empty:
                return
            time.sleep(max(0.0, t0 + k * interval - time.monotonic()))
            a.calling_ae = f"BENCH{slot:02d}"
            cmd = [str(servers.STORESCU), "-aet", a.calling_ae, "-aec", CALLED_AE, "+sd"]
            cmd += [servers.HOST, str(port), str(data.root / a.folder)]
            with open(logs / f"{a.folder}.log", "wb") as out:
                a.started = time.time()
                try:
                    a.exit_code = subprocess.run(
                        cmd, env=env, stdin=subprocess.DEVNULL, stdout=out,
                        stderr=subprocess.STDOUT, timeout=SENDER_TIMEOUT_S, check=False,
                    ).returncode  # fmt: skip
                except subprocess.TimeoutExpired:
                    a.exit_code = -1
                a.ended = time.time()
            done.append(a)

    threads = [threading.Thread(target=sender, args=(i,)) for i in range(parallel)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return done


# --- waiting and reading the tracker -----------------------------------------------------------


def open_tracker(data_dir: Path) -> Any:
    from store_scp.tracking.sqlite import SqliteTracker

    return SqliteTracker(data_dir / "tracker.sqlite3")


def sample(tracker: Any, o: Outcome) -> tuple[dict[str, int], dict[str, int]]:
    """Counts of receipts per state and of jobs per status, kept in `o.timeline`."""
    counts = tracker.counts_by_state()
    statuses = [j.status.value for j in tracker.jobs()]
    jobs = {s: statuses.count(s) for s in sorted(set(statuses))}
    o.timeline.append({"t": round(time.time(), 3), "states": counts, "jobs": jobs})
    o.states = counts
    return counts, jobs


def watch_while_sending(tracker: Any, o: Outcome, sent: threading.Event) -> None:
    last_print = time.monotonic()
    while not sent.wait(1.0):
        counts, jobs = sample(tracker, o)
        if time.monotonic() - last_print >= 10:
            last_print = time.monotonic()
            log(f"  sending: receipts {counts}, jobs {jobs}")


def wait_final(tracker: Any, server: Server, o: Outcome, timeout: float) -> None:
    """Sample every second until every instance is IMPORTED or FAILED, the server dies, or
    `timeout` seconds pass (then `o.errors` says so, with the counts)."""
    deadline = time.monotonic() + timeout
    last_print = time.monotonic()
    while True:
        counts, jobs = sample(tracker, o)
        tracked = sum(counts.values())
        if tracked >= o.instances and counts["IMPORTED"] + counts["FAILED"] == tracked:
            return
        if server.proc.poll() is not None:
            o.errors.append(f"store-scp exited (code {server.proc.returncode}): {counts}")
            return
        if time.monotonic() > deadline:
            o.errors.append(
                f"not every instance IMPORTED or FAILED {timeout:.0f} s after the last "
                f"storescu: receipts {counts} (sent {o.instances}), jobs {jobs}"
            )
            return
        if time.monotonic() - last_print >= 10:
            last_print = time.monotonic()
            log(f"  importing: receipts {counts}, jobs {jobs}")
        time.sleep(1.0)


def read_results(tracker: Any, o: Outcome, studies: dict[str, str], per_study: int) -> None:
    """Per study: its receipts (newest per instance), its time to available; per job: its
    phases. Adds an error for every study that is not whole and IMPORTED."""
    o.first_receipt = math.inf
    image_sets: dict[str, bool] = {}
    for folder, study_uid in sorted(studies.items()):
        rows = tracker.where(study_uid)
        states = [r.state.value for r in rows]
        imported = [r for r in rows if r.state.value == "IMPORTED"]
        if len(rows) != per_study or len(imported) != per_study:
            o.errors.append(
                f"study {folder}: {len(rows)} of {per_study} instances tracked, "
                f"{len(imported)} IMPORTED ({ {s: states.count(s) for s in set(states)} })"
            )
        if not rows:
            continue
        last_received = max(r.received_at for r in rows)
        available = max((r.state_changed_at for r in imported), default=math.nan)
        o.first_receipt = min(o.first_receipt, min(r.received_at for r in rows))
        o.last_receipt = max(o.last_receipt, last_received)
        if imported:
            o.last_available = max(o.last_available, available)
        for r in imported:
            image_sets[r.image_set_id] = bool(r.is_primary)
        o.studies.append(
            {
                "folder": folder,
                "study_uid": study_uid,
                "instances": len(rows),
                "imported": len(imported),
                "image_sets": sorted({r.image_set_id for r in imported}),
                "jobs": sorted({r.job_id for r in imported if r.job_id}),
                "last_received_at": last_received,
                "available_at": available,
                "time_to_available_s": available - last_received,
            }
        )
    if not o.studies:
        o.first_receipt = 0.0
    o.image_sets = len(image_sets)
    o.non_primary = sum(1 for primary in image_sets.values() if not primary)
    for job in sorted(tracker.jobs(), key=lambda j: j.created_at):
        batch = tracker.batch(job.batch_id)
        o.jobs.append(
            {
                "batch_id": job.batch_id,
                "job_id": job.job_id,
                "status": job.status.value,
                "counts": dict(job.counts),
                "files": batch.files if batch else None,
                "first_receipt_at": batch.first_receipt_at if batch else None,
                "last_receipt_at": batch.last_receipt_at if batch else None,
                "sealed_at": batch.sealed_at if batch else None,
                "start_recorded_at": job.created_at,
                "submitted_at": job.submitted_at,
                "ended_at": job.ended_at,
                "results_at": job.results_at,
            }
        )


def check_api(port: int, o: Outcome, series_per_study: int) -> None:
    """Every study's image sets, found through the datastore's HealthImaging API (boto3 over
    HTTP, SearchImageSets by Study Instance UID), are the ones the tracker names."""
    import boto3
    from botocore.config import Config

    client = boto3.client(
        "medical-imaging",
        endpoint_url=f"http://{servers.HOST}:{port}",
        region_name="us-east-1",
        aws_access_key_id="bench",
        aws_secret_access_key="bench",
        config=Config(inject_host_prefix=False),
    )
    [store] = client.list_datastores()["datastoreSummaries"]
    for s in o.studies:
        found = client.search_image_sets(
            datastoreId=store["datastoreId"],
            searchCriteria={
                "filters": [
                    {"values": [{"DICOMStudyInstanceUID": s["study_uid"]}], "operator": "EQUAL"}
                ]
            },
        )["imageSetsMetadataSummaries"]
        ids = sorted(x["imageSetId"] for x in found)
        if ids != s["image_sets"] or len(ids) != series_per_study:
            o.errors.append(
                f"study {s['folder']}: the API lists {len(ids)} image sets, the tracker "
                f"{len(s['image_sets'])}, expected {series_per_study}"
            )
        o.api_checked_studies += 1


# --- the report --------------------------------------------------------------------------------


def _s(value: float) -> str:
    return "-" if value != value else f"{value:,.1f} s"


def _phases(jobs: list[dict[str, Any]]) -> list[tuple[str, list[float]]]:
    def span(a: str, b: str) -> list[float]:
        return [j[b] - j[a] for j in jobs if j.get(a) is not None and j.get(b) is not None]

    return [
        ("batch open: first -> last receipt", span("first_receipt_at", "last_receipt_at")),
        ("last receipt -> batch sealed", span("last_receipt_at", "sealed_at")),
        ("sealed -> job start recorded", span("sealed_at", "start_recorded_at")),
        ("job submitted -> ended (datastore)", span("submitted_at", "ended_at")),
        ("job ended -> results recorded", span("ended_at", "results_at")),
    ]


def render(o: Outcome) -> str:
    f = figures(o)
    e = o.environment
    per_study = o.instances // o.associations if o.associations else 0
    out = [
        "# store-scp pipeline bench",
        "",
        f"- command: `{o.command}`",
        f"- machine: {e.get('cpu')}, {e.get('cores')} cores, Linux {e.get('kernel')}, "
        f"Python {e.get('python')}; data on {e.get('data_filesystem')}; "
        f"store-scp at {e.get('store_scp_commit')}",
        f"- data: {o.instances:,} CT instances of {PIXELS} x {PIXELS} pixels "
        f"({o.file_bytes / o.instances / 1e3:.1f} KB each, {o.file_bytes / 1e6:,.1f} MB), "
        f"{o.associations} studies of {per_study} instances in series of "
        f"{datagen.STUDY_SERIES_SIZE}",
        f"- sender: DCMTK storescu, one association per study, {o.parallel} at a time "
        "(one calling AE each), `TCP_NODELAY=1`; "
        + (f"one association started every {o.interval:g} s" if o.interval else "back to back"),
        "- server: `store-scp serve` on its defaults: "
        + ", ".join(f"{k} {v}" for k, v in o.server_settings.items())
        + (
            "; **changed for this run**: " + ", ".join(f"`{k}={v}`" for k, v in o.overrides.items())
            if o.overrides
            else ""
        ),
        "",
        "| measure | value | check |",
        "|---|---:|---|",
    ]
    counts = o.states
    all_in = counts.get("IMPORTED", 0) == o.instances and sum(counts.values()) == o.instances
    out.append(
        f"| instances sent / tracked / IMPORTED / FAILED | {o.instances:,} / "
        f"{sum(counts.values()):,} / {counts.get('IMPORTED', 0):,} / "
        f"{counts.get('FAILED', 0):,} | {'ok' if all_in else 'FAILED'} |"
    )
    out.append(
        f"| receive only: first storescu start -> last exit | {_s(f['send_s'])} = "
        f"{f['receive_per_s']:,.0f} instances/s | |"
    )
    out.append(
        f"| whole pipeline: first receipt -> last IMPORTED | {_s(f['pipeline_s'])} = "
        f"{f['pipeline_per_s']:,.0f} instances/s | |"
    )
    out.append(
        f"| import jobs | {f['jobs']:.0f} = {f['jobs_per_1000']:.2f} per 1,000 instances | |"
    )
    tta_ok = f["tta_max_s"] < TARGET_SECONDS
    out.append(
        f"| time to available p50 / p95 / max | {_s(f['tta_p50_s'])} / {_s(f['tta_p95_s'])} / "
        f"{_s(f['tta_max_s'])} | every study < {TARGET_SECONDS:.0f} s: "
        f"{'ok' if tta_ok else 'MISS'} ({f['studies_over_target']:.0f} of "
        f"{len(o.studies)} over) |"
    )
    out.append(
        f"| image sets | {o.image_sets:,} ({o.non_primary} non-primary); API checked for "
        f"{o.api_checked_studies} studies | |"
    )
    out.append(
        f"| server CPU / peak RSS | {o.server_cpu_s:,.0f} s / {o.server_peak_rss_mb:,.0f} MB | |"
    )
    lg = o.server_log
    out.append(
        f"| server log: warnings / errors / `database is locked` | {lg.get('WARNING', 0)} / "
        f"{lg.get('ERROR', 0) + lg.get('CRITICAL', 0)} / {lg.get('database is locked', 0)} | |"
    )
    out.append("")
    out.append(
        "Time to available, per study: from the receipt of its last instance (the tracker's "
        "`received_at`, taken when the C-STORE-RSP is sent) to the moment its last instance "
        "became IMPORTED in the tracker (`state_changed_at`: the job's results recorded, the "
        "image sets readable through the API). Percentiles are nearest-rank over the studies."
    )
    if o.jobs:
        out += [
            "",
            "| import job phase (over jobs) | median | max |",
            "|---|---:|---:|",
        ]
        for name, values in _phases(o.jobs):
            if values:
                out.append(f"| {name} | {_s(statistics.median(values))} | {_s(max(values))} |")
        files = [j["files"] for j in o.jobs if j["files"] is not None]
        if files:
            out.append(f"| files per job | {statistics.median(files):,.0f} | {max(files):,} |")
    m = o.metrics
    if m:
        started = m.get('store_scp_import_jobs_total{event="started"}', 0)
        done = m.get("store_scp_time_to_available_seconds_count", 0)
        total = m.get("store_scp_time_to_available_seconds_sum", 0)
        le120 = m.get('store_scp_time_to_available_seconds_bucket{le="120.0"}', 0)
        mean = f"{total / done:.1f} s" if done else "-"
        out += [
            "",
            f"/metrics: {started:.0f} jobs started; store_scp_time_to_available_seconds "
            f"count {done:.0f}, mean {mean}, {le120:.0f} at or under 120 s.",
        ]
    if o.errors:
        out += ["", "**Errors:**", ""] + [f"- {err}" for err in o.errors]
    out += [
        "",
        "A shared or virtual machine moves these numbers with whatever else runs on it.",
    ]
    return "\n".join(out)


# --- main --------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="2,000 instances in 20 associations")
    ap.add_argument("--instances", type=int, help="instances to send (default 20000)")
    ap.add_argument("--associations", type=int, help="studies = associations (default 200)")
    ap.add_argument("--parallel", type=int, default=4, help="associations at once (default 4)")
    ap.add_argument(
        "--interval",
        type=float,
        default=0.0,
        help="start an association every INTERVAL seconds at most (default 0: back to back, "
        "a burst)",
    )
    ap.add_argument(
        "--timeout",
        type=float,
        default=900.0,
        help="seconds after the last storescu exits for every instance to be IMPORTED or "
        "FAILED (default 900)",
    )
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="STORE_SCP_NAME=VALUE",
        help="run the server with this setting changed (repeatable; the report says so)",
    )
    ap.add_argument("--json", action="store_true", help="print the JSON document, not the table")
    ap.add_argument("--out", type=Path, help="results file (default bench/results/pipeline-*)")
    ap.add_argument(
        "--work-dir",
        type=Path,
        default=BENCH_DIR / ".data",
        help="data cache and the server's data folder (default bench/.data)",
    )
    ap.add_argument("--keep", action="store_true", help="keep the server's data folder")
    args = ap.parse_args(argv)
    args.instances = args.instances or (2000 if args.quick else 20000)
    args.associations = args.associations or (20 if args.quick else 200)
    if args.associations < 1 or args.instances % args.associations:
        ap.error("--instances must be a multiple of --associations")
    if args.instances // args.associations % datagen.STUDY_SERIES_SIZE:
        ap.error(f"instances per study must be a multiple of {datagen.STUDY_SERIES_SIZE}")
    if not 1 <= args.parallel <= 64:
        ap.error("--parallel must be 1..64 (the server's default association limit)")
    if args.interval < 0:
        ap.error("--interval must not be negative")
    args.overrides = {}
    for item in args.set:
        name, sep, value = item.partition("=")
        if not sep or not name.startswith("STORE_SCP_"):
            ap.error(f"--set takes STORE_SCP_NAME=VALUE, not {item!r}")
        args.overrides[name] = value
    return args


def server_settings() -> dict[str, str]:
    """The defaults that decide the numbers, as the server's code declares them."""
    from store_scp.config import Settings

    fields = Settings.model_fields
    names = {
        "seal quiet": ("seal_quiet_seconds", " s"),
        "seal max age": ("seal_max_age_seconds", " s"),
        "start rate": ("import_start_rate", "/s"),
        "max concurrent jobs": ("max_concurrent_import_jobs", ""),
        "fsync": ("fsync", ""),
    }
    return {label: f"{fields[name].default}{unit}" for label, (name, unit) in names.items()}


def run(args: argparse.Namespace, command: str) -> Outcome:
    work_dir: Path = args.work_dir.resolve()
    run_dir = work_dir / "pipeline-run"
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    n_studies = args.associations
    spec = datagen.DataSpec(
        f"studies-{n_studies}x{args.instances // n_studies}-{PIXELS}px",
        "ct",
        args.instances,
        PIXELS,
        PIXELS,
        parts=n_studies,
    )
    data = datagen.ensure_studies(work_dir / "cache", spec)
    studies = datagen.study_uids(data)
    o = Outcome(
        command=command,
        date=dt.datetime.now().isoformat(timespec="seconds"),
        environment=environment_facts(work_dir),
        instances=data.files,
        associations=n_studies,
        parallel=args.parallel,
        interval=args.interval,
        file_bytes=data.total_bytes,
        server_settings=server_settings(),
        overrides=args.overrides,
    )
    server = Server(run_dir / "data", run_dir / "server.log", args.overrides)
    tracker = None
    try:
        server.wait_ready()
        tracker = open_tracker(server.data_dir)
        mon = TreeMonitor(server.proc.pid, interval=0.5)
        cpu0 = mon.cpu_seconds()
        mon.reset_peak()
        mon.start()
        log(
            f"sending {data.files:,} instances in {n_studies} associations, {args.parallel} at once"
        )
        sent = threading.Event()
        watcher = threading.Thread(target=watch_while_sending, args=(tracker, o, sent))
        o.send_started = time.time()
        watcher.start()
        try:
            assocs = send_all(
                server.ports["plain"], data, studies, args.parallel, args.interval, run_dir
            )
        finally:
            o.send_ended = time.time()
            sent.set()
            watcher.join()
        o.association_runs = [asdict(a) for a in assocs]
        failed = [a for a in assocs if a.exit_code != 0]
        for a in failed:
            o.errors.append(f"storescu for {a.folder} exited with {a.exit_code}")
        log(f"sent in {o.send_ended - o.send_started:.1f} s; waiting for the imports")
        wait_final(tracker, server, o, args.timeout)
        mon.stop()
        o.server_cpu_s = mon.cpu_seconds() - cpu0
        o.server_peak_rss_mb = mon.peak_rss_kib / 1024
        read_results(tracker, o, studies, data.files // n_studies)
        if sum(o.states.values()) != o.instances:
            o.errors.append(
                f"the tracker holds {sum(o.states.values())} receipts, not {o.instances}"
            )
        if not o.errors:
            check_api(
                server.ports["datastore_api"],
                o,
                data.files // n_studies // datagen.STUDY_SERIES_SIZE,
            )
        with contextlib.suppress(OSError):
            o.metrics = server.metrics()
    except RuntimeError as exc:
        o.errors.append(str(exc))
    finally:
        if tracker is not None:
            tracker.close()
        code = server.stop()
        if code not in (0, None):
            o.errors.append(f"store-scp exited with code {code} when stopped")
        o.server_log = server.log_summary()
    o.ok = not o.errors
    if o.ok and not args.keep:
        shutil.rmtree(run_dir / "data", ignore_errors=True)
    else:
        log(f"server log and data kept under {rel(run_dir)}")
    return o


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    for tool in (servers.STORESCU, servers.ECHOSCU):
        if not tool.exists():
            log(f"{tool.name} not found in {tool.parent}: apt-get install -y dcmtk")
            return 2
    command = "python3 bench/pipeline.py" + "".join(f" {a}" for a in (argv or sys.argv[1:]))
    o = run(args, command)
    text = render(o)
    document = {**asdict(o), "figures": figures(o)}
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    out: Path = args.out or BENCH_DIR / "results" / f"pipeline-{stamp}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(document, indent=1))
    out.with_suffix(".md").write_text(text + "\n")
    print(json.dumps(document, indent=1) if args.json else text)
    log(f"results: {rel(out)} and {rel(out.with_suffix('.md'))}")
    return 0 if o.ok else 1


if __name__ == "__main__":
    sys.exit(main())
