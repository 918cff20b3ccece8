"""`chunkd cancel`: stop one unfinished stream and abort its multipart upload.

FAILED first, in one atomic step of the store, with the upload id kept: a running daemon stops at
its next check, can no longer write over the cancel, and aborts the upload itself should our abort
fail. Then the abort. Then the upload id and parts are forgotten, which tells that daemon the abort
is done and lets a later `chunkd retry` start a fresh upload.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass

from chunkd.errors import CancelledError, ChunkdError, TransferError, UploadGoneError
from chunkd.model.states import StreamRecord, StreamState, UrlRecord, UrlState
from chunkd.s3.uploader import Uploader
from chunkd.store.protocol import StreamLedger, UrlLedger

CANCELLED = "cancelled by operator"


class Abort(enum.Enum):
    NOTHING = "nothing"  # no multipart upload was started yet
    ABORTED = "aborted"
    GONE = "gone"  # aborted or expired before we got to it
    FAILED = "failed"  # still there: the daemon or `chunkd gc` aborts it later


@dataclass(frozen=True)
class AbortResult:
    outcome: Abort
    upload_id: str | None = None
    error: TransferError | None = None


@dataclass
class Canceller:
    """The store to cancel in, and the S3 gateway for the abort (built only when there is one)."""

    store: StreamLedger
    uploader: Callable[[], Uploader]
    reason: str = CANCELLED

    def fail(self, stream_id: str) -> StreamRecord:
        """Move the stream to FAILED; raises ChunkdError for an unknown or finished stream."""
        record = self.store.cancel_stream(stream_id, self.reason)
        if record is not None:
            return record
        stored = self.store.get_stream(stream_id)
        if stored is None:
            raise ChunkdError(f"no stream with id {stream_id!r} (the ID column of chunkd status)")
        state = stored.state.value
        raise ChunkdError(f"stream {stored.id} ({stored.relpath}) is already {state}; nothing to cancel")

    def abort_upload(self, record: StreamRecord) -> AbortResult:
        """Abort the cancelled stream's multipart upload, then forget it unless the abort failed."""
        upload_id = record.upload_id
        if upload_id is None:
            return AbortResult(Abort.NOTHING)
        try:
            self.uploader().abort(record.bucket, record.key, upload_id)
            outcome = Abort.ABORTED
        except UploadGoneError:
            outcome = Abort.GONE
        except TransferError as exc:
            return AbortResult(Abort.FAILED, upload_id, exc)
        self._forget_upload(record.id, upload_id)
        return AbortResult(outcome, upload_id)

    def committed_meanwhile(self, stream_id: str) -> StreamRecord | None:
        """The stream's record if it is COMPLETED after our cancel: its daemon had committed the
        object before the cancel came, and recorded it done over the cancel (chunkd.pipeline.publish).
        None when it is not (yet) so: a daemon still writing it logs the same news."""
        stored = self.store.get_stream(stream_id)
        return stored if stored is not None and stored.state is StreamState.COMPLETED else None

    def _forget_upload(self, stream_id: str, upload_id: str) -> None:
        record = self.store.get_stream(stream_id)
        if record is None or record.state is not StreamState.FAILED or record.upload_id != upload_id:
            return  # retried or replaced meanwhile: that is no longer ours to change
        record.upload_id = None
        try:  # guarded: its daemon may have recorded it COMPLETED since the read (a cancel too late)
            self.store.save_stream(record, guard=True)
        except CancelledError:
            return
        self.store.drop_parts(stream_id)


def cancel_url(store: UrlLedger, text: str, reason: str = CANCELLED) -> UrlRecord:
    """Move a links-file URL (as written there, or as `chunkd status` shows it) to FAILED with
    `reason`: a download under way stops at its next progress write (chunkd.links.fetch), a queued
    one is not started. Raises ChunkdError for an unknown or settled URL."""
    from chunkd.links.parse import normalize_url

    try:
        record = store.get_url(normalize_url(text))
    except ValueError:
        record = None
    if record is None:  # credentials are redacted where status shows the URL
        record = next((url for url in store.list_urls() if url.display == text), None)
    if record is None:
        raise ChunkdError(f"no stream with id and no download of {text!r} (the ID and URL columns of chunkd status)")
    if record.state.terminal:
        raise ChunkdError(f"download of {record.display} is already {record.state.value}; nothing to cancel")
    record.move_to(UrlState.FAILED, error=reason)
    store.save_url(record)
    return record
