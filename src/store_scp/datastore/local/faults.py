"""Fault injection for tests: explicit methods of the datastore that make its next calls,
jobs or files fail the way HealthImaging's can.

They act on this process only, or on the serving process through `datastore.api`'s opt-in
test-hook endpoint: `inject_errors` (the next N calls of an operation raise an error),
`throttle_next_starts`, `fail_next_jobs` (the next N jobs end FAILED), `delay_next_manifests`
(the job turns COMPLETED, the manifest appears N seconds later), `stall_next_jobs` (the next N
jobs stay IN_PROGRESS for a while), `fail_files` (files matching a pattern get a failure line),
`hold_jobs` (jobs stay SUBMITTED until released), `clear_faults`.
"""

from __future__ import annotations

import fnmatch
import threading
from dataclasses import dataclass, field

from .errors import INTERNAL, THROTTLING, VALIDATION, datastore_error
from .ingest import FileFailure


@dataclass(slots=True)
class FileFault:
    pattern: str
    message: str
    server_error: bool
    remaining: int | None


@dataclass(slots=True)
class _Faults:
    errors: dict[str, list[str]] = field(default_factory=dict)  # operation -> codes, in order
    fail_jobs: list[str] = field(default_factory=list)  # messages
    manifest_delays: list[float] = field(default_factory=list)
    stalls: list[float] = field(default_factory=list)
    file_faults: list[FileFault] = field(default_factory=list)
    hold: bool = False


@dataclass(frozen=True, slots=True)
class JobFaults:
    """What the next job to run was told to do: fail, stall, write its manifest late."""

    fail_message: str | None
    manifest_delay: float | None
    stall: float | None


class FaultHooks:
    """The test hooks of LocalDatastore (a base class: the methods are the datastore's own)."""

    def __init__(self) -> None:
        self._faults = _Faults()
        self._faults_lock = threading.Lock()

    def _faults_changed(self) -> None:
        """Called when held jobs may run now."""

    def inject_errors(self, operation: str, code: str, count: int = 1) -> None:
        """Test hook: the next `count` calls of `operation` (an API operation name such as
        "StartDICOMImportJob", or "*" for any) raise `code` (e.g. "InternalServerException")."""
        with self._faults_lock:
            self._faults.errors.setdefault(operation, []).extend([code] * count)

    def throttle_next_starts(self, count: int = 1) -> None:
        """Test hook: the next `count` StartDICOMImportJob calls raise ThrottlingException."""
        self.inject_errors("StartDICOMImportJob", THROTTLING, count)

    def fail_next_jobs(self, count: int = 1, message: str = "Injected job failure") -> None:
        """Test hook: the next `count` jobs that start running end FAILED with `message`."""
        with self._faults_lock:
            self._faults.fail_jobs.extend([message] * count)

    def delay_next_manifests(self, seconds: float, count: int = 1) -> None:
        """Test hook: the next `count` jobs turn COMPLETED at once and write their
        `job-output-manifest.json` `seconds` later (as HealthImaging's can appear late)."""
        with self._faults_lock:
            self._faults.manifest_delays.extend([seconds] * count)

    def stall_next_jobs(self, seconds: float, count: int = 1) -> None:
        """Test hook: the next `count` jobs stay IN_PROGRESS for `seconds` before importing."""
        with self._faults_lock:
            self._faults.stalls.extend([seconds] * count)

    def fail_files(
        self,
        pattern: str,
        *,
        message: str = "Injected failure",
        server_error: bool = False,
        count: int | None = None,
    ) -> None:
        """Test hook: files whose input key matches the glob `pattern` fail with a failure line
        (ValidationException, or InternalServerException with `server_error`); `count` limits
        how many files the rule applies to (None: every match, until `clear_faults`)."""
        with self._faults_lock:
            self._faults.file_faults.append(FileFault(pattern, message, server_error, count))

    def hold_jobs(self, hold: bool = True) -> None:
        """Test hook: while held, submitted jobs stay SUBMITTED (none starts running)."""
        with self._faults_lock:
            self._faults.hold = hold
        self._faults_changed()

    def clear_faults(self) -> None:
        """Test hook: remove every injected fault and release held jobs."""
        with self._faults_lock:
            self._faults = _Faults()
        self._faults_changed()

    def check_fault(self, operation: str) -> None:
        """Raise the next injected error of `operation`, if any (the API calls this too)."""
        with self._faults_lock:
            for name in (operation, "*"):
                queue = self._faults.errors.get(name)
                if queue:
                    code = queue.pop(0)
                    raise datastore_error(code, f"Injected {code} for {operation}")

    # -- for the job runner --------------------------------------------------------------------

    @property
    def jobs_held(self) -> bool:
        with self._faults_lock:
            return self._faults.hold

    def next_job_faults(self) -> JobFaults:
        with self._faults_lock:
            faults = self._faults
            return JobFaults(
                fail_message=faults.fail_jobs.pop(0) if faults.fail_jobs else None,
                manifest_delay=faults.manifest_delays.pop(0) if faults.manifest_delays else None,
                stall=faults.stalls.pop(0) if faults.stalls else None,
            )

    def file_fault(self, key: str) -> FileFailure | None:
        with self._faults_lock:
            for fault in self._faults.file_faults:
                if fault.remaining == 0 or not fnmatch.fnmatchcase(key, fault.pattern):
                    continue
                if fault.remaining is not None:
                    fault.remaining -= 1
                code = INTERNAL if fault.server_error else VALIDATION
                return FileFailure(key, code, fault.message, fault.server_error)
        return None
