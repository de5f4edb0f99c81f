"""Wire the configured adapters together and run the receiver until told to stop."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import ssl
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .config import Settings
from .pipeline.policy import SealPolicy
from .storage.base import ObjectStore
from .tracking.base import Tracker

if TYPE_CHECKING:
    from .tracking.dynamodb import DynamoDbTracker

log = logging.getLogger("store_scp.app")

#: The import role named in the embedded datastore's jobs when STORE_SCP_IMPORT_ROLE_ARN is unset.
EMBEDDED_ROLE_NAME = "store-scp-embedded-import"


def tracker_path(settings: Settings) -> Path:
    return Path(settings.data_dir) / "tracker.sqlite3"


def make_store(settings: Settings) -> ObjectStore:
    if settings.object_store == "s3":
        from .storage.s3 import S3ObjectStore

        assert settings.s3_bucket is not None
        return S3ObjectStore(
            settings.s3_bucket,
            prefix=settings.s3_prefix,
            staging_dir=Path(settings.data_dir) / "staging",
            endpoint_url=settings.s3_endpoint_url,
            region=settings.s3_region,
            kms_key_id=settings.s3_kms_key_id,
        )
    from .storage.local import LocalObjectStore

    return LocalObjectStore(Path(settings.data_dir), fsync=settings.fsync)


def make_dynamodb_tracker(settings: Settings) -> DynamoDbTracker:
    from .tracking.dynamodb import DynamoDbTracker

    return DynamoDbTracker(
        settings.dynamodb_table_prefix,
        endpoint_url=settings.dynamodb_endpoint_url,
        region_name=settings.dynamodb_region,
    )


def make_tracker(settings: Settings) -> Tracker:
    """The configured tracker; raises TrackerError when DynamoDB tables or indexes are
    missing."""
    if settings.tracker == "dynamodb":
        from .tracking.base import TrackerError

        tracker = make_dynamodb_tracker(settings)
        missing = tracker.missing_tables()
        if missing:
            raise TrackerError(
                f"DynamoDB tracker tables missing: {', '.join(missing)}; create them with "
                "`store-scp create-tables` (or deploy the CDK app)"
            )
        indexes = tracker.missing_indexes()
        if indexes:
            raise TrackerError(
                f"DynamoDB tracker indexes missing: {', '.join(indexes)}; tables of an older "
                "version: bring them up to date with `store-scp create-tables`"
            )
        return tracker
    from .tracking.sqlite import SqliteTracker

    return SqliteTracker(tracker_path(settings))


def make_output_store(settings: Settings) -> ObjectStore | None:
    """Where import jobs write their outputs when it is not the object store's
    `import-output/` folder (STORE_SCP_IMPORT_OUTPUT_URI); None otherwise."""
    if not settings.import_output_uri:
        return None
    from .storage.s3 import S3ObjectStore

    bucket, _, prefix = settings.import_output_uri.removeprefix("s3://").partition("/")
    return S3ObjectStore(
        bucket,
        prefix=prefix,
        staging_dir=Path(settings.data_dir) / "staging",
        endpoint_url=settings.s3_endpoint_url,
        region=settings.s3_region,
        kms_key_id=settings.s3_kms_key_id,
    )


def make_worker(
    settings: Settings, store: ObjectStore, tracker: Tracker, *, owner: str
) -> tuple[Any, Any]:
    """The import pipeline (in a background thread) on the configured datastore, and that
    datastore."""
    from .datastore.rules import import_rejection
    from .pipeline.cleanup import DAY, CleanupPolicy
    from .pipeline.policy import StartLimiter
    from .pipeline.worker import Pipeline, PipelineConfig, Worker

    datastore: Any
    role_arn = settings.import_role_arn
    if settings.datastore == "healthimaging":
        from .datastore.healthimaging import HealthImagingDatastore

        assert settings.healthimaging_datastore_id is not None  # checked by the settings
        datastore = HealthImagingDatastore(
            settings.healthimaging_datastore_id,
            endpoint_url=settings.healthimaging_endpoint_url,
            region=settings.healthimaging_region,
        )
    else:
        from .datastore.local import LocalDatastore

        datastore = LocalDatastore(
            Path(settings.data_dir) / "datastore",
            fsync=settings.fsync,
            s3_endpoint_url=settings.s3_endpoint_url,
            job_threads=settings.datastore_job_threads,
        )
        # The embedded datastore assumes no role, but its API reports each job's role as
        # HealthImaging does (botocore's model requires an IAM role ARN there).
        role_arn = role_arn or f"arn:aws:iam::{datastore.account_id}:role/{EMBEDDED_ROLE_NAME}"
    config = PipelineConfig(
        owner=owner,
        role_arn=role_arn,
        limiter=StartLimiter(
            rate_per_second=settings.import_start_rate,
            max_concurrent_jobs=settings.max_concurrent_import_jobs,
        ),
        cleanup=CleanupPolicy(
            keep_imported_seconds=None
            if settings.keep_imported_days is None
            else settings.keep_imported_days * DAY,
            lease_seconds=settings.cleanup_lease_seconds,
        ),
    )
    pipeline = Pipeline(
        tracker,
        store,
        datastore,
        config,
        importable=import_rejection,
        outputs=make_output_store(settings),
    )
    return Worker(pipeline), datastore


def install_event_loop_policy() -> None:
    try:
        import uvloop
    except ImportError:
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def _quiet_tls_errors(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """A failed or timed-out TLS handshake is the peer's problem: one warning line, no
    traceback. Everything else goes to the default handler."""
    exc = context.get("exception")
    if isinstance(exc, ssl.SSLError | ConnectionResetError | TimeoutError) and (
        "handshake" in str(context.get("message", "")).lower() or isinstance(exc, ssl.SSLError)
    ):
        from . import metrics

        metrics.TLS_HANDSHAKES.labels(result="failed").inc()
        transport = context.get("transport")
        peer = transport.get_extra_info("peername") if transport is not None else None
        log.warning(
            "TLS handshake failed",
            extra={"peer": f"{peer[0]}:{peer[1]}" if peer else "?", "why": str(exc)[:200]},
        )
        return
    loop.default_exception_handler(context)


async def serve(
    settings: Settings,
    *,
    process_count: int = 1,
    run_reconciler: bool = True,
    run_probe: bool = True,
    ready_file: Path | None = None,
) -> None:
    """Run one receiver process until SIGTERM/SIGINT, then shut down gracefully."""
    from .server.listener import Server

    loop = asyncio.get_running_loop()
    store = make_store(settings)
    tracker = make_tracker(settings)
    ssl_context = None
    if settings.tls_enabled:
        from .server.tls import server_context

        assert settings.tls_cert is not None and settings.tls_key is not None
        ssl_context = server_context(
            settings.tls_cert, settings.tls_key, ca=settings.tls_ca, profile=settings.tls_profile
        )
    server = Server(settings, store, tracker, ssl_context=ssl_context, process_count=process_count)
    server.seal_policy = SealPolicy(
        quiet_seconds=settings.seal_quiet_seconds,
        max_age_seconds=settings.seal_max_age_seconds,
        max_files=settings.max_files_per_job,
    )
    server.batches.max_files = settings.max_files_per_job
    server.batches.max_folders = settings.max_folders_per_job
    loop.set_exception_handler(_quiet_tls_errors)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    if run_reconciler:
        from .tracking.reconcile import reconcile

        # Objects committed by a process that died before its tracker write get their row,
        # before new receipts can race with it. The landing area holds what is not imported
        # yet and what is kept for STORE_SCP_KEEP_IMPORTED_DAYS; quarantine, retry copies
        # and job outputs are skipped.
        await loop.run_in_executor(None, reconcile, store, tracker)
    await server.start()

    runner = None
    if run_probe and settings.http_enabled:
        from . import metrics

        metrics.register_tracker(tracker)
        from .web.probe import make_probe_app, start_probe_server

        runner, http_port = await start_probe_server(
            make_probe_app(lambda: not stop.is_set()),
            settings.http_bind,
            settings.http_port,
            reuse_port=process_count > 1,
        )
        server.ports["http"] = http_port
    worker = api_runner = None
    if run_reconciler and settings.pipeline == "embedded":
        worker, datastore = make_worker(settings, store, tracker, owner=server.owner)
        worker.start()
        if settings.datastore == "local" and settings.datastore_api_port >= 0:
            from .datastore.api import start_api_server

            api_runner, api_port = await start_api_server(
                datastore, settings.datastore_api_bind, settings.datastore_api_port
            )
            server.ports["datastore_api"] = api_port

    if ready_file is not None:
        tmp = ready_file.with_suffix(".tmp")
        tmp.write_text(str(server.ports))
        os.replace(tmp, ready_file)
    log.info("ready", extra={"ports": server.ports, "pid": os.getpid()})

    await stop.wait()
    await server.shutdown(settings.shutdown_grace)
    if worker is not None:
        await loop.run_in_executor(None, worker.stop)
    if api_runner is not None:
        await api_runner.cleanup()
    if runner is not None:
        await runner.cleanup()
    tracker.close()
