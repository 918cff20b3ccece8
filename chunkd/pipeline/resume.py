"""Resume: bring the ledger in line with what the server holds before sending anything.

ListParts is the truth. A part the server holds but the ledger missed (killed between the server's
acknowledgement and the checkpoint) is kept when the local bytes hash to its ETag; a part the
ledger has but the server does not is sent again. A new record for a file whose upload the bucket
already holds (the store came back empty) adopts that upload instead of starting over.
"""

from __future__ import annotations

import dataclasses

from chunkd.errors import PermanentError, UploadGoneError
from chunkd.model.planner import PartSchedule
from chunkd.model.states import PartRecord, StreamRecord, StreamState
from chunkd.pipeline.coordinator import UploadCoordinator
from chunkd.pipeline.hashing import whole_md5
from chunkd.pipeline.monitor import Snapshot
from chunkd.pipeline.objectcheck import completed_earlier
from chunkd.pipeline.partreader import digest_range, open_checked
from chunkd.pipeline.recovery import restore_completed

MAX_ADOPTION_CANDIDATES = 3


class Resume:
    """Fills the coordinator's ledger with the parts that need not be sent again."""

    def __init__(self, upload: UploadCoordinator, schedule: PartSchedule, snap: Snapshot) -> None:
        self._upload = upload
        self._schedule = schedule
        self._snap = snap

    def reconcile(self) -> None:
        upload = self._upload
        record, store, uploader = upload.record, upload.store, upload.engine.uploader
        ledger = {part.number: part for part in store.list_parts(record.id)}
        if record.upload_id is None:
            if ledger:
                store.drop_parts(record.id)
            upload.done.update(self._adopt_upload())
            return
        try:
            remote = uploader.list_parts(record.bucket, record.key, record.upload_id)
        except UploadGoneError:
            upload.done.update(self._upload_gone(ledger))
            return
        stale = [n for n, part in ledger.items() if n not in remote or remote[n].etag.strip('"') != part.etag.strip('"')]
        if stale:
            store.drop_parts(record.id, stale)
            for number in stale:
                del ledger[number]
        for number, remote_part in sorted(remote.items()):
            if number not in ledger:
                adopted = self._adopt_part(number, remote_part.size, remote_part.etag)
                if adopted is not None:
                    store.record_part(record.id, adopted)
                    ledger[number] = adopted
        upload.log.info("resumed", extra={"parts_recorded": len(ledger), "parts_on_server": len(remote)})
        upload.done.update(ledger)

    def _adopt_upload(self) -> dict[int, PartRecord]:
        """The newest unfinished upload for the key whose parts match the local bytes, if any."""
        upload = self._upload
        record, uploader = upload.record, upload.engine.uploader
        if self._snap.size < self._schedule.part(1).end:
            return {}  # no full part yet: nothing can have been sent
        try:
            candidates = uploader.list_uploads(record.bucket, record.key)[:MAX_ADOPTION_CANDIDATES]
        except PermanentError as exc:  # a server without ListMultipartUploads: nothing to adopt
            upload.log.debug("cannot list unfinished uploads: %s", exc)
            return {}
        empty: str | None = None  # created by a daemon that died before its first part landed
        for upload_id in candidates:
            try:
                remote = uploader.list_parts(record.bucket, record.key, upload_id)
            except UploadGoneError:
                continue
            if not remote:
                empty = empty or upload_id
                continue
            adopted = {}
            for number, remote_part in sorted(remote.items()):
                part = self._adopt_part(number, remote_part.size, remote_part.etag)
                if part is not None:
                    adopted[number] = part
            if not adopted:
                continue
            upload.use_upload(upload_id)
            upload.save()
            for part in adopted.values():
                upload.store.record_part(record.id, part)
            upload.log.info(
                "adopted an unfinished upload found in the bucket",
                extra={"upload_id": upload_id, "parts_adopted": len(adopted), "parts_on_server": len(remote)},
            )
            return adopted
        if empty is not None:  # ours to use (we hold the file's lease) rather than leave for gc
            upload.use_upload(empty)
            upload.save()
            upload.log.info("reusing an empty unfinished upload found in the bucket", extra={"upload_id": empty})
        return {}

    def _adopt_part(self, number: int, size: int, etag: str) -> PartRecord | None:
        """Keep a part the server holds only if the local bytes hash to the server's ETag. It is
        recorded with the checksum this server verifies parts by (see PartRecord)."""
        part = self._schedule.part(number)
        if size != part.size or part.end > self._snap.size:
            return None
        by_md5 = self._upload.engine.uploader.content_md5
        with open_checked(self._upload.path, self._snap.identity) as handle:
            digest = digest_range(handle, part.offset, part.size, md5=True, sha256=not by_md5)
        if digest.md5_hex != etag.strip('"').lower():
            return None
        self._upload.log.debug("adopted a part the server had but the checkpoint missed", extra={"part": number})
        return PartRecord(
            number=number, offset=part.offset, size=part.size, etag=etag,
            sha256=digest.sha256_hex or "", md5=digest.md5_hex if by_md5 else "",
        )

    def _restored(self) -> bool:
        """The upload is gone because it completed, and the record says otherwise: a Redis failover
        lost the last writes (COMPLETED among them) the old primary acknowledged. The manifest of
        this stream, describing this very file, says so; its record is written back COMPLETED."""
        upload = self._upload
        record = upload.record
        upload.engine.folders.forget()  # a listing from before this run's manifests would hide them
        restored = restore_completed(
            upload.engine, upload.store, record.key, record.relpath, upload.path, self._snap, stream_id=record.id,
        )
        if restored is None:
            return False
        for field in dataclasses.fields(StreamRecord):  # the job's record object is shared: update it in place
            setattr(record, field.name, getattr(restored, field.name))
        return True

    def _upload_gone(self, ledger: dict[int, PartRecord]) -> dict[int, PartRecord]:
        upload = self._upload
        record, uploader = upload.record, upload.engine.uploader
        parts = [ledger[n] for n in sorted(ledger)]
        if (
            record.state is StreamState.FINALIZING
            and parts
            and completed_earlier(
                uploader.head(record.bucket, record.key), parts, lambda: whole_md5(upload.path, upload.identity)
            )
        ):
            return ledger  # completed on the server before a crash; only the manifest and record are missing
        if self._restored():
            return {}
        upload.log.warning("multipart upload no longer exists on the server; starting a fresh upload")
        upload.forget_upload(drop_parts=True)
        upload.save()
        return {}
