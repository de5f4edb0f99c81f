"""A boto3 `medical-imaging` client for the embedded datastore's local HealthImaging API."""

from __future__ import annotations

from typing import Any

import boto3
from botocore.config import Config


def local_client(url: str, **config: Any) -> Any:
    """botocore prefixes image-set operations' host with `runtime-`; a local endpoint has no
    such host, so host prefixes are off. Credentials are dummies: the local API checks none."""
    return boto3.client(
        "medical-imaging",
        endpoint_url=url,
        region_name="us-east-1",
        aws_access_key_id="x",
        aws_secret_access_key="x",
        config=Config(inject_host_prefix=False, **config),
    )
