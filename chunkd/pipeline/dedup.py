"""Content dedup: a file whose bytes a completed object already holds is not sent again.

CHUNKD_DEDUP=record writes only a manifest naming the original (`dedup_of`); copy also makes the
object at the new key with a server-side copy, from another bucket too (a file sent again after
CHUNKD_BUCKET changed is copied, not re-sent, when the old object is on the same endpoint). The index is a hint: the original must still be in
the bucket with the same size, else the entry is forgotten and the file is sent.
"""

from __future__ import annotations

import dataclasses

from chunkd.errors import PermanentError
from chunkd.model.attributes import ObjectAttributes
from chunkd.model.etags import is_md5_etag, multipart_etag, same_etag
from chunkd.model.states import PartRecord, StreamRecord, StreamState
from chunkd.pipeline.coordinator import UploadCoordinator
from chunkd.pipeline.mediagate import MediaVerdict
from chunkd.pipeline.monitor import Snapshot
from chunkd.pipeline.objectcheck import ObjectCheck
from chunkd.pipeline.publish import publish


def may_be_duplicate(upload: UploadCoordinator, size: int) -> bool:
    """False when no indexed content has this size: the file need not be hashed before it is sent."""
    return upload.engine.settings.dedup != "off" and upload.store.may_hold_size(size)


def duplicate_of(upload: UploadCoordinator, sha256: str, size: int) -> StreamRecord | None:
    """A completed object with the same bytes, still present in the bucket."""
    record, engine = upload.record, upload.engine
    if engine.settings.dedup == "off" or (engine.settings.dedup == "copy" and engine.server_copy_refused):
        return None
    original = upload.store.find_by_content(sha256)
    if original is None or original.id == record.id or original.state is not StreamState.COMPLETED:
        return None
    if original.size != size:
        return None
    if original.bucket != record.bucket and engine.settings.dedup != "copy":
        return None  # a manifest naming an object in another bucket is no object in this one
    if (original.endpoint or record.endpoint) != record.endpoint:
        return None  # the same bytes, but at another endpoint: no server-side copy reaches them
    info = engine.uploader.head(original.bucket, original.key)
    if info is None or info.size != size or _replaced(info.etag, upload.store.list_parts(original.id)):
        upload.store.forget_content(sha256)  # the object was deleted or replaced since
        return None
    return original


def _replaced(etag: str, parts: list[PartRecord]) -> bool:
    """Another object of the same size at the original's key, where its ETag can tell: a multipart
    MD5 ("-N") that is not the one the original's parts make."""
    if "-" not in etag or not is_md5_etag(etag) or not parts or not all(part.etag for part in parts):
        return False
    return not same_etag(etag, multipart_etag(parts))


def finish_duplicate(upload: UploadCoordinator, original: StreamRecord, snap: Snapshot, media: MediaVerdict) -> bool:
    """Publish the file as a duplicate of `original`; False (nothing changed, the upload still
    open) when the server cannot copy it, so the caller sends the bytes instead."""
    record, engine = upload.record, upload.engine
    mode = engine.settings.dedup
    if (original.bucket, original.key) == (record.bucket, record.key):
        mode = "record"  # same key, same bytes: the object is already what we would write
    if mode == "copy":
        attributes = upload.fixed_attributes()
        if not _copied(upload, original, attributes):
            return False
        record.attributes = attributes.to_dict()
    upload.abort_upload()  # after the copy: a refused copy leaves the upload to finish as usual
    parts = upload.store.list_parts(original.id) or [
        PartRecord(number=1, offset=0, size=snap.size, etag="", sha256=original.sha256 or "")
    ]
    check = ObjectCheck(engine.uploader, record, upload.path)
    etag = check.verify(snap, parts, size_only=True) if mode == "copy" else ""
    same_bucket = original.bucket == record.bucket
    record.dedup_of = original.key if same_bucket else f"s3://{original.bucket}/{original.key}"
    upload.log.info("same bytes as %s: not sent again (dedup=%s)", record.dedup_of, mode)
    thumbnail_key = None
    if mode == "record":  # no object of its own: the original's poster frame is this file's too
        media, thumbnail_key = _without_poster(media), original.thumbnail_key
    publish(upload, parts, etag, snap, kind=mode, media=media, thumbnail_key=thumbnail_key)
    return True


def _without_poster(media: MediaVerdict) -> MediaVerdict:
    if media.poster is not None:
        media.poster.cancel()  # a no-op once ffmpeg started: its frame is then dropped
    return dataclasses.replace(media, poster=None)


def _copied(upload: UploadCoordinator, original: StreamRecord, attributes: ObjectAttributes) -> bool:
    """Server-side copy of the original to this file's key; False when the server answers
    NotImplemented (Ceph RGW for an SSE-C object), and then no duplicate is copied again."""
    record, engine = upload.record, upload.engine
    try:
        engine.uploader.copy(original.bucket, original.key, record.bucket, record.key, attributes=attributes)
    except PermanentError as exc:
        if exc.code != "NotImplemented":
            raise
        engine.server_copy_refused = True
        upload.log.warning("the server cannot copy %s (%s): this and later duplicates are sent as bytes",
                           original.key, exc.code)
        return False
    return True
