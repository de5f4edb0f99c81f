"""Errors as HealthImaging answers them: the exception shapes of botocore's `medical-imaging`
model, with messages that fit its Message shape."""

from __future__ import annotations

import re

from store_scp.datastore.base import DatastoreError

VALIDATION = "ValidationException"
NOT_FOUND = "ResourceNotFoundException"
CONFLICT = "ConflictException"
THROTTLING = "ThrottlingException"
QUOTA = "ServiceQuotaExceededException"
INTERNAL = "InternalServerException"
ACCESS_DENIED = "AccessDeniedException"
_RETRYABLE = frozenset({THROTTLING, QUOTA, CONFLICT, INTERNAL})


def datastore_error(code: str, message: str) -> DatastoreError:
    return DatastoreError(code, message, retryable=code in _RETRYABLE)


_MESSAGE_CHARS = re.compile(r"[^\w -:`]")


def api_message(text: str) -> str:
    """`text` within the model's Message shape: `[\\w -:`]+`, 1 to 2048 characters."""
    cleaned = _MESSAGE_CHARS.sub(" ", text).strip()[:2048]
    return cleaned or "error"
