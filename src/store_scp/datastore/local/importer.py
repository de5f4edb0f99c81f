"""Running one import job: list the input prefix, apply the job quotas, ingest every file,
place the instances into image sets, write the outputs.

Outputs land under `{output_uri}/{datastore_id}-DicomImport-{job_id}/`:
`job-output-manifest.json` (`jobSummary` with counts and `imageSetsSummary[]`),
`SUCCESS/success.ndjson` (one line per imported file: `inputFile`,
`importResponse.imageSetId`, `.imageSetVersion`, `.isPrimary`) and `FAILURE/failure.ndjson` (one
line per failed file: `inputFile`, `exception.exceptionType`, `exception.message`). Both ndjson
files are always written (empty when there is nothing to say); readers of real HealthImaging
must tolerate their absence. The manifest is written last, so a reader that finds it finds the
rest. Frames are made durable once per job (see `durable`) before the image set versions that
reference them are committed; the outputs are written after those commits, and the job is
COMPLETED last. Job-level quotas (endpoints-quotas.html): 5,000 files, 10 GB and 10,000 nested
folders per job end the job FAILED (all configurable).
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass

from store_scp.storage.base import ObjectStore, StorageError
from store_scp.storage.local import LocalObjectStore

from .faults import FaultHooks
from .frames import FrameStore
from .image_sets import ImageSets
from .ingest import FileFailure, Instance, ingest
from .jobs import JobTable, job_output_uri
from .object_stores import put

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class JobQuotas:
    max_files_per_job: int
    max_bytes_per_job: int
    max_file_bytes: int
    max_nested_folders: int


class Importer:
    """`run(job_id)` imports one IN_PROGRESS job and ends it COMPLETED or FAILED."""

    def __init__(
        self,
        *,
        datastore_id: str,
        jobs: JobTable,
        image_sets: ImageSets,
        frames: FrameStore,
        resolve: Callable[[str], tuple[ObjectStore, str]],
        faults: FaultHooks,
        quotas: JobQuotas,
        stopping: threading.Event,
    ) -> None:
        self.datastore_id = datastore_id
        self.jobs = jobs
        self.image_sets = image_sets
        self.frames = frames
        self.resolve = resolve
        self.faults = faults
        self.quotas = quotas
        self.stopping = stopping

    def run(self, job_id: str) -> None:
        job = self.jobs.row(job_id)
        injected = self.faults.next_job_faults()
        delay = injected.manifest_delay
        if injected.stall is not None:
            self.stopping.wait(injected.stall)
        if injected.fail_message is not None:
            self.jobs.finish(job_id, "FAILED", injected.fail_message)
            return
        try:
            in_store, in_prefix = self.resolve(job["input_uri"])
            out_store, out_prefix = self.resolve(job["output_uri"])
        except Exception as exc:
            self.jobs.finish(job_id, "FAILED", f"Cannot access the input or output location: {exc}")
            return
        try:
            keys = sorted(in_store.list_keys(in_prefix))
        except (StorageError, OSError) as exc:
            self.jobs.finish(job_id, "FAILED", f"Cannot list the input location: {exc}")
            return
        folders: set[str] = set()
        for key in keys:
            parts = key[len(in_prefix) :].split("/")[:-1]
            for i in range(1, len(parts) + 1):
                folders.add("/".join(parts[:i]))
        if len(folders) > self.quotas.max_nested_folders:
            self.jobs.finish(
                job_id,
                "FAILED",
                f"The input has {len(folders)} nested folders, more than the "
                f"{self.quotas.max_nested_folders} allowed in one import job",
            )
            return
        if len(keys) > self.quotas.max_files_per_job:
            self.jobs.finish(
                job_id,
                "FAILED",
                f"The input has {len(keys)} files, more than the {self.quotas.max_files_per_job} "
                "allowed in one import job",
            )
            return
        total = 0
        for key in keys:
            total += self._size_of(in_store, key)
        if total > self.quotas.max_bytes_per_job:
            self.jobs.finish(
                job_id,
                "FAILED",
                f"The input holds {total} bytes, more than the {self.quotas.max_bytes_per_job} "
                "allowed in one import job",
            )
            return

        instances: list[Instance] = []
        failures: list[FileFailure] = []
        pending = self.frames.pending()
        try:
            for key in keys:
                result = self.faults.file_fault(key) or ingest(
                    in_store,
                    key,
                    frames=self.frames,
                    pending=pending,
                    max_file_bytes=self.quotas.max_file_bytes,
                )
                if isinstance(result, FileFailure):
                    failures.append(result)
                else:
                    instances.append(result)
            try:  # every frame durable before a version that references it is committed
                pending.sync()
            except OSError as exc:
                self.jobs.finish(job_id, "FAILED", f"The frames could not be made durable: {exc}")
                return
        finally:
            pending.close()

        placed = self.image_sets.place(instances, job_id)

        job_prefix = f"{out_prefix}{self.datastore_id}-DicomImport-{job_id}/"
        job_uri = job_output_uri(job["output_uri"], self.datastore_id, job_id)
        success_lines = [
            json.dumps(
                {
                    "inputFile": inst.key,
                    "importResponse": {
                        "imageSetId": image_set_id,
                        "imageSetVersion": version,
                        "isPrimary": is_primary,
                    },
                },
                separators=(",", ":"),
            )
            for inst, (image_set_id, version, is_primary) in placed
        ]
        failure_lines = [
            json.dumps(
                {
                    "inputFile": f.key,
                    "exception": {"exceptionType": f.exception_type, "message": f.message},
                },
                separators=(",", ":"),
            )
            for f in failures
        ]
        summary: dict[tuple[str, int, bool], int] = {}
        for _inst, ident in placed:
            summary[ident] = summary.get(ident, 0) + 1
        manifest = {
            "jobSummary": {
                "jobId": job_id,
                "datastoreId": self.datastore_id,
                "inputS3Uri": job["input_uri"],
                "outputS3Uri": job_uri,
                "successOutputS3Uri": f"{job_uri}SUCCESS/",
                "failureOutputS3Uri": f"{job_uri}FAILURE/",
                "warningsOutputS3Uri": f"{job_uri}WARNING/",
                "numberOfScannedFiles": len(keys),
                "numberOfImportedFiles": len(placed),
                "numberOfFilesWithCustomerError": sum(1 for f in failures if not f.server_error),
                "numberOfFilesWithServerError": sum(1 for f in failures if f.server_error),
                "numberOfGeneratedImageSets": len(summary),
                "imageSetsSummary": [
                    {
                        "imageSetId": image_set_id,
                        "imageSetVersion": version,
                        "isPrimary": is_primary,
                        "numberOfMatchedSOPInstances": count,
                    }
                    for (image_set_id, version, is_primary), count in summary.items()
                ],
            }
        }

        def ndjson(lines: list[str]) -> bytes:
            return ("\n".join(lines) + "\n").encode() if lines else b""

        put(out_store, f"{job_prefix}SUCCESS/success.ndjson", ndjson(success_lines))
        put(out_store, f"{job_prefix}FAILURE/failure.ndjson", ndjson(failure_lines))
        manifest_bytes = json.dumps(manifest, indent=2).encode()
        if delay is not None:
            self.jobs.finish(job_id, "COMPLETED")
            self.stopping.wait(delay)
            put(out_store, f"{job_prefix}job-output-manifest.json", manifest_bytes)
        else:
            put(out_store, f"{job_prefix}job-output-manifest.json", manifest_bytes)
            self.jobs.finish(job_id, "COMPLETED")
        log.info(
            "import job %s: %d file(s) imported, %d failed", job_id, len(placed), len(failures)
        )

    @staticmethod
    def _size_of(store: ObjectStore, key: str) -> int:
        """The object's size where a listing knows it cheaply (a local store), else 0: other
        stores are held to the per-file limit as each file is read."""
        if not isinstance(store, LocalObjectStore):
            return 0
        try:
            return os.stat(store.objects_dir / key).st_size
        except OSError:
            return 0
