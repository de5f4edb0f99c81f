"""The `store-scp` command line."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import signal
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any, NoReturn

import click

from . import __version__


def _give_up(exc: Exception, doing: str = "") -> NoReturn:
    """One line for an error the operator fixes, then exit status 1."""
    click.echo(f"store-scp: {doing}{exc}", err=True)
    sys.exit(1)


def _cannot_start(exc: Exception) -> NoReturn:
    _give_up(exc, "cannot start: ")


def _startup_errors() -> tuple[type[Exception], ...]:
    """What opening the data folder, object store or tracker raises for a cause the operator
    fixes (a wrong folder, no permission, a port in use, a damaged file, no AWS credentials,
    an endpoint out of reach, access denied): one line, no traceback."""
    from botocore.exceptions import BotoCoreError, ClientError

    from .storage.base import StorageError
    from .tracking.base import TrackerError

    return (OSError, StorageError, TrackerError, BotoCoreError, ClientError)


def _settings(config: Path | None, **overrides: Any) -> Any:
    from .config import ConfigError, load_settings

    try:
        return load_settings(config, **overrides)
    except ConfigError as exc:
        click.echo(f"store-scp: invalid configuration:\n{exc}", err=True)
        sys.exit(2)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="store-scp")
def main() -> None:
    """A DICOM Store SCP: keeps every received object durably and imports it into a
    HealthImaging datastore (embedded by default).

    Every setting can also come from a STORE_SCP_* environment variable or a TOML file
    (--config or STORE_SCP_CONFIG); flags win over both.
    """


_config_option = click.option(
    "--config",
    type=click.Path(path_type=Path, dir_okay=False),
    help="TOML file of settings [env STORE_SCP_CONFIG].",
)


@main.command()
@_config_option
@click.option("--port", type=int, help="Plain DICOM port [env STORE_SCP_PORT; 11112].")
@click.option("--bind", help="Address to listen on [env STORE_SCP_BIND; 0.0.0.0].")
@click.option("--ae-title", help="Our AE title [env STORE_SCP_AE_TITLE; STORE_SCP].")
@click.option(
    "--data-dir",
    type=click.Path(path_type=Path, file_okay=False),
    help="Where the embedded default keeps everything [env STORE_SCP_DATA_DIR; ./store-scp-data].",
)
@click.option(
    "--http-port",
    type=int,
    help="Probe port for /healthz, /readyz, /metrics; -1 disables [env STORE_SCP_HTTP_PORT; 8080].",
)
@click.option("--http-bind", help="Probe address [env STORE_SCP_HTTP_BIND; 0.0.0.0].")
@click.option("--tls-port", type=int, help="DICOM-TLS port [env STORE_SCP_TLS_PORT; 2762].")
@click.option("--tls-cert", type=click.Path(path_type=Path), help="PEM certificate; enables TLS.")
@click.option("--tls-key", type=click.Path(path_type=Path), help="PEM private key.")
@click.option("--tls-ca", type=click.Path(path_type=Path), help="CA bundle: require client certs.")
@click.option(
    "--processes", type=int, help="Receiver processes sharing the ports [env STORE_SCP_PROCESSES]."
)
@click.option(
    "--fsync/--no-fsync",
    default=None,
    help="Durable commits (default). --no-fsync is UNSAFE, for benchmarks only.",
)
@click.option(
    "--ready-file",
    type=click.Path(path_type=Path, dir_okay=False),
    hidden=True,
    help="Write the bound ports here once listening (for tests and tooling).",
)
def serve(config: Path | None, ready_file: Path | None, **flags: Any) -> None:
    """Receive DICOM objects (C-ECHO, C-STORE) and keep each one durably.

    Runs on the embedded default with no cloud account: objects under DATA_DIR/objects,
    tracking in DATA_DIR/tracker.sqlite3, and (unless STORE_SCP_PIPELINE=off) the import
    pipeline into the embedded datastore under DATA_DIR/datastore, whose HealthImaging API
    listens on 127.0.0.1:8090; imported objects are deleted after STORE_SCP_KEEP_IMPORTED_DAYS,
    failed ones moved to quarantine. An on-premises gateway uses S3, DynamoDB and AWS
    HealthImaging instead (STORE_SCP_OBJECT_STORE, STORE_SCP_TRACKER, STORE_SCP_DATASTORE).
    Stop with SIGTERM or Ctrl-C: listeners close, associations get STORE_SCP_SHUTDOWN_GRACE
    seconds to finish, then are aborted.
    """
    settings = _settings(config, **flags)
    try:
        Path(settings.data_dir).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        _cannot_start(exc)
    if settings.processes > 1:
        _serve_processes(settings, ready_file)
        return
    _run_one(settings, process_count=1, index=0, ready_file=ready_file)


def _run_one(settings: Any, *, process_count: int, index: int, ready_file: Path | None) -> None:
    from .app import install_event_loop_policy, serve
    from .logs import setup_logging

    setup_logging(settings.log_level, log_phi=settings.log_phi)
    install_event_loop_policy()
    try:
        asyncio.run(
            serve(
                settings,
                process_count=process_count,
                run_reconciler=index == 0,
                run_probe=index == 0,
                ready_file=ready_file if index == 0 else None,
            )
        )
    except _startup_errors() as exc:
        _cannot_start(exc)


_CRASHED = 70  # a receiver's exit status after an unexpected exception (EX_SOFTWARE)


def _serve_processes(settings: Any, ready_file: Path | None) -> None:
    """Pre-fork N receivers on the same ports (SO_REUSEPORT); restart any that dies."""
    metrics_dir = Path(settings.data_dir) / ".metrics"
    metrics_dir.mkdir(parents=True, exist_ok=True)
    for leftover in metrics_dir.glob("*.db"):
        leftover.unlink()
    # Must be set before prometheus_client is imported by any receiver.
    os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", str(metrics_dir))
    n = settings.processes
    children: dict[int, int] = {}
    stopping = failed = False

    def spawn(index: int) -> None:
        pid = os.fork()
        if pid == 0:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            code = _CRASHED
            try:
                _run_one(settings, process_count=n, index=index, ready_file=ready_file)
                code = 0
            except SystemExit as exc:  # 1: it cannot start (a port in use, say)
                code = exc.code if isinstance(exc.code, int) else _CRASHED
            except BaseException:
                traceback.print_exc()
            finally:
                os._exit(code)
        children[pid] = index

    def forward(signum: int, _frame: Any) -> None:
        nonlocal stopping
        stopping = True
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    for i in range(n):
        spawn(i)
    while children:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            break
        except InterruptedError:
            continue
        index = children.pop(pid, None)
        if index is None:
            continue
        from .metrics import mark_process_dead

        mark_process_dead(pid)
        code = os.waitstatus_to_exitcode(status)
        if code == 1 and not stopping:
            # A restart would fail the same way: stop them all, and exit 1 as one would.
            click.echo(f"store-scp: receiver {index} cannot start; stopping", err=True)
            failed = True
            forward(signal.SIGTERM, None)
        elif not stopping:
            how = f"killed by signal {-code}" if code < 0 else f"exited with status {code}"
            click.echo(f"store-scp: receiver {index} {how}; restarting", err=True)
            time.sleep(0.5)
            if not stopping:  # SIGTERM may have come during the pause
                spawn(index)
    if failed:
        sys.exit(1)


# --- the tracker, read by operators -------------------------------------------------------------


def _data_dir_option(what: str) -> Any:
    """--data-dir of a command that uses the server's data folder, saying how it uses it."""
    return click.option(
        "--data-dir",
        type=click.Path(path_type=Path, file_okay=False),
        help=f"{what} [env STORE_SCP_DATA_DIR; ./store-scp-data].",
    )


_read_data_dir_option = _data_dir_option("The data folder of the server to read")
_json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON, for scripts.")


def _open_tracker(settings: Any) -> Any:
    """The configured tracker (STORE_SCP_TRACKER): the SQLite file of DATA_DIR, or DynamoDB."""
    from .app import tracker_path

    if settings.tracker == "sqlite" and not tracker_path(settings).exists():
        click.echo(f"store-scp: no tracker database under {settings.data_dir}", err=True)
        sys.exit(1)
    return _make_tracker(settings)


def _make_tracker(settings: Any) -> Any:
    from .app import make_tracker

    try:
        return make_tracker(settings)
    except _startup_errors() as exc:
        _give_up(exc)


_UID_LIKE = re.compile(r"[0-9]+(\.[0-9]+)*")


def _instance_item(r: Any) -> dict[str, Any]:
    return {
        "sop_instance_uid": r.sop_instance_uid,
        "series_instance_uid": r.series_instance_uid,
        "study_instance_uid": r.study_instance_uid,
        "state": r.state.value,
        "image_set_id": r.image_set_id,
        "is_primary": r.is_primary,
        "job_id": r.job_id,
        "reason": r.reason,
        "received_at": r.received_at,
        "key": r.key,
        "attempt": r.attempt,
        "cleanup_action": r.cleanup_action,
        "cleanup_at": r.cleanup_at,
    }


def _attempt_item(a: Any) -> dict[str, Any]:
    return {
        "attempt": a.attempt,
        "batch_id": a.batch_id,
        "job_id": a.job_id,
        "started_at": a.started_at,
        "ended_at": a.ended_at,
        "outcome": a.outcome.value if a.outcome else None,
        "reason": a.reason,
        "image_set_id": a.image_set_id,
        "is_primary": a.is_primary,
        "cleanup_action": a.cleanup_action,
        "cleanup_at": a.cleanup_at,
    }


@main.command()
@click.argument("uid")
@click.option(
    "--history", is_flag=True, help="Every attempt of each instance's newest receipt, too."
)
@_config_option
@_read_data_dir_option
@_json_option
def where(
    uid: str, history: bool, config: Path | None, data_dir: Path | None, as_json: bool
) -> None:
    """Where a study, series or SOP instance is: state, image set, job, reason, and what was
    done with its object (deleted after import, quarantined after a failure).

    One line per SOP instance (its newest receipt). Exits 1 when nothing was received with
    this UID.
    """
    uid = uid.strip()  # pasted with the spaces around it
    tracker = _open_tracker(_settings(config, data_dir=data_dir))
    items = []
    for r in tracker.where(uid):
        item = _instance_item(r)
        if history:
            item["attempts"] = [_attempt_item(a) for a in tracker.attempts(r.key)]
        items.append(item)
    tracker.close()
    if as_json:
        click.echo(json.dumps({"uid": uid, "instances": items}, indent=2))
    else:
        if not items:
            hint = "" if _UID_LIKE.fullmatch(uid) else " (a UID is digits and dots)"
            click.echo(f"{uid}: not received{hint}")
        for it in items:
            where_to = it["image_set_id"] or ""
            if it["is_primary"] is False:
                where_to += " (non-primary: conflicting metadata, to reconcile)"
            detail = where_to or it["reason"] or ""
            if it["job_id"]:
                detail += f"  job {it['job_id']}"
            if it["cleanup_action"]:
                detail += f"  [{it['cleanup_action']}]"
            click.echo(f"{it['sop_instance_uid']}  {it['state']:<9}  {detail}".rstrip())
            for a in it.get("attempts", ()):
                outcome = a["outcome"] or "IMPORTING"
                why = a["image_set_id"] or a["reason"] or ""
                click.echo(
                    f"    attempt {a['attempt']}  {outcome:<9}  {a['batch_id'] or '-'}  {why}"
                )
    sys.exit(0 if items else 1)


@main.command()
@_config_option
@_read_data_dir_option
@_json_option
def failures(config: Path | None, data_dir: Path | None, as_json: bool) -> None:
    """SOP instances whose newest receipt failed, and why."""
    tracker = _open_tracker(_settings(config, data_dir=data_dir))
    items = [_instance_item(r) for r in tracker.failures()]
    tracker.close()
    if as_json:
        click.echo(json.dumps({"instances": items}, indent=2))
        return
    for it in items:
        click.echo(f"{it['sop_instance_uid']}  {it['reason']}")
    click.echo(f"{len(items)} failed instance(s)", err=True)


@main.command()
@click.option(
    "--status",
    type=click.Choice(
        ["STARTING", "SUBMITTED", "IN_PROGRESS", "COMPLETED", "FAILED"], case_sensitive=False
    ),
    help="Only jobs with this status.",
)
@_config_option
@_read_data_dir_option
@_json_option
def jobs(status: str | None, config: Path | None, data_dir: Path | None, as_json: bool) -> None:
    """Import jobs, oldest first."""
    from .tracking.base import JobStatus

    tracker = _open_tracker(_settings(config, data_dir=data_dir))
    records = tracker.jobs(JobStatus(status.upper()) if status else None)
    tracker.close()
    items = [
        {
            "batch_id": j.batch_id,
            "job_id": j.job_id,
            "status": j.status.value,
            "counts": dict(j.counts),
            "message": j.message,
            "created_at": j.created_at,
            "ended_at": j.ended_at,
            "output_uri": j.output_uri,
        }
        for j in records
    ]
    if as_json:
        click.echo(json.dumps({"jobs": items}, indent=2))
        return
    for it in items:
        counts = " ".join(f"{k}={v}" for k, v in it["counts"].items())
        line = f"{it['batch_id']}  {it['status']:<11}  {it['job_id'] or '-'}  {counts}"
        # Why a job failed (or why its start keeps failing) is what the operator came for.
        click.echo(f"{line}  {it['message']}" if it["message"] else line)


@main.command()
@click.argument("target", metavar="JOB|UID")
@_config_option
@_data_dir_option(
    "The data folder of the server whose receipts to retry. The retry writes to it: the new"
    " attempts into its tracker, copies of the objects into a retry batch (DynamoDB and S3"
    " instead, where configured)"
)
@_json_option
def retry(target: str, config: Path | None, data_dir: Path | None, as_json: bool) -> None:
    """Retry FAILED receipts: a new attempt on each, imported from a new batch.

    JOB (an import job id, or the batch id `jobs` lists): the job's FAILED receipts. UID (a
    study, series or SOP Instance UID): the newest receipt of each instance, when it is FAILED.
    Refused, with the reason: one with a newer receipt of its instance (an older copy is never
    imported after a newer one), one the datastore cannot import, one retried since or being
    imported right now; receipts that are not FAILED are left alone. The objects are copied
    into a retry batch, which the running pipeline (`serve` or `worker`) imports with its next
    job. Every attempt stays in the history (`where --history`).

    Exits 0 when everything selected was retried; 1 when something was refused or there was
    nothing to retry (every receipt is refused, and nothing changed, if no retry batch could be
    opened: run the retry again).
    """
    from .app import make_store
    from .pipeline.retry import Refused, retry_owner, select_for_job, select_for_uid
    from .pipeline.retry import retry as retry_receipts

    target = target.strip()  # pasted with the spaces around it
    settings = _settings(config, data_dir=data_dir)
    tracker = _open_tracker(settings)
    job = tracker.job(target) or tracker.batch_job(target)
    unknown = False
    if job is not None:
        chosen, refused = select_for_job(tracker, job)
        what = f"job {job.job_id or job.batch_id}"
    else:
        chosen, refused = select_for_uid(tracker, target)
        what = target
        unknown = not chosen and not refused and not tracker.where(target)
    try:
        store = make_store(settings)
    except _startup_errors() as exc:
        tracker.close()
        _give_up(exc)
    try:
        result = retry_receipts(
            tracker,
            store,
            chosen,
            owner=retry_owner(),
            lease_seconds=settings.batch_lease_seconds,
            now=time.time(),
        )
    finally:
        close = getattr(store, "close", None)
        if close is not None:
            close()
        tracker.close()
    refusals: list[Refused] = [*refused, *result.refused]
    if as_json:
        doc = {
            "target": target,
            "job_id": job.job_id if job else None,
            "batch_id": result.batch_id,
            "retried": [
                {"sop_instance_uid": r.sop_instance_uid, "key": r.key, "attempt": r.attempt}
                for r in result.retried
            ],
            "refused": [
                {
                    "sop_instance_uid": r.sop_instance_uid,
                    "key": r.key,
                    "state": r.state,
                    "why": r.why,
                }
                for r in refusals
            ],
        }
        click.echo(json.dumps(doc, indent=2))
    else:
        for r in result.retried:
            click.echo(f"retried  {r.sop_instance_uid}  attempt {r.attempt}")
        for refusal in refusals:
            click.echo(f"refused  {refusal.sop_instance_uid or refusal.key}  {refusal.why}")
    if result.retried:
        click.echo(
            f"{len(result.retried)} receipt(s) of {what} retried in batch {result.batch_id}: "
            "the pipeline imports it with its next job",
            err=True,
        )
    elif unknown:
        click.echo(
            f"store-scp: {target}: no such job, and nothing received with this UID", err=True
        )
    elif not refusals:
        click.echo(f"store-scp: nothing to retry: {what} has no FAILED receipt", err=True)
    if refusals:
        click.echo(f"store-scp: {len(refusals)} receipt(s) of {what} refused", err=True)
    sys.exit(0 if result.retried and not refusals else 1)


@main.command()
@_config_option
@_data_dir_option(
    "The data folder shared with the receivers. The pipeline reads and writes its tracker and"
    " objects (DynamoDB and S3 instead, where configured)"
)
def worker(config: Path | None, data_dir: Path | None) -> None:
    """Run the import pipeline alone (no DICOM listener), on the receivers' object store and
    tracker (a data folder shared with them, or S3 and DynamoDB): seals batches whose receiver
    died, starts import jobs, records results, deletes imported objects after
    STORE_SCP_KEEP_IMPORTED_DAYS and quarantines failed ones. Stop with SIGTERM or Ctrl-C."""
    from .app import make_store, make_tracker, make_worker
    from .logs import log_event, setup_logging

    settings = _settings(config, data_dir=data_dir)
    setup_logging(settings.log_level, log_phi=settings.log_phi)
    owner = f"worker-{os.getpid():x}"
    try:
        store = make_store(settings)
        tracker = make_tracker(settings)
        pipeline_worker, _datastore = make_worker(settings, store, tracker, owner=owner)
    except _startup_errors() as exc:
        _cannot_start(exc)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    pipeline_worker.start()
    # Which data folder and adapters it runs on: a wrong --data-dir shows here.
    log_event(
        logging.getLogger("store_scp.worker"),
        "INFO",
        "worker running",
        owner=owner,
        data_dir=str(Path(settings.data_dir).absolute()),
        object_store=settings.object_store,
        tracker=settings.tracker,
        datastore=settings.datastore,
        pid=os.getpid(),
    )
    stop.wait()
    pipeline_worker.stop()
    tracker.close()
    logging.getLogger("store_scp.worker").info("worker stopped")


@main.command("create-tables")
@_config_option
def create_tables(config: Path | None) -> None:
    """Create the DynamoDB tracker's six tables (on-demand capacity) where they are missing,
    and bring tables an older version made up to date: add the indexes they lack (one at a
    time, each waited for until ACTIVE) and fill in the index attributes of items an older
    version wrote. Run it once after each upgrade, before starting the new version; it can
    run while servers run, and a second run changes nothing.

    Prints each change on stdout (nothing when all was up to date), progress on stderr.
    For an on-premises gateway or a test account; an AWS deployment's CDK app creates them.
    Needs STORE_SCP_TRACKER=dynamodb; the tables are named STORE_SCP_DYNAMODB_TABLE_PREFIX-*.
    """
    from .app import make_dynamodb_tracker

    settings = _settings(config)
    if settings.tracker != "dynamodb":
        click.echo(
            "store-scp: STORE_SCP_TRACKER is sqlite: its file is created on first use", err=True
        )
        sys.exit(2)
    try:
        tracker = make_dynamodb_tracker(settings)
        changes = tracker.create_tables(progress=lambda line: click.echo(line, err=True))
    except _startup_errors() as exc:
        _give_up(exc)
    for line in changes:
        click.echo(line)
    done = f"{len(changes)} change(s)" if changes else "nothing to change"
    click.echo(f"the tracker tables are up to date: {done}", err=True)


def _register_client_commands() -> None:
    try:
        from .cli_scu import echo_command, send_command
    except ImportError:  # pragma: no cover - during development only
        return
    main.add_command(echo_command, "echo")
    main.add_command(send_command, "send")


_register_client_commands()

if __name__ == "__main__":
    main()
