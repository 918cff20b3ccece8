"""The JSON manifest written beside each object: what was uploaded, from where, and its checksums.

Written once by finalize (`build_manifest`, `encode`); read back by `chunkd verify` and by the
recovery of records a store forgot (`parse_manifest`). Fields are documented in the README
("Manifest schema"); fields added since schema 1 began may be missing from older manifests.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from chunkd import __version__
from chunkd.model.states import PartRecord, StreamRecord

SCHEMA_VERSION = 1
MAX_MANIFEST_BYTES = 64 * 1024 * 1024  # 10,000 parts take ~2 MB; anything far bigger is not ours


class ManifestError(ValueError):
    """A manifest that cannot be trusted; the message says what is wrong with it."""


@dataclass(frozen=True)
class ManifestSource:
    """Where the bytes came from."""

    relpath: str | None  # under the drop folder; None when empty or missing
    hostname: str | None = None
    mtime: str | None = None  # ISO 8601 UTC, "Z"
    node: str | None = None  # the daemon (CHUNKD_NODE) that uploaded it; None: before nodes were recorded
    origin: dict[str, Any] = field(default_factory=dict)  # downloads: url, webpage_url, extractor, title, …


@dataclass(frozen=True)
class Manifest:
    """What a manifest promises about its object."""

    key: str
    size: int
    sha256: str  # lower-case hex of the whole object
    etag: str  # as HeadObject answered after completing
    parts: tuple[PartRecord, ...]
    source: ManifestSource
    stream_id: str | None = None
    bucket: str | None = None
    upload: str | None = None  # "single", "multipart", "copy", …
    dedup_of: str | None = None
    part_schedule: dict[str, Any] = field(default_factory=dict)
    media: dict[str, Any] | None = None
    media_error: str | None = None
    timestamps: dict[str, Any] = field(default_factory=dict)
    chunkd_version: str | None = None
    attributes: dict[str, Any] | None = None  # content_type, storage_class, sse, tags, metadata, …
    thumbnail_key: str | None = None  # the poster frame beside the object (<key>.thumb.jpg); a recorded duplicate names its original's
    thumbnail_error: str | None = None  # why a valid video has none


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
    thumbnail_error: str | None = None,
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
            "relpath": record.relpath, "hostname": hostname, "node": record.node, "mtime": iso_time(record.mtime),
            **(record.origin or {}),
        },
        "attributes": record.attributes,
        "media": media,
        "media_error": media_error,
        "thumbnail_key": record.thumbnail_key,
        "thumbnail_error": thumbnail_error,
        "timestamps": {
            "discovered": iso_time(record.discovered_at),
            "first_byte_sent": iso_time(record.first_byte_at),
            "completed": iso_time(completed_at),
        },
    }


def encode(manifest: dict[str, Any]) -> bytes:
    return (json.dumps(manifest, indent=2, sort_keys=False) + "\n").encode("utf-8")


def parse_manifest(raw: bytes) -> Manifest:
    """The manifest in `raw`; ManifestError says what is wrong with one that cannot be trusted.

    Types are checked, not meaning: whether the parts tile the object is the caller's question.
    """
    if len(raw) > MAX_MANIFEST_BYTES:
        raise ManifestError(f"over {MAX_MANIFEST_BYTES} bytes: not a manifest")
    try:
        doc = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ManifestError(f"not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise ManifestError("not a JSON object")
    version = doc.get("schema_version")
    if not _is_int(version) or version != SCHEMA_VERSION:
        raise ManifestError(f"schema_version {version!r}, this chunkd reads {SCHEMA_VERSION}")
    required = (("key", str), ("size", int), ("etag", str), ("sha256", str), ("parts", list))
    bad = [name for name, kind in required if not _is(doc.get(name), kind)]
    if bad:
        raise ManifestError(f"missing or malformed field(s): {', '.join(bad)}")
    optional = (
        ("stream_id", str), ("bucket", str), ("upload", str), ("dedup_of", str), ("media_error", str),
        ("chunkd_version", str), ("part_schedule", dict), ("media", dict), ("timestamps", dict), ("source", dict),
        ("attributes", dict), ("thumbnail_key", str), ("thumbnail_error", str),
    )
    bad = [name for name, kind in optional if doc.get(name) is not None and not _is(doc[name], kind)]
    if bad:
        raise ManifestError(f"malformed field(s): {', '.join(bad)}")
    return Manifest(
        key=doc["key"], size=doc["size"], sha256=doc["sha256"].lower(), etag=doc["etag"],
        parts=tuple(_part(index, item) for index, item in enumerate(doc["parts"], start=1)),
        source=_source(doc.get("source") or {}),
        stream_id=doc.get("stream_id") or None, bucket=doc.get("bucket") or None, upload=doc.get("upload"),
        dedup_of=doc.get("dedup_of"), part_schedule=doc.get("part_schedule") or {}, media=doc.get("media"),
        media_error=doc.get("media_error"), timestamps=doc.get("timestamps") or {},
        chunkd_version=doc.get("chunkd_version"), attributes=doc.get("attributes"),
        thumbnail_key=doc.get("thumbnail_key") or None, thumbnail_error=doc.get("thumbnail_error"),
    )


def _part(index: int, item: Any) -> PartRecord:
    """A part carries the checksum the server verified as it took it: `sha256` (signed payload) or
    `md5` (Content-MD5), at least one of them."""
    fields = (("number", int), ("offset", int), ("size", int), ("etag", str))
    checksums = [item.get(name) for name in ("sha256", "md5")] if isinstance(item, dict) else []
    if (
        not isinstance(item, dict)
        or not all(_is(item.get(name), kind) for name, kind in fields)
        or not all(value is None or _is(value, str) for value in checksums)
        or not any(checksums)
    ):
        raise ManifestError(
            f"malformed part #{index} in parts[]: each needs integer number, offset and size, string etag, "
            "and a string sha256 or md5"
        )
    return PartRecord(
        number=item["number"], offset=item["offset"], size=item["size"], etag=item["etag"],
        sha256=item.get("sha256") or "", md5=item.get("md5") or "",
    )


def _source(source: dict[str, Any]) -> ManifestSource:
    named = ("relpath", "hostname", "node", "mtime")
    bad = [name for name in named if source.get(name) is not None and not isinstance(source[name], str)]
    if bad:
        raise ManifestError(f"malformed field(s): {', '.join(f'source.{name}' for name in bad)}")
    return ManifestSource(
        relpath=source.get("relpath") or None, hostname=source.get("hostname"), mtime=source.get("mtime"),
        node=source.get("node"),
        origin={name: value for name, value in source.items() if name not in named},
    )


def _is(value: Any, kind: type) -> bool:
    """isinstance, except that JSON's true and false are not integers."""
    return _is_int(value) if kind is int else isinstance(value, kind)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
