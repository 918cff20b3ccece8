"""One upload's shared state: its record, the parts the server acknowledged, and what to undo.

Every piece of a stream job (growth loop, part sender, resume, finalize) works through the
coordinator instead of calling one another: the ledger of finished parts lives here, the record is
saved here (refused by the store once an operator cancelled the stream), and a resource that must
not outlive a failure — the multipart upload — registers its cleanup the moment it is created.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from chunkd.errors import CancelledError, PermanentError, StoreError, TransferError, UploadGoneError
from chunkd.model.attributes import ObjectAttributes
from chunkd.model.states import PartRecord, StreamRecord, StreamState
from chunkd.pipeline.engine import Engine, StreamLog
from chunkd.pipeline.partreader import FileIdentity
from chunkd.store import JobLedger

logger = logging.getLogger("chunkd.stream")


class UploadCoordinator:
    """The record, the ledger and the failure cleanups of one stream job's upload."""

    def __init__(
        self, engine: Engine, store: JobLedger, path: Path, record: StreamRecord, log: StreamLog,
        *, final: bool = False,
    ) -> None:
        self.engine = engine
        self.store = store
        self.path = path
        self.record = record
        self.log = log
        self.final = final  # the caller says the file is complete: no need to wait for idleness
        self.done: dict[int, PartRecord] = {}  # part number -> acknowledged and checkpointed
        self._cleanups: dict[str, Callable[[], None]] = {}
        if record.upload_id is not None:
            self._track_upload(record.upload_id)

    @property
    def identity(self) -> FileIdentity:
        return FileIdentity(self.record.device, self.record.inode)

    # -- the record ----------------------------------------------------------------------------

    def save(self, *, index: bool = False, over_cancel: bool = False) -> None:
        """Save the record; CancelledError once an operator cancelled the stream (never written over).
        `index`: its SHA-256 enters the content index in the same write. `over_cancel`: written even
        over a cancel (the COMPLETED record of an object committed before the cancel came)."""
        if over_cancel:
            self.store.save_stream(self.record, index=index, guard=False)
        else:
            self.store.save_stream(self.record, index=index)

    def move_to(self, state: StreamState, *, save: bool = True) -> None:
        """`save=False`: in memory until the next save — for a state nothing reads back in between
        (the steps a single PutObject passes through: a crash there sends the file again anyway)."""
        if self.record.state is not state:
            self.record.move_to(state)
            if save:
                self.save()

    def record_part(self, part: PartRecord) -> None:
        """Checkpoint first, then count it and tell the progress listeners."""
        previous = self.done.get(part.number)
        self.store.record_part(self.record.id, part)
        self.done[part.number] = part
        self.engine.metrics.part_uploaded(part.size)
        self.engine.progress(self.record.relpath, part.size - (previous.size if previous else 0))

    def cancelled(self) -> StreamRecord | None:
        """The stored record if an operator cancelled the stream (it says FAILED, ours does not)."""
        stored = self.store.get_stream(self.record.id)
        if stored is None or stored.state is not StreamState.FAILED or self.record.state is StreamState.FAILED:
            return None
        return stored

    def stop_if_cancelled(self) -> None:
        """CancelledError once an operator cancelled the stream, before anything more is committed;
        the upload is aborted here unless the canceller has done it already (it forgot the id)."""
        stored = self.cancelled()
        if stored is None:
            return
        if self.record.upload_id and stored.upload_id:
            self.run_cleanups()
        raise CancelledError(f"stream {self.record.id} was cancelled")

    # -- the multipart upload ------------------------------------------------------------------

    def ensure_upload(self) -> str:
        """The upload's id, creating it (and recording it at once, so a crash leaves no orphan
        nobody knows of) on first use."""
        record = self.record
        if record.upload_id is not None:
            return record.upload_id
        attributes = self.fixed_attributes()
        upload_id = self.engine.uploader.create(
            record.bucket, record.key, attributes=attributes, held=self._held_by_another_stream
        )
        self.use_upload(upload_id)
        record.attributes = attributes.to_dict()
        record.first_byte_at = self.engine.wall()
        try:
            self.save()
        except CancelledError:
            self.run_cleanups()
            raise
        self.log.info("multipart upload created")
        return upload_id

    def fixed_attributes(self) -> ObjectAttributes:
        """The attributes to create the object with: the ones its record keeps (an upload created
        before), else the settings' now. The caller records them once the server took the create,
        so a refused create (a bucket demanding encryption) is tried again with the settings then."""
        record, engine = self.record, self.engine
        if record.attributes is not None:
            return ObjectAttributes.from_dict(record.attributes)
        try:
            return engine.settings.attributes.render(
                key=record.key, relpath=record.relpath, hostname=engine.hostname, now=engine.wall(), node=engine.node,
            )
        except ValueError as exc:
            raise PermanentError(str(exc), code="InvalidArgument", key=record.key) from None

    def _held_by_another_stream(self, upload_id: str) -> bool:
        """Another stream's record names this upload: never ours to abort."""
        record = self.record
        return any(
            other.id != record.id and other.upload_id == upload_id
            for other in self.store.find_by_key(record.bucket, record.key)
        )

    def use_upload(self, upload_id: str) -> None:
        """Take this upload as the stream's own (created, or adopted from the bucket)."""
        self.record.upload_id = upload_id
        self._track_upload(upload_id)

    def forget_upload(self, *, drop_parts: bool) -> None:
        """The upload is gone or given up: no cleanup is owed for it any more."""
        if self.record.upload_id is not None:
            self._cleanups.pop(_upload_resource(self.record.upload_id), None)
        self.record.upload_id = None
        if drop_parts:
            self.store.drop_parts(self.record.id)
            self.done.clear()

    def abort_upload(self) -> None:
        """Abort the upload now (dedup, quarantine, a fresh start) and save the record without it."""
        if self.record.upload_id is None:
            return
        self._abort(self.record.upload_id, quiet_if_gone=True)
        self.forget_upload(drop_parts=False)
        self.save()

    def _track_upload(self, upload_id: str) -> None:
        self._cleanups[_upload_resource(upload_id)] = lambda: self._abort(upload_id, quiet_if_gone=True)

    def _abort(self, upload_id: str, *, quiet_if_gone: bool) -> None:
        record = self.record
        try:
            self.engine.uploader.abort(record.bucket, record.key, upload_id)
        except UploadGoneError:
            if not quiet_if_gone:
                raise
        except TransferError as exc:
            self.log.warning("could not abort multipart upload (gc will): %s", exc)

    def run_cleanups(self) -> None:
        """Undo what this upload created (the multipart upload), once."""
        cleanups, self._cleanups = self._cleanups, {}
        for cleanup in cleanups.values():
            cleanup()

    # -- failure bookkeeping -------------------------------------------------------------------

    def fail(self, reason: str, *, abort: bool) -> None:
        """Mark the stream FAILED with a reason the user sees in `chunkd status`."""
        if abort:
            self.run_cleanups()
        record_failure(self.engine, self.store, self.record, reason, self.log)

    def note_error(self, reason: str) -> None:
        """Transient trouble: shown in `chunkd status` while the file waits to be tried again."""
        self.record.last_error = reason
        self.record.updated_at = self.engine.wall()
        try:
            self.store.save_stream(self.record)
        except StoreError:
            self.engine.metrics.store_error()
        except CancelledError:
            pass  # the cancel is what the user sees


def record_failure(engine: Engine, store: JobLedger, record: StreamRecord, reason: str, log: StreamLog) -> None:
    record.move_to(StreamState.FAILED, error=reason)
    try:
        store.save_stream(record)
    except StoreError as exc:
        engine.metrics.store_error()
        log.error("could not record failure: %s", exc)
    log.error("failed: %s", reason)


def _upload_resource(upload_id: str) -> str:
    return f"multipart-upload:{upload_id}"
