"""Finalizing an idle stream: tail part, re-check every part's bytes, complete, verify, manifest.

The object must equal the file as it is at finalize time, so the whole file is read once more:
that single pass yields the whole-file SHA-256 for the manifest and each part's SHA-256, which is
compared with the ledger; parts whose bytes changed since they were sent (a writer that seeks back
to patch a header) are sent again before completing.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from chunkd.engine import Engine, StreamLog
from chunkd.errors import PermanentError, SourceChangedError, UploadGoneError
from chunkd.manifest import build_manifest, encode, manifest_key
from chunkd.monitor import Change, Snapshot, compare, take_snapshot
from chunkd.partreader import READ_SIZE, FileIdentity, open_checked
from chunkd.planner import Part, PartSchedule
from chunkd.states import PartRecord, StreamRecord, StreamState
from chunkd.uploader import ObjectInfo, multipart_etag, same_etag

MAX_REWRITE_ROUNDS = 3
CONTENT_TYPE_JSON = "application/json"


@dataclass(frozen=True)
class LocalScan:
    sha256: str
    part_sha256: dict[int, str]


def scan_file(path: Path, identity: FileIdentity, parts: list[Part]) -> LocalScan:
    """One sequential read: the whole file's SHA-256 and each part's."""
    whole = hashlib.sha256()
    digests: dict[int, str] = {}
    with open_checked(path, identity) as handle:
        fd = handle.fileno()
        for part in parts:
            part_hash = hashlib.sha256()
            position, remaining = part.offset, part.size
            while remaining > 0:
                chunk = os.pread(fd, min(READ_SIZE, remaining), position)
                if not chunk:
                    raise SourceChangedError("file shrank while being finalized")
                whole.update(chunk)
                part_hash.update(chunk)
                position += len(chunk)
                remaining -= len(chunk)
            digests[part.number] = part_hash.hexdigest()
    return LocalScan(whole.hexdigest(), digests)


def whole_md5(path: Path, snap: Snapshot) -> str:
    md5 = hashlib.md5(usedforsecurity=False)
    with open_checked(path, snap.identity) as handle:
        for chunk in iter(lambda: handle.read(READ_SIZE), b""):
            md5.update(chunk)
    return md5.hexdigest()


class Finalizer:
    def __init__(
        self,
        engine: Engine,
        record: StreamRecord,
        path: Path,
        log: StreamLog,
        send_parts: Callable[[list[Part]], None],
    ) -> None:
        self._engine = engine
        self._record = record
        self._path = path
        self._log = log
        self._send_parts = send_parts

    def finalize(self, schedule: PartSchedule, done: dict[int, PartRecord], snap: Snapshot) -> bool:
        """Complete the object for the file as `snap` saw it; False if the file moved on meanwhile."""
        record = self._record
        record.move_to(StreamState.FINALIZING)
        self._engine.store.save_stream(record)
        if record.upload_id is None and snap.size < schedule.part_size(1):
            return self._finish_single(snap)
        return self._finish_multipart(schedule, done, snap)

    def _finish_single(self, snap: Snapshot) -> bool:
        record = self._record
        digest, etag = self._engine.uploader.put_object(
            record.bucket, record.key, self._path, snap.size, snap.identity
        )
        if compare(snap, take_snapshot(self._path)) is not Change.UNCHANGED:
            return False
        part = PartRecord(number=1, offset=0, size=snap.size, etag=etag, sha256=digest.sha256_hex)
        self._engine.progress(record.relpath, snap.size)
        etag = self._verify_object(snap, [part])
        record.sha256 = digest.sha256_hex
        self._write_manifest([part], etag, snap)
        return True

    def _finish_multipart(self, schedule: PartSchedule, done: dict[int, PartRecord], snap: Snapshot) -> bool:
        needed = list(schedule.parts_for(snap.size))
        for _ in range(MAX_REWRITE_ROUNDS):
            missing = [p for p in needed if p.number not in done or done[p.number].size != p.size]
            if missing:
                self._send_parts(missing)
            scan = scan_file(self._path, snap.identity, needed)
            if compare(snap, take_snapshot(self._path)) is not Change.UNCHANGED:
                return False
            stale = [p for p in needed if done[p.number].sha256 != scan.part_sha256[p.number]]
            if not stale:
                break
            self._log.warning("parts changed on disk since they were sent; sending them again",
                              extra={"parts": [p.number for p in stale]})
            for part in stale:
                del done[part.number]
        else:
            raise SourceChangedError("file kept changing during finalize")
        parts = [done[p.number] for p in needed]
        _check_layout(parts, snap.size)
        self._complete(parts)
        self._record.sha256 = scan.sha256
        self._write_manifest(parts, self._verify_object(snap, parts), snap)
        return True

    def _complete(self, parts: list[PartRecord]) -> None:
        record, uploader = self._record, self._engine.uploader
        assert record.upload_id is not None
        try:
            uploader.complete(record.bucket, record.key, record.upload_id, parts)
        except UploadGoneError:
            # A crash after CompleteMultipartUpload but before we recorded it: the object is there.
            if not completed_earlier(uploader.head(record.bucket, record.key), parts):
                raise
            self._log.info("upload was already completed before a restart; adopting the object")

    def _verify_object(self, snap: Snapshot, parts: list[PartRecord]) -> str:
        """HeadObject must show our size, and an ETag that matches our MD5s where it is one.

        Multipart ETags are normally MD5-of-part-MD5s plus "-N"; some servers (rclone) give the
        whole object's MD5 instead, which costs one more read of the file to check.
        """
        record = self._record
        info = self._engine.uploader.head(record.bucket, record.key)
        if info is None or info.size != snap.size:
            got = "missing" if info is None else f"{info.size} bytes"
            raise PermanentError(f"verification failed: object is {got}, file is {snap.size} bytes", key=record.key)
        if not _is_md5_etag(info.etag):
            return info.etag
        expected = multipart_etag(parts) if record.upload_id else parts[0].etag
        if "-" not in info.etag and record.upload_id:
            expected = f'"{whole_md5(self._path, snap)}"'
        if not same_etag(info.etag, expected):
            raise PermanentError(f"verification failed: ETag {info.etag} != expected {expected}", key=record.key)
        return info.etag

    def _write_manifest(self, parts: list[PartRecord], etag: str, snap: Snapshot) -> None:
        record, engine = self._record, self._engine
        completed_at = time.time()
        record.size, record.mtime = snap.size, snap.mtime
        document = build_manifest(record, parts, etag=etag, hostname=engine.hostname, completed_at=completed_at)
        engine.uploader.put_bytes(
            record.bucket, manifest_key(record.key, engine.settings.manifest_suffix), encode(document),
            content_type=CONTENT_TYPE_JSON,
        )
        record.completed_at = completed_at
        record.move_to(StreamState.COMPLETED)
        engine.store.save_stream(record)


def completed_earlier(info: ObjectInfo | None, parts: list[PartRecord]) -> bool:
    if info is None:
        return False
    size = sum(p.size for p in parts)
    return info.size == size and (not _is_md5_etag(info.etag) or same_etag(info.etag, multipart_etag(parts)))


def _is_md5_etag(etag: str) -> bool:
    body = etag.strip('"')
    digest = body.split("-", 1)[0]
    return len(digest) == 32 and all(c in "0123456789abcdefABCDEF" for c in digest)


def _check_layout(parts: list[PartRecord], size: int) -> None:
    """Never complete a wrong object: parts must tile [0, size) exactly, numbered 1..N."""
    offset = 0
    for index, part in enumerate(parts, start=1):
        if part.number != index or part.offset != offset:
            raise PermanentError(f"internal error: part {part.number} does not continue at offset {offset}")
        offset += part.size
    if offset != size:
        raise PermanentError(f"internal error: parts cover {offset} bytes, file has {size}")
