"""Read an import job's outputs and map every file line back to its receipt.

HealthImaging writes, under `{outputS3Uri}/{datastoreId}-DicomImport-{jobId}/`:
`job-output-manifest.json` (`jobSummary`: counts, `imageSetsSummary[]`),
`SUCCESS/success.ndjson` (one line per imported file: `inputFile`,
`importResponse.imageSetId`, `importResponse.isPrimary`) and `FAILURE/failure.ndjson` (one line
per failed file: `inputFile`, `exception.exceptionType`, `exception.message`). A job can be
COMPLETED with failed files, and the manifest can appear after the status changed: a missing
manifest means "not yet", and the caller retries.

`inputFile` is the file's key relative to the bucket (S3) or to the store root (local): it is
matched from the job's input prefix on, so that a store prefix in front of it does not matter,
to the object keys the job imported, and from there to their receipts (a retry batch imports
copies whose keys are not the receipts' own).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from ..storage.base import ObjectStore

MANIFEST = "job-output-manifest.json"
SUCCESS = "SUCCESS/success.ndjson"
FAILURE = "FAILURE/failure.ndjson"


@dataclass(frozen=True, slots=True)
class Imported:
    key: str
    image_set_id: str
    is_primary: bool
    image_set_version: str | None = None


@dataclass(frozen=True, slots=True)
class Failed:
    key: str
    reason: str


@dataclass(slots=True)
class JobOutput:
    summary: dict[str, object]
    imported: list[Imported] = field(default_factory=list)
    failed: list[Failed] = field(default_factory=list)
    #: Lines whose inputFile matches no receipt of the batch (reported, never guessed).
    unmatched: list[str] = field(default_factory=list)


class OutputNotReady(Exception):
    """The manifest is not there yet: read again later."""


def _read(store: ObjectStore, key: str) -> bytes | None:
    try:
        with store.open(key) as f:
            return f.read()
    except (FileNotFoundError, KeyError):
        return None


def _lines(raw: bytes | None) -> Iterable[dict[str, object]]:
    for line in (raw or b"").splitlines():
        line = line.strip()
        if line:
            yield json.loads(line)


def _match(input_file: str, input_prefix: str, receipts: Mapping[str, str]) -> str | None:
    """The receipt key of the object `input_file` names: the object's key starts with the
    job's input prefix, and a store prefix (S3 prefix, local root) may stand in front of it."""
    if input_file.startswith(input_prefix):
        at = 0
    else:
        at = input_file.find("/" + input_prefix) + 1
        if at == 0:
            return None
    return receipts.get(input_file[at:])


def read_job_output(
    store: ObjectStore, output_prefix: str, input_prefix: str, receipts: Mapping[str, str]
) -> JobOutput:
    """Read the outputs under `output_prefix` (a key prefix in `store`, ending with "/") of
    the job that imported `input_prefix`; `receipts` maps each object key the job imported to
    its receipt key.

    Raises OutputNotReady while the manifest is missing.
    """
    manifest = _read(store, output_prefix + MANIFEST)
    if manifest is None:
        raise OutputNotReady(output_prefix)
    summary = json.loads(manifest).get("jobSummary", {})
    out = JobOutput(summary=summary)
    for line in _lines(_read(store, output_prefix + SUCCESS)):
        input_file = str(line.get("inputFile", ""))
        response = line.get("importResponse") or {}
        assert isinstance(response, dict)
        key = _match(input_file, input_prefix, receipts)
        if key is None:
            out.unmatched.append(input_file)
            continue
        version = response.get("imageSetVersion")
        out.imported.append(
            Imported(
                key=key,
                image_set_id=str(response.get("imageSetId", "")),
                is_primary=bool(response.get("isPrimary", True)),
                image_set_version=str(version) if version is not None else None,
            )
        )
    for line in _lines(_read(store, output_prefix + FAILURE)):
        input_file = str(line.get("inputFile", ""))
        exc = line.get("exception") or {}
        assert isinstance(exc, dict)
        reason = f"{exc.get('exceptionType', 'Error')}: {exc.get('message', '')}".strip()
        key = _match(input_file, input_prefix, receipts)
        if key is None:
            out.unmatched.append(input_file)
            continue
        out.failed.append(Failed(key=key, reason=reason))
    return out
