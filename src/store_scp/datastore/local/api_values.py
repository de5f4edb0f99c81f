"""Values in the shapes of the API's responses and requests: timestamps and the opaque
`nextToken` of paginated operations."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from typing import Any

from .errors import VALIDATION, datastore_error


def ts(epoch: float | None) -> datetime | None:
    return None if epoch is None else datetime.fromtimestamp(epoch, tz=UTC)


def epoch(value: Any) -> float:
    if isinstance(value, datetime):
        return value.timestamp()
    if isinstance(value, int | float):
        return float(value)
    return datetime.fromisoformat(str(value)).timestamp()


def encode_token(offset: int) -> str:
    return base64.urlsafe_b64encode(json.dumps({"o": offset}).encode()).decode("ascii")


def decode_token(token: str | None) -> int:
    if not token:
        return 0
    try:
        offset = int(json.loads(base64.urlsafe_b64decode(token.encode("ascii")))["o"])
    except Exception as exc:
        raise datastore_error(VALIDATION, "nextToken is not valid") from exc
    if offset < 0:
        raise datastore_error(VALIDATION, "nextToken is not valid")
    return offset
