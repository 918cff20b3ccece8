"""What an operator's cancel means to the ledger, as pure rules both backends apply inside one
atomic step (a SQLite transaction, a Redis WATCH/MULTI)."""

from __future__ import annotations

from chunkd.errors import CancelledError, CancelTooLateError
from chunkd.model.states import StreamRecord, StreamState


def check_not_finished(stored: StreamRecord | None, record: StreamRecord) -> None:
    """The guard of `save_stream(guard=True)`: a running job's record never replaces a finished one.

    A job's copy of its record is read long before it is written back; meanwhile `chunkd cancel`
    may have failed the stream. A finished record (the job's own failure, say) may be written over
    anything but COMPLETED (whose object is in the bucket), and COMPLETED over a cancel is refused with CancelTooLateError: the one writer of COMPLETED
    (chunkd.pipeline.publish) learns in the same atomic step that the cancel came too late to stop
    the object, says so, and writes COMPLETED unguarded.
    """
    if stored is not None and record.state is StreamState.COMPLETED and was_cancelled(stored):
        raise CancelTooLateError(f"stream {record.id} ({record.relpath}) was cancelled after its object was committed")
    if stored is not None and stored.state is StreamState.COMPLETED and record.state is not StreamState.COMPLETED:
        raise CancelledError(  # its object is in the bucket: no other state may be written over that
            f"stream {record.id} ({record.relpath}) is COMPLETED in the state store; not writing {record.state.value} over it"
        )
    if stored is None or record.state.terminal or not stored.state.terminal:
        return
    why = f" ({stored.last_error})" if stored.last_error else ""
    raise CancelledError(
        f"stream {record.id} ({record.relpath}) is {stored.state.value}{why} in the state store; "
        f"not writing {record.state.value} over it"
    )


def was_cancelled(stored: StreamRecord) -> bool:
    """FAILED by an operator's cancel (not by the job's own failure)."""
    return stored.state is StreamState.FAILED and stored.cancelled_at is not None


def cancelled(stored: StreamRecord | None, reason: str) -> StreamRecord | None:
    """`stored` moved to FAILED with `reason`, or None when there is nothing left to cancel.

    The upload id stays: whoever aborts the multipart upload (the canceller, or the job should that
    fail) still needs it.
    """
    if stored is None or stored.state.terminal:
        return None
    stored.move_to(StreamState.FAILED, error=reason)
    stored.cancelled_at = stored.updated_at
    return stored
