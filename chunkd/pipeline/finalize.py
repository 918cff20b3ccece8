"""Finalizing an idle stream: read it once more, check it is media, dedup, send what is missing,
complete, verify, write the manifest.

The object must equal the file as it is at finalize time, so the whole file is read once more:
that pass yields the whole-file SHA-256 (manifest, dedup index) and the SHA-256 of every part sent
earlier, compared with the ledger; parts whose bytes changed since they were sent (a writer that
seeks back to patch a header, or rewrites the file for faststart) are sent again before completing.
A server that refuses to replace a part gets a fresh upload of the whole file instead.

When no indexed content has the file's size it cannot be a duplicate, so the read runs beside the
sending of the parts not sent yet instead of before it; a file of one PutObject is then read only
by the PUT, whose signed SHA-256 is the file's. And a file that grew and went quiet is read
while its idle period runs (see chunkd.pipeline.prescan): if it is still exactly as that read saw
it when the period ends, finalizing does not read it again.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor

from chunkd.errors import PermanentError, SourceChangedError, SourceGoneError, UploadGoneError
from chunkd.model.planner import Part, PartSchedule
from chunkd.model.states import PartRecord, StreamState
from chunkd.pipeline.coordinator import UploadCoordinator
from chunkd.pipeline.dedup import duplicate_of, finish_duplicate, may_be_duplicate
from chunkd.pipeline.hashing import LocalScan, Scan, whole_md5
from chunkd.pipeline.mediagate import MediaVerdict, check_media, with_poster
from chunkd.pipeline.monitor import Change, Snapshot, compare, take_snapshot
from chunkd.pipeline.objectcheck import ObjectCheck, check_layout, completed_earlier
from chunkd.pipeline.partreader import open_checked
from chunkd.pipeline.prescan import Prescan, PrescanSlot
from chunkd.pipeline.publish import publish
from chunkd.pipeline.sender import PartSender

MAX_REWRITE_ROUNDS = 3


class Finalizer:
    """Turns an idle file's upload into a checked object and its manifest."""

    def __init__(self, upload: UploadCoordinator, sender: PartSender, schedule: PartSchedule) -> None:
        self._upload = upload
        self._sender = sender
        self._schedule = schedule
        self._check = ObjectCheck(upload.engine.uploader, upload.record, upload.path)
        self._pending_scan: Future[LocalScan] | None = None
        self.prescans = PrescanSlot()

    def finalize(self, snap: Snapshot) -> bool:
        """Complete the object for the file as `snap` saw it; False if the file moved on meanwhile.

        Raises Quarantined when the file is not media and the policy says so.
        """
        upload = self._upload
        multipart = self._multipart(snap)
        # Durable before a Complete (resume adopts an upload completed just before a crash); a
        # single PutObject has nothing to adopt, so its record is next written COMPLETED.
        upload.move_to(StreamState.FINALIZING, save=multipart)
        self._pending_scan = None
        needed = list(self._schedule.parts_for(snap.size))
        prescanned = self.prescans.take(snap)
        if not may_be_duplicate(upload, snap.size):
            if multipart:
                return self._finalize_overlapped(needed, snap, prescanned)
            if prescanned is None:  # nothing to compare with before sending: the PUT's read is the one read
                _readable(upload, snap)
                return self._finish_single(snap, None, self._check_media(snap))
        scan = prescanned.future.result() if prescanned is not None else self.scan_for(snap, set(upload.done)).run()
        if _moved_on(upload, snap):
            return False
        upload.record.sha256 = scan.sha256
        media = self._check_media(snap)
        original = duplicate_of(upload, scan.sha256, snap.size)
        if original is not None:
            if _moved_on(upload, snap):  # the last look before the object is committed
                return False
            if finish_duplicate(upload, original, snap, media):
                return True
        if not multipart:
            return self._finish_single(snap, scan, media)
        return self._finish_multipart(needed, snap, scan, media)

    def scan_for(self, snap: Snapshot, part_hashes: set[int]) -> Scan:
        """The read of the whole file as `snap` saw it, with the checksum of each part named: the
        one it was sent with (for a part still in flight, the one this server's parts are sent with)."""
        by_md5 = self._upload.engine.uploader.content_md5
        done = self._upload.done
        md5_parts = {n for n in part_hashes if _sent_with_md5(done.get(n), default=by_md5)}
        parts = list(self._schedule.parts_for(snap.size))
        return Scan(self._upload.path, snap.identity, parts, part_hashes=part_hashes, md5_parts=md5_parts)

    def _multipart(self, snap: Snapshot) -> bool:
        return self._upload.record.upload_id is not None or snap.size >= self._schedule.part_size(1)

    def _check_media(self, snap: Snapshot) -> MediaVerdict:
        pending = self._pending_scan

        def sha256() -> str | None:
            """The whole file's hash for a quarantine note: the scan's, or a read of its own."""
            return (pending.result() if pending else self.scan_for(snap, set()).run()).sha256

        return with_poster(self._upload, check_media(self._upload, snap, sha256=sha256))

    def _finalize_overlapped(self, needed: list[Part], snap: Snapshot, prescanned: Prescan | None) -> bool:
        """Send the parts never sent while the file is read for its hashes, instead of after."""
        upload = self._upload
        cancel = prescanned.cancel_event if prescanned is not None else threading.Event()
        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="chunkd-scan")
        try:
            if prescanned is not None:
                self._pending_scan = prescanned.future
            else:
                scan = self.scan_for(snap, set(upload.done))
                self._pending_scan = pool.submit(dataclasses.replace(scan, cancel=cancel).run)
            media = self._check_media(snap)
            self._sender.send_now([p for p in needed if not _sent(upload.done.get(p.number), p)])
            result = self._pending_scan.result()
        finally:
            cancel.set()  # a no-op once the scan finished; else it stops reading at once
            pool.shutdown(wait=True)
        if _moved_on(upload, snap):
            return False
        upload.record.sha256 = result.sha256
        return self._finish_multipart(needed, snap, result, media)

    def _finish_single(self, snap: Snapshot, scan: LocalScan | None, media: MediaVerdict) -> bool:
        """One PutObject. Without a `scan` (no duplicate possible) the PUT's own read is the only
        one: the SHA-256 it signs the body with is the file's."""
        upload = self._upload
        record, engine = upload.record, upload.engine
        if _moved_on(upload, snap):  # the last look before the object is committed
            return False
        attributes = upload.fixed_attributes()
        began = time.monotonic()
        digest, etag = engine.uploader.put_object(
            record.bucket, record.key, upload.path, snap.size, snap.identity, attributes=attributes
        )
        record.send_seconds += time.monotonic() - began
        record.attributes = attributes.to_dict()
        if (scan is not None and digest.sha256_hex != scan.sha256) or _moved_on(upload, snap, gone_is_done=True):
            return False
        sha256 = digest.sha256_hex
        if sha256 is None:  # put_object always signs with the body's SHA-256: the file's, in the manifest
            raise RuntimeError("PutObject sent without the body's SHA-256")
        record.sha256 = sha256
        part = PartRecord(number=1, offset=0, size=snap.size, etag=etag, sha256=sha256)
        engine.progress(record.relpath, snap.size)
        engine.metrics.object_uploaded(snap.size)
        # No HeadObject: the 200 to a PutObject of exactly these bytes (signed SHA-256, length) is
        # the server's word; for multipart objects the check after Complete stays.
        publish(upload, [part], etag, snap, kind="single", media=media)
        return True

    def _finish_multipart(self, needed: list[Part], snap: Snapshot, scan: LocalScan, media: MediaVerdict) -> bool:
        upload = self._upload
        for _ in range(MAX_REWRITE_ROUNDS):
            missing = [p for p in needed if not _matches(upload.done.get(p.number), p, scan)]
            if not missing:
                break
            rewritten = [p.number for p in missing if p.number in upload.done and upload.done[p.number].size == p.size]
            if rewritten:
                upload.log.warning("parts changed on disk since they were sent; sending them again",
                                   extra={"parts": rewritten})
            try:
                self._sender.send_now(missing)
            except PermanentError as exc:
                if not rewritten or exc.code != "NotImplemented":
                    raise
                upload.log.warning("server refuses to replace parts; uploading the whole file again")
                upload.abort_upload()
                upload.forget_upload(drop_parts=True)  # the next round sends every part under a new upload
            if _moved_on(upload, snap):
                return False
        else:
            raise SourceChangedError("file kept changing during finalize")
        if _moved_on(upload, snap):  # the last look before the object is committed
            return False
        parts = [upload.done[p.number] for p in needed]
        check_layout(parts, snap.size)
        etag = self._check.verified_etag(snap, parts, self._complete(parts))
        publish(upload, parts, etag, snap, kind="multipart", media=media)
        return True

    def _complete(self, parts: list[PartRecord]) -> str:
        """Complete the upload; the ETag the server answered with ("" after a crash's adoption)."""
        upload = self._upload
        record, uploader = upload.record, upload.engine.uploader
        assert record.upload_id is not None
        try:
            return uploader.complete(record.bucket, record.key, record.upload_id, parts)
        except UploadGoneError:
            # A crash after CompleteMultipartUpload but before we recorded it: the object is there.
            info = uploader.head(record.bucket, record.key)
            if not completed_earlier(info, parts, lambda: whole_md5(upload.path, upload.identity)):
                raise
            upload.log.info("upload was already completed before a restart; adopting the object")
            return ""


def _sent(recorded: PartRecord | None, part: Part) -> bool:
    return recorded is not None and recorded.size == part.size


def _matches(recorded: PartRecord | None, part: Part, scan: LocalScan) -> bool:
    """Sent, and (if it was sent before the scan) its bytes are still the ones sent."""
    if recorded is None or not _sent(recorded, part):
        return False
    return scan.matches(recorded)


def _sent_with_md5(recorded: PartRecord | None, *, default: bool) -> bool:
    return default if recorded is None else bool(recorded.md5) and not recorded.sha256


def _readable(upload: UploadCoordinator, snap: Snapshot) -> None:
    """Open the file as `snap` saw it, reading nothing: an unreadable or replaced file fails as
    itself (PermissionError, SourceChangedError) before media checks and sending, as it does when
    a scan reads it first, not as a refused S3 request."""
    open_checked(upload.path, snap.identity).close()


def _moved_on(upload: UploadCoordinator, snap: Snapshot, *, gone_is_done: bool = False) -> bool:
    """Whether the file is no longer as `snap` saw it; SourceGoneError if it left its name.

    Up to the commit (CompleteMultipartUpload, PutObject, the copy of a duplicate) a file renamed or
    deleted fails the upload under its old name, and the new name goes up on its own. Once the commit
    was sent (`gone_is_done`) the object is the file as read: it stands under the old name.
    Before the commit an operator's cancel stops it (CancelledError): finalizing is no way around
    `chunkd cancel`.
    """
    if not gone_is_done:
        upload.stop_if_cancelled()
    try:
        now = take_snapshot(upload.path)
    except SourceGoneError:
        if gone_is_done:
            return False
        raise
    return compare(snap, now) is not Change.UNCHANGED
