"""What landed in the test bucket: objects read back, and the manifests chunkd writes next to them."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from tests.support.sizes import MiB

BUCKET = "chunkd"


def sha256_object(client: Any, key: str, *, bucket: str = BUCKET) -> str:
    digest = hashlib.sha256()
    body = client.get_object(Bucket=bucket, Key=key)["Body"]
    for chunk in iter(lambda: body.read(MiB), b""):
        digest.update(chunk)
    return digest.hexdigest()


def read_manifest(client: Any, key: str, *, bucket: str = BUCKET) -> dict[str, Any] | None:
    """The manifest of `key`, or None while it is not there (chunkd writes it last)."""
    try:
        body = client.get_object(Bucket=bucket, Key=f"{key}.manifest.json")["Body"].read()
    except client.exceptions.NoSuchKey:
        return None
    manifest: dict[str, Any] = json.loads(body)
    return manifest
