"""What lives where in the object store.

::

    <batch-id>/<Study>/<Series>/<SOP>.dcm          received objects: one prefix per batch, the
                                                   input of exactly one import job
    retry/<retry-batch-id>/<receipt key>           copies of FAILED receipts for a retry: the
                                                   input of the retry batch's one import job
    quarantine/<receipt key>                       objects of FAILED receipts, moved out of their
    quarantine/<receipt key>.json                  batch, with a note that says why
    import-output/...                              the import jobs' outputs

Receipt keys start with their batch id, and batch ids start with a timestamp
(`pipeline.batching.new_batch_id`), so no receipt key ever starts with one of the reserved
top-level names below. Everything under them is outside the start-up reconciler's scan (a
quarantined object or a retry copy is never registered as a new receipt) and outside every
receiver batch prefix (no import job of a batch ever reads it).
"""

from __future__ import annotations

__all__ = [
    "JOB_OUTPUT_PREFIX",
    "QUARANTINE_PREFIX",
    "RESERVED_PREFIXES",
    "RETRY_PREFIX",
    "is_reserved",
    "job_object_key",
    "quarantine_key",
    "quarantine_note_key",
    "retry_prefix",
]

QUARANTINE_PREFIX = "quarantine/"
RETRY_PREFIX = "retry/"
JOB_OUTPUT_PREFIX = "import-output/"

#: Top-level prefixes that hold no receipts.
RESERVED_PREFIXES = (QUARANTINE_PREFIX, RETRY_PREFIX, JOB_OUTPUT_PREFIX)


def is_reserved(key: str) -> bool:
    """True for a key under a prefix that is not a batch (never a receipt)."""
    return key.startswith(RESERVED_PREFIXES)


def quarantine_key(receipt_key: str) -> str:
    return QUARANTINE_PREFIX + receipt_key


def quarantine_note_key(receipt_key: str) -> str:
    """The JSON note beside a quarantined object."""
    return quarantine_key(receipt_key) + ".json"


def retry_prefix(batch_id: str) -> str:
    """The prefix of a retry batch: the input of its import job."""
    return f"{RETRY_PREFIX}{batch_id}/"


def job_object_key(receipt_key: str, receipt_batch_id: str, job_batch_id: str) -> str:
    """Where the import job of `job_batch_id` reads the object of a receipt: the object itself
    when the job imports the batch it was received in, else its copy under the retry prefix."""
    if job_batch_id == receipt_batch_id:
        return receipt_key
    return retry_prefix(job_batch_id) + receipt_key
