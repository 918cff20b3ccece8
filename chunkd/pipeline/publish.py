"""The last step of every upload: the poster frame and the manifest beside the object, then
COMPLETED in the store.

Commit first, side effects after: the record says COMPLETED only once the manifest is written, and
the content index learns the bytes in that same write. The poster frame goes up before the
manifest that names it, so a manifest never names a missing frame; a crash between the two leaves
the stream unfinished, and the next run makes and puts the frame again (the same key, overwritten),
then writes the manifest once.
"""

from __future__ import annotations

import time
from concurrent.futures import Future
from typing import Any

from chunkd.errors import CancelTooLateError, TransferError
from chunkd.model.attributes import ObjectAttributes
from chunkd.model.manifest import build_manifest, encode, manifest_key
from chunkd.model.states import PartRecord, StreamState
from chunkd.pipeline.coordinator import UploadCoordinator
from chunkd.pipeline.mediagate import MediaVerdict
from chunkd.pipeline.monitor import Snapshot
from chunkd.pipeline.thumbnail import CONTENT_TYPE_JPEG, PosterFrame, thumbnail_key

CONTENT_TYPE_JSON = "application/json"


def publish(
    upload: UploadCoordinator, parts: list[PartRecord], etag: str, snap: Snapshot, *, kind: str, media: MediaVerdict,
    thumbnail_key: str | None = None,
) -> None:
    """Write the manifest of an object that was checked at its destination, and record it done.

    `kind`: how the bytes got there (single, multipart, record or copy for a duplicate).
    `thumbnail_key`: a poster frame already in the bucket (a recorded duplicate's original's), named
    when `media` brings none of its own.
    """
    record, engine = upload.record, upload.engine
    completed_at = engine.wall()
    record.size, record.mtime = snap.size, snap.mtime
    tags = (record.attributes or {}).get("tags")
    if tags and kind in ("multipart", "copy"):
        engine.uploader.put_tags(record.bucket, record.key, tags)
    record.thumbnail_key, thumbnail_error = _put_poster(upload, media.poster)
    record.thumbnail_key = record.thumbnail_key or thumbnail_key
    document = build_manifest(
        record, parts, etag=etag, hostname=engine.hostname, completed_at=completed_at, upload=kind,
        media=media.media, media_error=media.error, thumbnail_error=thumbnail_error,
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


def _put_poster(upload: UploadCoordinator, poster: Future[PosterFrame] | None) -> tuple[str | None, str | None]:
    """Upload the poster frame beside the object, as its manifest is stored (its encryption,
    STANDARD), integrity-checked the same way; (its key, None), or (None, why there is none). A
    failure here is the frame's, never the upload's."""
    if poster is None:
        return None, None
    record = upload.record
    began = time.monotonic()
    frame = poster.result()  # bounded: ffmpeg runs under its own timeout
    waited = time.monotonic() - began  # what the frame added to this file's finalize
    if frame.jpeg is None:
        upload.log.warning("no poster frame: %s", frame.error)
        return None, frame.error
    key = thumbnail_key(record.key)
    try:
        upload.engine.uploader.put_bytes(
            record.bucket, key, frame.jpeg, content_type=CONTENT_TYPE_JPEG,
            attributes=_manifest_attributes(record.attributes, upload),
        )
    except TransferError as exc:
        upload.log.warning("poster frame not uploaded: %s", exc)
        return None, f"poster frame not uploaded: {exc}"
    upload.log.info("poster frame uploaded", extra={
        "thumbnail_key": key, "bytes": len(frame.jpeg), "ffmpeg_seconds": round(frame.wall_seconds, 3),
        "waited_seconds": round(waited, 3),
    })
    return key, None


def _manifest_attributes(recorded: dict[str, Any] | None, upload: UploadCoordinator) -> ObjectAttributes:
    """The manifest is encrypted as its object is (a bucket that demands encryption refuses it
    otherwise), and nothing else: application/json, STANDARD, no tags or metadata. An object with
    no recorded attributes (a record-only duplicate, an upload created by an older chunkd) takes
    the settings' encryption."""
    if recorded is not None:
        return ObjectAttributes.from_dict(recorded).encryption()
    return upload.engine.settings.attributes.encryption()
