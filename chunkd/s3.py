"""The one boto3 S3 client the daemon shares, configured for S3-compatible servers."""

from __future__ import annotations

from dataclasses import dataclass

import boto3
from botocore.client import BaseClient
from botocore.config import Config


@dataclass(frozen=True)
class S3Target:
    endpoint_url: str | None = None
    region: str | None = None
    access_key: str | None = None  # None: boto3's normal chain (env, profile, instance role)
    secret_key: str | None = None


def make_client(target: S3Target, *, max_pool_connections: int = 10) -> BaseClient:
    """A client sized to the concurrency.

    botocore's own retries are off (tenacity does ours, with our classification), and its default
    CRC checksums are sent only when required, since several S3-compatible servers reject them.
    Path-style addressing when an endpoint is given: MinIO and local servers expect it.
    Payloads are not SHA-256-signed (UNSIGNED-PAYLOAD, which botocore otherwise forces over plain
    http): every request with a body carries Content-MD5, which the server checks, and signing would
    hash every byte once more.
    """
    config = Config(
        max_pool_connections=max_pool_connections,
        retries={"total_max_attempts": 1, "mode": "standard"},
        connect_timeout=5,
        read_timeout=120,
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        s3={"payload_signing_enabled": False, **({"addressing_style": "path"} if target.endpoint_url else {})},
        tcp_keepalive=True,
    )
    session = boto3.session.Session()
    return session.client(
        "s3",
        endpoint_url=target.endpoint_url,
        region_name=target.region or "us-east-1",
        aws_access_key_id=target.access_key,
        aws_secret_access_key=target.secret_key,
        config=config,
    )
