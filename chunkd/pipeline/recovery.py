"""Records the state store lost, rebuilt from the manifests in the bucket.

A Redis restarted without persistence (or flushed) forgets which files were uploaded; a file still
in the drop folder would then be uploaded again on the next scan. Its manifest says otherwise: when
it names this relpath, size and mtime and the object is there with that size, the COMPLETED record
is written back instead.

Every file older than the run without a record asks, so a first run over a folder of thousands of
files would cost a GET each; the bucket folder is listed once instead (a page per 1,000 keys, the
way `rclone copy` compares), and only manifests the listing shows are read.
"""

from __future__ import annotations

import logging
from pathlib import Path

from chunkd.errors import TransferError
from chunkd.model.manifest import (
    MAX_MANIFEST_BYTES,
    Manifest,
    ManifestError,
    iso_time,
    manifest_key,
    parse_manifest,
)
from chunkd.model.states import StreamRecord, StreamState, new_stream_id
from chunkd.pipeline.engine import Engine
from chunkd.pipeline.monitor import Snapshot
from chunkd.store import JobLedger

logger = logging.getLogger("chunkd.recovery")


def restore_completed(
    engine: Engine, store: JobLedger, key: str, relpath: str, path: Path, snap: Snapshot,
    *, stream_id: str | None = None,
) -> StreamRecord | None:
    """The COMPLETED record this file's manifest proves, saved back to the store; else None.
    With `stream_id`, only a manifest of that stream counts (the record it then writes over)."""
    bucket = engine.settings.bucket
    manifest_name = manifest_key(key, engine.settings.manifest_suffix)
    if not engine.folders.may_hold(bucket, manifest_name):
        return None
    try:
        raw = engine.uploader.get_small(bucket, manifest_name, limit=MAX_MANIFEST_BYTES)
        if raw is None:
            return None
        manifest = parse_manifest(raw)
        scope = engine.settings.scope
        node = None if scope.single_box else scope.node
        if not _describes(manifest, relpath, snap, node) or stream_id not in (None, manifest.stream_id):
            return None
        info = engine.uploader.head(bucket, key)
    except (TransferError, ManifestError) as exc:
        logger.debug("no usable manifest for %s: %s", relpath, exc, extra={"relpath": relpath})
        return None
    if info is None or info.size != snap.size:
        return None
    record = _record(manifest, bucket, key, relpath, path, snap)
    record.endpoint = engine.endpoint  # the manifest was read from this endpoint's bucket
    record.node, record.shared = engine.settings.node_name, engine.settings.shared_input
    store.save_stream(record)
    for part in manifest.parts:
        store.record_part(record.id, part)
    if record.sha256:
        store.index_content(record.sha256, record.id, size=record.size)
    logger.info(
        "already uploaded (its manifest in the bucket says so); record restored",
        extra={"relpath": relpath, "stream_id": record.id, "key": key},
    )
    return record


def _describes(manifest: Manifest, relpath: str, snap: Snapshot, node: str | None) -> bool:
    """`node`: the only node whose manifest may describe the file (None: any, a shared folder or a
    single box); another box's file of the same name and size is not this one."""
    return (
        manifest.size == snap.size
        and manifest.source.relpath == relpath
        and manifest.source.mtime == iso_time(snap.mtime)
        and (node is None or manifest.source.node in (None, node))
    )


def _record(manifest: Manifest, bucket: str, key: str, relpath: str, path: Path, snap: Snapshot) -> StreamRecord:
    return StreamRecord(
        id=manifest.stream_id or new_stream_id(),
        relpath=relpath,
        source_path=str(path),
        bucket=manifest.bucket or bucket,
        key=key,
        schedule=dict(manifest.part_schedule),
        state=StreamState.COMPLETED,
        device=snap.identity.device,
        inode=snap.identity.inode,
        size=snap.size,
        mtime=snap.mtime,
        sha256=manifest.sha256,
        dedup_of=manifest.dedup_of,
        thumbnail_key=manifest.thumbnail_key,
        origin=dict(manifest.source.origin) or None,
    )
