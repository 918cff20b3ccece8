"""Finalizing an idle stream: read it once more, check it is media, dedup, send what is missing,
complete, verify, write the manifest.

The object must equal the file as it is at finalize time, so the whole file is read once more:
that pass yields the whole-file SHA-256 (manifest, dedup index) and the SHA-256 of every part sent
earlier, compared with the ledger; parts whose bytes changed since they were sent (a writer that
seeks back to patch a header, or rewrites the file for faststart) are sent again before completing.
A server that refuses to replace a part gets a fresh upload of the whole file instead.

When no indexed content has the file's size it cannot be a duplicate, so the read runs beside the
sending of the parts not sent yet instead of before it. And a file that grew and went quiet is read
while its idle period runs (a prescan, from half of idle_seconds on): if it is still exactly as the
prescan saw it when the period ends, finalizing does not read it again.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path, PurePosixPath
from typing import Any

from chunkd.config import DEFAULT_INCLUDE
from chunkd.pipeline.engine import Engine, StreamLog
from chunkd.errors import (
    ChunkdError,
    PermanentError,
    RetryableError,
    SourceChangedError,
    TransferError,
    UploadGoneError,
)
from chunkd.model.manifest import build_manifest, encode, manifest_key
from chunkd.pipeline.media import UNAVAILABLE_REASON, ProbeIncomplete, probe
from chunkd.pipeline.monitor import Change, Snapshot, compare, take_snapshot
from chunkd.pipeline.partreader import FileIdentity
from chunkd.intake.paths import free_name
from chunkd.model.planner import Part, PartSchedule
from chunkd.pipeline.hashing import LocalScan, Scan, whole_md5
from chunkd.model.states import PartRecord, StreamRecord, StreamState
from chunkd.s3.uploader import ObjectInfo, multipart_etag, same_etag

MAX_REWRITE_ROUNDS = 3
CONTENT_TYPE_JSON = "application/json"
VIDEO_SUFFIXES = frozenset(pattern.removeprefix("*").lower() for pattern in DEFAULT_INCLUDE)


class Quarantined(ChunkdError):
    """The file is not readable as media and was moved aside; nothing was uploaded."""


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
        self._media: dict[str, Any] | None = None
        self._media_error: str | None = None
        self._scan: LocalScan | None = None
        self._pending_scan: Future[LocalScan] | None = None
        self._prescan: Prescan | None = None
        self.prescans_used = 0

    def finalize(self, schedule: PartSchedule, done: dict[int, PartRecord], snap: Snapshot) -> bool:
        """Complete the object for the file as `snap` saw it; False if the file moved on meanwhile.

        Raises Quarantined when the file is not media and the policy says so.
        """
        record = self._record
        if record.state is not StreamState.FINALIZING:
            record.move_to(StreamState.FINALIZING)
            self._engine.store.save_stream(record)
        needed = list(schedule.parts_for(snap.size))
        multipart = record.upload_id is not None or snap.size >= schedule.part_size(1)
        scan = self._scan_for(schedule, snap, set(done))
        prescanned = self._take_prescan(snap)
        if multipart and not self._may_be_duplicate(snap.size):
            return self._finalize_overlapped(scan, needed, done, snap, prescanned)
        self._scan = prescanned.future.result() if prescanned is not None else scan.run()
        if _moved_on(self._path, snap):
            return False
        record.sha256 = self._scan.sha256
        self._check_media(snap)
        original = self._duplicate_of(self._scan.sha256, snap.size)
        if original is not None:
            return self._finish_duplicate(original, snap)
        if not multipart:
            return self._finish_single(snap, self._scan)
        return self._finish_multipart(needed, done, snap, self._scan)

    def _scan_for(self, schedule: PartSchedule, snap: Snapshot, part_hashes: set[int]) -> Scan:
        multipart = self._record.upload_id is not None or snap.size >= schedule.part_size(1)
        return Scan(
            self._path, snap.identity, list(schedule.parts_for(snap.size)),
            # When MD5s are checked at all and the server is not known to give MD5-of-MD5s, the
            # whole-file MD5 its ETag may be is computed alongside: after completion it would be one
            # more read, on the critical path.
            part_hashes=part_hashes, md5=multipart and self._wants_whole_md5(),
        )

    # -- prescan: reading a quiet file while its idle period runs -------------------------------

    def prescan(self, schedule: PartSchedule, snap: Snapshot, part_hashes: set[int]) -> None:
        """Start reading the file as `snap` saw it, in the background.

        `part_hashes` must name every part sent or in flight: a part read before a rewrite that
        happened before `snap` is caught by comparing its hash from this read.
        """
        if self._prescan is not None and compare(self._prescan.snap, snap) is Change.UNCHANGED:
            return
        self.drop_prescan()
        self._prescan = Prescan.start(self._scan_for(schedule, snap, part_hashes), snap)

    def drop_prescan(self) -> None:
        """The file moved on: the prescan's result can no longer be used."""
        if self._prescan is not None:
            self._prescan.cancel()
            self._prescan = None

    def _take_prescan(self, snap: Snapshot) -> Prescan | None:
        prescan, self._prescan = self._prescan, None
        if prescan is None:
            return None
        if compare(prescan.snap, snap) is not Change.UNCHANGED or not prescan.usable():
            prescan.cancel()
            return None
        self.prescans_used += 1
        return prescan

    def _may_be_duplicate(self, size: int) -> bool:
        return self._engine.settings.dedup != "off" and self._engine.store.may_hold_size(size)

    def _finalize_overlapped(
        self, scan: Scan, needed: list[Part], done: dict[int, PartRecord], snap: Snapshot,
        prescanned: Prescan | None = None,
    ) -> bool:
        """Send the parts never sent while the file is read for its hashes, instead of after."""
        cancel = prescanned.cancel_event if prescanned is not None else threading.Event()
        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="chunkd-scan")
        try:
            if prescanned is not None:
                self._pending_scan = prescanned.future
            else:
                self._pending_scan = pool.submit(dataclasses.replace(scan, cancel=cancel).run)
            self._check_media(snap)
            self._send_parts([p for p in needed if not _sent(done.get(p.number), p)])
            self._scan = self._pending_scan.result()
        finally:
            cancel.set()  # a no-op once the scan finished; else it stops reading at once
            pool.shutdown(wait=True)
        if _moved_on(self._path, snap):
            return False
        self._record.sha256 = self._scan.sha256
        return self._finish_multipart(needed, done, snap, self._scan)

    # -- media -------------------------------------------------------------------------------

    def _check_media(self, snap: Snapshot) -> None:
        if PurePosixPath(self._record.relpath).suffix.lower() not in VIDEO_SUFFIXES:
            self._media_error = "not a video file name"
            return
        try:
            info = probe(self._path)
        except ProbeIncomplete as exc:
            raise RetryableError(f"could not check the media: {exc}", code="ProbeIncomplete") from None
        if info is None:
            self._media_error = UNAVAILABLE_REASON
            return
        self._media = info.to_dict()
        if info.valid:
            return
        reason = f"not readable as media: {info.reason}"
        policy = self._engine.settings.invalid_media
        if policy == "quarantine":
            self._quarantine(reason, snap)
        if policy == "reject":  # `chunkd upload`: never move a file the user named
            self._abort_upload()
            raise PermanentError(reason, code="InvalidMedia")
        self._log.warning("uploading a file ffprobe cannot read (invalid_media=upload): %s", info.reason)

    def _quarantine(self, reason: str, snap: Snapshot) -> None:
        record, engine = self._record, self._engine
        self._abort_upload()
        target = free_name(engine.settings.quarantine_path / record.relpath)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(self._path), target)
        if record.sha256 is None and self._pending_scan is not None:
            record.sha256 = self._pending_scan.result().sha256
        note = {
            "relpath": record.relpath, "stream_id": record.id, "reason": reason, "size": snap.size,
            "sha256": record.sha256, "quarantined_at": time.time(), "media": self._media,
        }
        target.with_name(target.name + ".reason.json").write_text(json.dumps(note, indent=2) + "\n")
        record.move_to(StreamState.QUARANTINED, error=reason)
        engine.store.save_stream(record)
        self._log.error("quarantined: %s", reason, extra={"path": str(target)})
        raise Quarantined(reason)

    # -- dedup -------------------------------------------------------------------------------

    def _duplicate_of(self, sha256: str, size: int) -> StreamRecord | None:
        """A completed object with the same bytes, still present in the bucket."""
        record, engine = self._record, self._engine
        if engine.settings.dedup == "off":
            return None
        original = engine.store.find_by_content(sha256)
        if original is None or original.id == record.id or original.state is not StreamState.COMPLETED:
            return None
        if original.size != size or original.bucket != record.bucket:
            return None
        info = engine.uploader.head(original.bucket, original.key)
        if info is None or info.size != size:
            engine.store.forget_content(sha256)  # the object was deleted or replaced since
            return None
        return original

    def _finish_duplicate(self, original: StreamRecord, snap: Snapshot) -> bool:
        record, engine = self._record, self._engine
        self._abort_upload()
        mode = engine.settings.dedup
        if (original.bucket, original.key) == (record.bucket, record.key):
            mode = "record"  # same key, same bytes: the object is already what we would write
        if mode == "copy":
            engine.uploader.copy(original.bucket, original.key, record.bucket, record.key)
        parts = engine.store.list_parts(original.id) or [
            PartRecord(number=1, offset=0, size=snap.size, etag="", sha256=original.sha256 or "")
        ]
        etag = self._verify_object(snap, parts, size_only=True) if mode == "copy" else ""
        record.dedup_of = original.key
        self._log.info("same bytes as %s: not sent again (dedup=%s)", original.key, mode)
        self._write_manifest(parts, etag, snap, upload=mode)
        return True

    # -- single PutObject ----------------------------------------------------------------------

    def _finish_single(self, snap: Snapshot, scan: LocalScan) -> bool:
        record = self._record
        digest, etag = self._engine.uploader.put_object(record.bucket, record.key, self._path, snap.size, snap.identity)
        if digest.sha256_hex != scan.sha256 or _moved_on(self._path, snap):
            return False
        part = PartRecord(number=1, offset=0, size=snap.size, etag=etag, sha256=digest.sha256_hex)
        self._engine.progress(record.relpath, snap.size)
        self._engine.metrics.object_uploaded(snap.size)
        # No HeadObject: the 200 to a PutObject of exactly these bytes (signed SHA-256, length) is
        # the server's word; for multipart objects the check after Complete stays.
        self._write_manifest([part], etag, snap, upload="single")
        return True

    # -- multipart -----------------------------------------------------------------------------

    def _finish_multipart(
        self, needed: list[Part], done: dict[int, PartRecord], snap: Snapshot, scan: LocalScan
    ) -> bool:
        for _ in range(MAX_REWRITE_ROUNDS):
            missing = [p for p in needed if not _matches(done.get(p.number), p, scan)]
            if not missing:
                break
            rewritten = [p.number for p in missing if p.number in done and done[p.number].size == p.size]
            if rewritten:
                self._log.warning("parts changed on disk since they were sent; sending them again",
                                  extra={"parts": rewritten})
            try:
                self._send_parts(missing)
            except PermanentError as exc:
                if not rewritten or exc.code != "NotImplemented":
                    raise
                self._log.warning("server refuses to replace parts; uploading the whole file again")
                self._restart_upload(done)
            if _moved_on(self._path, snap):
                return False
        else:
            raise SourceChangedError("file kept changing during finalize")
        parts = [done[p.number] for p in needed]
        _check_layout(parts, snap.size)
        completed_etag = self._complete(parts)
        self._write_manifest(parts, self._verified_etag(snap, parts, completed_etag), snap, upload="multipart")
        return True

    def _verified_etag(self, snap: Snapshot, parts: list[PartRecord], completed_etag: str) -> str:
        """The object's ETag, checked.

        A Complete answered with the MD5-of-part-MD5s of exactly our parts proves the object is
        those parts, whose sizes tile the file: no HeadObject is needed (it would also cost
        `rclone serve s3` a read of the whole object, 1.6 s per GiB, to compute its own ETag).
        With content_md5 on, or any other answer, HeadObject checks size and ETag.
        """
        if (
            not self._engine.uploader.content_md5
            and "-" in completed_etag
            and _is_md5_etag(completed_etag)
            and same_etag(completed_etag, multipart_etag(parts))
        ):
            return completed_etag
        return self._verify_object(snap, parts)

    def _restart_upload(self, done: dict[int, PartRecord]) -> None:
        self._abort_upload()
        self._engine.store.drop_parts(self._record.id)
        done.clear()  # the caller's next round sends every part under a new upload

    def _abort_upload(self) -> None:
        record = self._record
        if record.upload_id is None:
            return
        try:
            self._engine.uploader.abort(record.bucket, record.key, record.upload_id)
        except UploadGoneError:
            pass
        except TransferError as exc:
            self._log.warning("could not abort multipart upload (gc will): %s", exc)
        record.upload_id = None
        self._engine.store.save_stream(record)

    def _wants_whole_md5(self) -> bool:
        uploader = self._engine.uploader
        return uploader.content_md5 and uploader.plain_md5_etags is not False

    def _snap_identity(self) -> FileIdentity:
        return FileIdentity(self._record.device, self._record.inode)

    def _complete(self, parts: list[PartRecord]) -> str:
        """Complete the upload; the ETag the server answered with ("" after a crash's adoption)."""
        record, uploader = self._record, self._engine.uploader
        assert record.upload_id is not None
        try:
            return uploader.complete(record.bucket, record.key, record.upload_id, parts)
        except UploadGoneError:
            # A crash after CompleteMultipartUpload but before we recorded it: the object is there.
            info = uploader.head(record.bucket, record.key)
            if not completed_earlier(info, parts, lambda: whole_md5(self._path, self._snap_identity())):
                raise
            self._log.info("upload was already completed before a restart; adopting the object")
            return ""

    # -- verify and record ---------------------------------------------------------------------

    def _verify_object(self, snap: Snapshot, parts: list[PartRecord], *, size_only: bool = False) -> str:
        """HeadObject must show our size, and an ETag that matches our MD5s where it is one.

        Multipart ETags are normally MD5-of-part-MD5s plus "-N"; some servers (rclone) give the
        whole object's MD5 instead, which is checked only with content_md5 on (it costs one more
        MD5 pass over the file; the parts' bytes were checked as they were sent).
        """
        record = self._record
        info = self._engine.uploader.head(record.bucket, record.key)
        if info is None or info.size != snap.size:
            got = "missing" if info is None else f"{info.size} bytes"
            raise PermanentError(f"verification failed: object is {got}, file is {snap.size} bytes", key=record.key)
        if size_only or not _is_md5_etag(info.etag):
            return info.etag  # a server-side copy: its ETag depends on how the server copied
        if "-" in info.etag:
            expected = multipart_etag(parts)
            self._engine.uploader.plain_md5_etags = False
        elif len(parts) == 1 and parts[0].etag:
            expected = parts[0].etag
        else:
            # The server gives the whole object's MD5: remembered, so later scans compute it too.
            self._engine.uploader.plain_md5_etags = True
            if not self._engine.uploader.content_md5:
                return info.etag
            known = self._scan.md5 if self._scan is not None else None
            expected = f'"{known or whole_md5(self._path, snap.identity)}"'
        if not same_etag(info.etag, expected):
            raise PermanentError(f"verification failed: ETag {info.etag} != expected {expected}", key=record.key)
        return info.etag

    def _write_manifest(self, parts: list[PartRecord], etag: str, snap: Snapshot, *, upload: str) -> None:
        record, engine = self._record, self._engine
        completed_at = time.time()
        record.size, record.mtime = snap.size, snap.mtime
        document = build_manifest(
            record, parts, etag=etag, hostname=engine.hostname, completed_at=completed_at, upload=upload,
            media=self._media, media_error=self._media_error,
        )
        engine.uploader.put_bytes(
            record.bucket, manifest_key(record.key, engine.settings.manifest_suffix), encode(document),
            content_type=CONTENT_TYPE_JSON,
        )
        record.completed_at = completed_at
        record.move_to(StreamState.COMPLETED)
        engine.store.save_stream(record)
        if record.sha256 and upload in ("single", "multipart"):
            engine.store.index_content(record.sha256, record.id, size=record.size)


def after_upload(engine: Engine, record: StreamRecord, path: Path, log: StreamLog) -> None:
    """keep | delete | move the local file of a COMPLETED, verified stream whose manifest is written.

    Runs again for a completed file found unchanged on a later start, so a crash between
    recording COMPLETED and acting only delays the action.
    """
    action = engine.settings.after_upload
    if action == "keep" or record.state is not StreamState.COMPLETED:
        return
    try:
        snap = take_snapshot(path)
    except ChunkdError:
        return
    recorded = (record.device, record.inode, record.size, record.mtime)
    if (snap.identity.device, snap.identity.inode, snap.size, snap.mtime) != recorded:
        log.warning("file changed after its upload; leaving it in place")
        return
    if action == "delete":
        path.unlink()
        log.info("deleted local file after verified upload")
        return
    target = free_name(engine.settings.done_path / record.relpath)
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(path), target)
    log.info("moved local file after verified upload", extra={"path": str(target)})


def completed_earlier(
    info: ObjectInfo | None, parts: list[PartRecord], whole_md5: Callable[[], str] | None = None
) -> bool:
    """The object is what completing these parts makes: its size, and its ETag where that is an
    MD5 — of the part MD5s (`-N`), or of the whole object (`rclone serve s3`; `whole_md5` reads
    the local file for it)."""
    if info is None or info.size != sum(p.size for p in parts):
        return False
    if not _is_md5_etag(info.etag):
        return True
    if "-" in info.etag or whole_md5 is None:
        return same_etag(info.etag, multipart_etag(parts))
    return same_etag(info.etag, f'"{whole_md5()}"')


def _sent(recorded: PartRecord | None, part: Part) -> bool:
    return recorded is not None and recorded.size == part.size


def _matches(recorded: PartRecord | None, part: Part, scan: LocalScan) -> bool:
    """Sent, and (if it was sent before the scan) its bytes are still the ones sent."""
    if recorded is None or not _sent(recorded, part):
        return False
    return scan.part_sha256.get(part.number, recorded.sha256) == recorded.sha256


def _moved_on(path: Path, snap: Snapshot) -> bool:
    return compare(snap, take_snapshot(path)) is not Change.UNCHANGED


def _is_md5_etag(etag: str) -> bool:
    digest = etag.strip('"').split("-", 1)[0]
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


@dataclasses.dataclass
class Prescan:
    """One background read of a quiet file, as `snap` saw it."""

    snap: Snapshot
    future: Future[LocalScan]
    cancel_event: threading.Event

    @classmethod
    def start(cls, scan: Scan, snap: Snapshot) -> Prescan:
        cancel = threading.Event()
        future: Future[LocalScan] = Future()

        def run() -> None:
            try:
                future.set_result(dataclasses.replace(scan, cancel=cancel).run())
            except BaseException as exc:  # noqa: BLE001 - handed to whoever takes the result
                future.set_exception(exc)

        threading.Thread(target=run, name="chunkd-prescan", daemon=True).start()
        return cls(snap, future, cancel)

    def usable(self) -> bool:
        """Still running, or done without an error (a failed read is simply done again)."""
        return not self.future.done() or self.future.exception() is None

    def cancel(self) -> None:
        self.cancel_event.set()
