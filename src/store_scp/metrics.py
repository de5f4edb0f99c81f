"""Prometheus metrics of store-scp, on a registry of their own (:data:`REGISTRY`).

=============================================  ==========================================
``store_scp_associations_total{result}``       accepted, rejected, aborted, refused_cidr
``store_scp_associations_active``              associations open now (gauge)
``store_scp_objects_received_total{status}``   C-STORE results by status (``0x0000``, ``0xA700``)
``store_scp_bytes_received_total``             dataset bytes received
``store_scp_store_latency_seconds``            last fragment received -> durable commit
``store_scp_tls_handshakes_total{result}``     TLS handshakes by result
``store_scp_dimse_messages_total{command}``    DIMSE messages received, by command
``store_scp_cleanups_total{action}``           objects deleted or quarantined after import
=============================================  ==========================================

Several processes (``STORE_SCP_PROCESSES`` > 1, SO_REUSEPORT): every process counts on its own,
so one process's ``/metrics`` would show a fraction of the traffic. Set the environment variable
``PROMETHEUS_MULTIPROC_DIR`` to an empty directory *before* any process imports this module (or
``prometheus_client``): the values are then kept in memory-mapped files in that directory and
:func:`exposition` aggregates the files of all processes, whichever process the scrape reaches.
The supervising process empties the directory at start (:func:`clear_multiprocess_dir`) and
calls :func:`mark_process_dead` when a worker exits, so the live gauge drops its share. Without
the variable (one process, the default) the metrics live in memory and nothing is written.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

__all__ = [
    "ASSOCIATIONS",
    "ASSOCIATIONS_ACTIVE",
    "ASSOCIATION_RESULTS",
    "BYTES_RECEIVED",
    "CONTENT_TYPE",
    "DIMSE_MESSAGES",
    "MULTIPROC_ENV",
    "OBJECTS_RECEIVED",
    "REGISTRY",
    "STORE_LATENCY",
    "STORE_LATENCY_BUCKETS",
    "TLS_HANDSHAKES",
    "clear_multiprocess_dir",
    "exposition",
    "mark_process_dead",
    "multiprocess_dir",
    "status_label",
]

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
CONTENT_TYPE = CONTENT_TYPE_LATEST

REGISTRY = CollectorRegistry(auto_describe=True)

ASSOCIATION_RESULTS = ("accepted", "rejected", "aborted", "refused_cidr")

ASSOCIATIONS = Counter(
    "store_scp_associations",
    "Associations by result (accepted, rejected, aborted, refused_cidr).",
    ["result"],
    registry=REGISTRY,
)
ASSOCIATIONS_ACTIVE = Gauge(
    "store_scp_associations_active",
    "Associations open now.",
    registry=REGISTRY,
    multiprocess_mode="livesum",
)
OBJECTS_RECEIVED = Counter(
    "store_scp_objects_received",
    "C-STORE requests answered, by DIMSE status (hex, e.g. 0x0000).",
    ["status"],
    registry=REGISTRY,
)
BYTES_RECEIVED = Counter(
    "store_scp_bytes_received",
    "Dataset bytes received in C-STORE requests.",
    registry=REGISTRY,
)
STORE_LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
STORE_LATENCY = Histogram(
    "store_scp_store_latency_seconds",
    "Seconds from the last fragment of a C-STORE to the durable commit of the object.",
    buckets=STORE_LATENCY_BUCKETS,
    registry=REGISTRY,
)
TLS_HANDSHAKES = Counter(
    "store_scp_tls_handshakes",
    "TLS handshakes by result.",
    ["result"],
    registry=REGISTRY,
)
DIMSE_MESSAGES = Counter(
    "store_scp_dimse_messages",
    "DIMSE messages received, by command (e.g. C-ECHO-RQ, C-STORE-RQ).",
    ["command"],
    registry=REGISTRY,
)

# Known label values start at zero, so dashboards and rate() see them before the first event.
for _result in ASSOCIATION_RESULTS:
    ASSOCIATIONS.labels(result=_result)
OBJECTS_RECEIVED.labels(status="0x0000")


# Per-object label lookups, cached: labels() costs a lock and a tuple per call on the
# receiver's hot path, and both label sets are small (statuses, DIMSE commands).
@functools.cache
def objects_received(status: str) -> Any:
    return OBJECTS_RECEIVED.labels(status=status)


@functools.cache
def dimse_messages(command: str) -> Any:
    return DIMSE_MESSAGES.labels(command=command)


IMPORT_JOBS = Counter(
    "store_scp_import_jobs",
    "Import jobs by event: started, completed (COMPLETED, maybe with failed files), failed.",
    ["event"],
    registry=REGISTRY,
)
IMPORT_JOB_INSTANCES = Counter(
    "store_scp_import_job_instances",
    "Instances in the import jobs started.",
    registry=REGISTRY,
)
JOBS_PER_THOUSAND = Gauge(
    "store_scp_import_jobs_per_1000_instances",
    "Import jobs started per 1,000 instances they import, since the worker started (HealthImaging "
    "throttles job starts: few large jobs are the aim).",
    registry=REGISTRY,
    multiprocess_mode="mostrecent",
)
NON_PRIMARY = Counter(
    "store_scp_non_primary_instances",
    "Instances imported into a non-primary image set (their metadata conflicts with the "
    "primary's): conflicts to reconcile, not failures.",
    registry=REGISTRY,
)
TIME_TO_AVAILABLE = Histogram(
    "store_scp_time_to_available_seconds",
    "Seconds from the last object of a study being received to its import job's results "
    "recorded (its image sets available); one observation per study and job.",
    buckets=(5, 10, 20, 30, 60, 90, 120, 180, 300, 600, 1800, 3600),
    registry=REGISTRY,
)
for _event in ("started", "completed", "failed"):
    IMPORT_JOBS.labels(event=_event)
CLEANUPS = Counter(
    "store_scp_cleanups",
    "Objects cleaned up after their outcome: deleted (imported, kept long enough) or "
    "quarantined (failed).",
    ["action"],
    registry=REGISTRY,
)
for _action in ("deleted", "quarantined"):
    CLEANUPS.labels(action=_action)


class TrackerCollector:
    """Receipts per state and the oldest un-imported receipt's age, read from the tracker at
    scrape time (so several processes never count twice)."""

    def __init__(self, tracker: Any) -> None:
        self.tracker = tracker

    def collect(self) -> Any:
        from prometheus_client.core import GaugeMetricFamily

        states = GaugeMetricFamily(
            "store_scp_receipts", "Receipts by state, from the tracker.", labels=["state"]
        )
        for state, count in self.tracker.counts_by_state().items():
            states.add_metric([state], count)
        yield states
        age = self.tracker.oldest_unimported_age()
        yield GaugeMetricFamily(
            "store_scp_oldest_unimported_age_seconds",
            "Age of the oldest receipt not yet IMPORTED or FAILED (0 when none).",
            value=age or 0.0,
        )


_tracker_collector: TrackerCollector | None = None


def register_tracker(tracker: Any) -> None:
    """Expose the tracker's state counts on /metrics (the process serving /metrics)."""
    global _tracker_collector
    if _tracker_collector is not None:
        REGISTRY.unregister(_tracker_collector)
    _tracker_collector = TrackerCollector(tracker)
    REGISTRY.register(_tracker_collector)


def status_label(status: int) -> str:
    """The ``status`` label of a DIMSE status: ``0x0000``, ``0xA700``, ..."""
    return f"0x{status:04X}"


def multiprocess_dir() -> str | None:
    """The multiprocess directory, when multiprocess mode is on."""
    return os.environ.get(MULTIPROC_ENV) or None


def exposition() -> tuple[bytes, str]:
    """The Prometheus text exposition and its content type.

    In multiprocess mode, the aggregate of every process that wrote to the directory.
    """
    if multiprocess_dir():
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        if _tracker_collector is not None:
            registry.register(_tracker_collector)
        return generate_latest(registry), CONTENT_TYPE
    return generate_latest(REGISTRY), CONTENT_TYPE


def clear_multiprocess_dir(path: str | os.PathLike[str]) -> None:
    """Create ``path`` or delete the metric files left in it by an earlier run."""
    directory = Path(path)
    directory.mkdir(parents=True, exist_ok=True)
    for entry in directory.glob("*.db"):
        entry.unlink(missing_ok=True)


def mark_process_dead(pid: int) -> None:
    """Tell multiprocess mode that worker ``pid`` exited (its live gauge values go away)."""
    if multiprocess_dir():
        multiprocess.mark_process_dead(pid)
