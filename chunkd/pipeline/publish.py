"""The last step of every upload: the manifest beside the object, then COMPLETED in the store.

Commit first, side effects after: the record says COMPLETED only once the manifest is written, and
the content index learns the bytes in that same write.
"""

from __future__ import annotations

from typing import Any

from chunkd.errors import CancelTooLateError
from chunkd.model.attributes import ObjectAttributes
from chunkd.model.manifest import build_manifest, encode, manifest_key
from chunkd.model.states import PartRecord, StreamState
from chunkd.pipeline.coordinator import UploadCoordinator
from chunkd.pipeline.mediagate import MediaVerdict
from chunkd.pipeline.monitor import Snapshot

CONTENT_TYPE_JSON = "application/json"


def publish(
    upload: UploadCoordinator, parts: list[PartRecord], etag: str, snap: Snapshot, *, kind: str, media: MediaVerdict
) -> None:
    """Write the manifest of an object that was checked at its destination, and record it done.

    `kind`: how the bytes got there (single, multipart, record or copy for a duplicate).
    """
    record, engine = upload.record, upload.engine
    completed_at = engine.wall()
    record.size, record.mtime = snap.size, snap.mtime
    tags = (record.attributes or {}).get("tags")
    if tags and kind in ("multipart", "copy"):
        engine.uploader.put_tags(record.bucket, record.key, tags)
    document = build_manifest(
        record, parts, etag=etag, hostname=engine.hostname, completed_at=completed_at, upload=kind,
        media=media.media, media_error=media.error,
    )
    engine.uploader.put_bytes(
        record.bucket, manifest_key(record.key, engine.settings.manifest_suffix), encode(document),
        content_type=CONTENT_TYPE_JSON, attributes=_manifest_attributes(record.attributes, upload),
    )
    record.completed_at = completed_at
    record.move_to(StreamState.COMPLETED)
    # One write: COMPLETED, and (for bytes this stream sent) the content index that dedup reads.
    index = bool(record.sha256) and kind in ("single", "multipart")
    try:
        upload.save(index=index)
    except CancelTooLateError:
        # The object was committed before the cancel reached the store: the bucket holds it, so the
        # record must say so. Nothing is deleted on the user's behalf; the log says how to.
        upload.log.warning(too_late(record.bucket, record.key, engine.settings.manifest_suffix))
        if kind == "multipart":  # the canceller forgot the parts of what it took for an aborted upload
            for part in parts:
                upload.store.record_part(record.id, part)
        upload.save(index=index, over_cancel=True)


def too_late(bucket: str, key: str, manifest_suffix: str) -> str:
    """What a cancel that came after the commit means, and how to undo the upload if unwanted."""
    url, manifest = f"s3://{bucket}/{key}", f"s3://{bucket}/{manifest_key(key, manifest_suffix)}"
    return (f"cancel came too late: {url} was already uploaded (the stream is COMPLETED); "
            f"delete it with `aws s3 rm {url}` and `aws s3 rm {manifest}` if unwanted")


def _manifest_attributes(recorded: dict[str, Any] | None, upload: UploadCoordinator) -> ObjectAttributes:
    """The manifest is encrypted as its object is (a bucket that demands encryption refuses it
    otherwise), and nothing else: application/json, STANDARD, no tags or metadata. An object with
    no recorded attributes (a record-only duplicate, an upload created by an older chunkd) takes
    the settings' encryption."""
    if recorded is not None:
        return ObjectAttributes.from_dict(recorded).encryption()
    return upload.engine.settings.attributes.encryption()
