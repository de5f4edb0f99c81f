"""Structured JSON logs on the standard :mod:`logging` module, with a PHI guard.

:func:`setup_logging` installs one handler on the root logger that writes one JSON object a
line::

    {"ts": "2025-01-31T12:00:00.123Z", "level": "INFO", "logger": "store_scp.server",
     "msg": "stored", "assoc_id": "a1b2", "sop_instance_uid": "1.2.3", "status": "0x0000"}

``ts`` is ISO-8601 UTC with milliseconds; every ``extra={...}`` field of the call (assoc_id,
peer, calling_ae, sop_instance_uid, status, size, duration_ms, ...) becomes a key.
:func:`log_event` is the short form: ``log_event(log, "INFO", "stored", size=1234)``.

No PHI by default: fields that name patient data (``patient_name``, ``PatientID``, ...; see
:data:`PHI_FIELDS`) are replaced by ``"<redacted>"`` unless ``setup_logging(log_phi=True)``.
The guard sees field names only: never put patient data into the message text itself.
"""

from __future__ import annotations

import json
import logging
import sys
import time
import traceback
import warnings
from typing import IO, Any

__all__ = [
    "PHI_FIELDS",
    "REDACTED",
    "JsonFormatter",
    "PhiFilter",
    "log_event",
    "setup_logging",
]

REDACTED = "<redacted>"

#: Field names that carry patient data; redacted unless log_phi is enabled.
PHI_FIELDS: frozenset[str] = frozenset(
    {
        "patient_name",
        "patient_id",
        "patient_birth_date",
        "patient_birth_time",
        "other_patient_ids",
        "other_patient_names",
        "patient_address",
        "PatientName",
        "PatientID",
        "PatientBirthDate",
        "PatientBirthTime",
        "OtherPatientIDs",
        "OtherPatientNames",
        "PatientAddress",
    }
)

# Attributes every LogRecord has; anything else on a record came from ``extra``.
_RECORD_ATTRS: frozenset[str] = frozenset(
    vars(logging.makeLogRecord({})).keys() | {"message", "asctime", "taskName"}
)
_BASE_KEYS = ("ts", "level", "logger", "msg")

# One encoder for every record: json.dumps with these options would build a new one each time.
_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), default=str)

_LEVELS = {"DEBUG": logging.DEBUG, "INFO": logging.INFO, "WARNING": logging.WARNING}
_LEVELS |= {"WARN": logging.WARNING, "ERROR": logging.ERROR, "CRITICAL": logging.CRITICAL}


def _level(level: int | str) -> int:
    if isinstance(level, int):
        return level
    try:
        return _LEVELS[level.upper()]
    except KeyError:
        raise ValueError(f"unknown log level {level!r}") from None


class JsonFormatter(logging.Formatter):
    """One compact JSON object per record; extra fields follow the base keys."""

    def __init__(self) -> None:
        super().__init__()
        self._second: tuple[int, str] = (-1, "")

    def _timestamp(self, created: float) -> str:
        sec = int(created)
        cached_sec, text = self._second
        if sec != cached_sec:  # strftime once a second, not once a record
            text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec))
            self._second = (sec, text)
        return f"{text}.{int((created - sec) * 1000):03d}Z"

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": self._timestamp(record.created),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key in _RECORD_ATTRS:
                continue
            out["field_" + key if key in _BASE_KEYS else key] = value
        if record.exc_info:
            out["exc"] = "".join(traceback.format_exception(*record.exc_info)).rstrip()
        elif record.exc_text:
            out["exc"] = record.exc_text
        if record.stack_info:
            out["stack"] = record.stack_info
        return _ENCODER.encode(out)


class PhiFilter(logging.Filter):
    """Replace the values of fields that name patient data with ``REDACTED``."""

    def filter(self, record: logging.LogRecord) -> bool:
        attrs = record.__dict__
        if not PHI_FIELDS.isdisjoint(attrs):  # one pass in C for the usual record
            for key in PHI_FIELDS.intersection(attrs):
                attrs[key] = REDACTED
        return True


class _Handler(logging.StreamHandler[IO[str]]):
    """Marks the handler setup_logging installed, so a second call replaces it."""


def setup_logging(
    level: int | str = "INFO", *, stream: IO[str] | None = None, log_phi: bool = False
) -> None:
    """Send all logs as JSON lines to ``stream`` (default: standard error).

    Idempotent: a second call replaces the handler of the first. Patient data fields are
    redacted unless ``log_phi`` is true.
    """
    levelno = _level(level)
    # The JSON lines carry no process, thread or source fields: skip the system calls and
    # the stack walk that fill them for every record (a record per stored object is on the
    # receiver's hot path). `_srcfile = None` is logging's documented switch for the walk.
    logging._srcfile = None  # type: ignore[attr-defined]
    logging.logProcesses = False
    logging.logThreads = False
    logging.logMultiprocessing = False
    root = logging.getLogger()
    for handler in list(root.handlers):
        if isinstance(handler, _Handler):
            root.removeHandler(handler)
            handler.close()
    handler = _Handler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter())
    if not log_phi:
        handler.addFilter(PhiFilter())
    root.addHandler(handler)
    root.setLevel(levelno)
    # Python warnings become JSON lines too, not raw text among them. pydicom logs each of its
    # own (its "pydicom" logger) before it warns: those warnings would only repeat the record.
    warnings.filterwarnings("ignore", category=UserWarning, module=r"pydicom(\.|$)")
    logging.captureWarnings(True)


def log_event(logger: logging.Logger, level: int | str, msg: str, /, **fields: Any) -> None:
    """Log ``msg`` with ``fields`` as structured keys (``extra``); cheap when disabled."""
    levelno = _level(level)
    if not logger.isEnabledFor(levelno):
        return
    if not _RECORD_ATTRS.isdisjoint(fields):  # names logging reserves would raise
        fields = {("field_" + k if k in _RECORD_ATTRS else k): v for k, v in fields.items()}
    logger.log(levelno, msg, extra=fields, stacklevel=2)
