"""The JSON manifest written beside each object: what was uploaded, from where, and its checksums."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from chunkd import __version__
from chunkd.model.states import PartRecord, StreamRecord

SCHEMA_VERSION = 1


def manifest_key(key: str, suffix: str) -> str:
    return f"{key}{suffix}"


def iso_time(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    return datetime.fromtimestamp(timestamp, UTC).isoformat().replace("+00:00", "Z")


def build_manifest(
    record: StreamRecord,
    parts: list[PartRecord],
    *,
    etag: str,
    hostname: str,
    completed_at: float,
    upload: str,
    media: dict[str, Any] | None = None,
    media_error: str | None = None,
) -> dict[str, Any]:
    """The manifest document; its fields are documented in the README ("Manifest schema")."""
    return {
        "schema_version": SCHEMA_VERSION,
        "chunkd_version": __version__,
        "stream_id": record.id,
        "bucket": record.bucket,
        "key": record.key,
        "size": record.size,
        "sha256": record.sha256,
        "etag": etag,
        "upload": upload,
        "dedup_of": record.dedup_of,
        "part_schedule": record.schedule,
        "parts": [part.to_dict() for part in parts],
        "source": {
            "relpath": record.relpath, "hostname": hostname, "mtime": iso_time(record.mtime), **(record.origin or {})
        },
        "media": media,
        "media_error": media_error,
        "timestamps": {
            "discovered": iso_time(record.discovered_at),
            "first_byte_sent": iso_time(record.first_byte_at),
            "completed": iso_time(completed_at),
        },
    }


def encode(manifest: dict[str, Any]) -> bytes:
    return (json.dumps(manifest, indent=2, sort_keys=False) + "\n").encode("utf-8")
