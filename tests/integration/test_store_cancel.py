"""An operator's cancel against a running job, on both backends (SQLite on a temp file, Redis on a
real server): the cancel is one atomic step, and a job's guarded save never writes over it."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor, wait

import pytest

from chunkd.errors import CancelledError, CancelTooLateError
from chunkd.model.states import StreamRecord, StreamState
from chunkd.store import CheckpointStore
from chunkd.store.fenced import FencedStore
from chunkd.store.health import StoreHealth
from chunkd.store.lease import HeldLease, Lease
from tests.support.stores import Opener

CANCELLED = "cancelled by operator"


def uploading(stream_id: str = "s1") -> StreamRecord:
    return StreamRecord(
        id=stream_id, relpath=f"cam/{stream_id}.mp4", source_path=f"/in/cam/{stream_id}.mp4", bucket="videos",
        key=f"cam/{stream_id}.mp4", schedule={}, state=StreamState.UPLOADING, upload_id="upl-1",
    )


def fenced(store: CheckpointStore, relpath: str) -> FencedStore:
    """The store as a stream job holding the file's lease sees it."""
    token = store.acquire_lease(relpath, "host/1/job", 30)
    assert token is not None
    return FencedStore(store, HeldLease(Lease(relpath, "host/1/job", token), 30), health=StoreHealth(),
                       wait=lambda seconds: True)


def test_guarded_save_over_a_cancelled_stream_is_refused(store: CheckpointStore) -> None:
    record = uploading()
    store.save_stream(record)
    cancelled = StreamRecord.from_dict(record.to_dict())
    cancelled.move_to(StreamState.FAILED, error=CANCELLED)
    store.save_stream(cancelled)

    record.size = 123  # the job moved on from its own, older copy
    with pytest.raises(CancelledError):
        store.save_stream(record, guard=True)
    assert store.get_stream("s1") == cancelled


def test_guarded_save_refuses_over_every_finished_state_and_allows_the_rest(store: CheckpointStore) -> None:
    for stream_id, state in [("c", StreamState.COMPLETED), ("q", StreamState.QUARANTINED)]:
        finished = uploading(stream_id)
        finished.state = state
        store.save_stream(finished)
        with pytest.raises(CancelledError):
            store.save_stream(uploading(stream_id), guard=True)
        assert store.get_stream(stream_id) == finished

    fresh = uploading("new")
    store.save_stream(fresh, guard=True)  # nothing stored yet
    fresh.move_to(StreamState.FINALIZING)
    store.save_stream(fresh, guard=True)  # over a stream still running
    assert store.get_stream("new") == fresh

    fresh.move_to(StreamState.FAILED, error="the job's own failure")
    store.save_stream(fresh, guard=True)  # a finished record may always be written
    fresh.move_to(StreamState.PENDING)
    store.save_stream(fresh)  # `chunkd retry`: an unguarded save brings a FAILED stream back
    assert store.get_stream("new") == fresh


def test_a_cancel_between_the_jobs_read_and_write_wins(open_backend: Opener) -> None:
    daemon, cli = open_backend(), open_backend()
    daemon.save_stream(uploading())
    job = fenced(daemon, "cam/s1.mp4")

    record = job.get_stream("s1")  # the job reads its record ...
    assert record is not None and record.state is StreamState.UPLOADING
    assert cli.cancel_stream("s1", CANCELLED) is not None  # ... the operator cancels ...
    record.upload_id = "upl-2"
    with pytest.raises(CancelledError):  # ... and the job's write is refused
        job.save_stream(record)

    stored = daemon.get_stream("s1")
    assert stored is not None
    assert (stored.state, stored.last_error, stored.upload_id) == (StreamState.FAILED, CANCELLED, "upl-1")


def test_a_job_saving_all_the_time_never_undoes_a_cancel(open_backend: Opener) -> None:
    daemon, cli = open_backend(), open_backend()
    daemon.save_stream(uploading())
    job = fenced(daemon, "cam/s1.mp4")
    saved, stop = threading.Event(), threading.Event()

    read = job.get_stream("s1")  # every saver starts from a copy read before the cancel
    assert read is not None

    def keep_saving() -> bool:
        """True once the store refused a save; the test's own timeout stops the loop otherwise."""
        record = StreamRecord.from_dict(read.to_dict())
        while not stop.is_set():
            record.size += 1
            try:
                job.save_stream(record)
            except CancelledError:
                return True
            saved.set()
        return False

    with ThreadPoolExecutor(4) as pool:
        savers = [pool.submit(keep_saving) for _ in range(4)]
        try:
            assert saved.wait(10)
            cancelled = cli.cancel_stream("s1", CANCELLED)
            wait(savers, timeout=10)  # each saver's next save after the cancel is refused
        finally:
            stop.set()
    assert cancelled is not None
    assert daemon.get_stream("s1") == cancelled  # a save that went through would have undone it
    assert [saver.result() for saver in savers] == [True] * 4


def test_cancel_stream_fails_the_record_and_keeps_its_upload(store: CheckpointStore) -> None:
    store.save_stream(uploading())
    cancelled = store.cancel_stream("s1", CANCELLED)
    assert cancelled is not None
    assert (cancelled.state, cancelled.last_error, cancelled.upload_id) == (StreamState.FAILED, CANCELLED, "upl-1")
    assert store.get_stream("s1") == cancelled
    assert [r.id for r in store.list_streams([StreamState.FAILED])] == ["s1"]
    assert store.list_streams([StreamState.UPLOADING]) == []


def test_cancel_stream_leaves_unknown_and_finished_streams_alone(store: CheckpointStore) -> None:
    assert store.cancel_stream("nope", CANCELLED) is None
    assert store.get_stream("nope") is None
    for stream_id, state in [("c", StreamState.COMPLETED), ("f", StreamState.FAILED), ("q", StreamState.QUARANTINED)]:
        finished = uploading(stream_id)
        finished.state, finished.last_error = state, "as it was"
        store.save_stream(finished)
        assert store.cancel_stream(stream_id, CANCELLED) is None
        assert store.get_stream(stream_id) == finished


def test_two_cancels_at_once_only_one_takes_effect(open_backend: Opener) -> None:
    stores = [open_backend() for _ in range(4)]
    stores[0].save_stream(uploading())
    start = threading.Barrier(len(stores))

    def cancel(store: CheckpointStore) -> StreamRecord | None:
        start.wait()
        return store.cancel_stream("s1", CANCELLED)

    with ThreadPoolExecutor(len(stores)) as pool:
        results = list(pool.map(cancel, stores))
    assert len([r for r in results if r is not None]) == 1


def test_completed_over_a_cancel_is_refused_as_too_late_and_written_unguarded(store: CheckpointStore) -> None:
    """The one writer of COMPLETED (chunkd.pipeline.publish) learns in its atomic save that the
    object it committed was cancelled meanwhile, then records it done over the cancel."""
    job = fenced(store, "cam/s1.mp4")
    record = uploading()
    store.save_stream(record)
    assert store.cancel_stream("s1", CANCELLED) is not None

    record.move_to(StreamState.FINALIZING)
    record.move_to(StreamState.COMPLETED)
    with pytest.raises(CancelTooLateError):
        job.save_stream(record)
    stored = store.get_stream("s1")
    assert stored is not None and (stored.state, stored.last_error) == (StreamState.FAILED, CANCELLED)

    job.save_stream(record, guard=False)
    assert store.get_stream("s1") == record

    failed = uploading("s2")  # the job's own failure still writes over a cancel, as before
    store.save_stream(failed)
    assert store.cancel_stream("s2", CANCELLED) is not None
    failed.move_to(StreamState.FAILED, error="boom")
    job.save_stream(failed)
    assert store.get_stream("s2") == failed


def test_nothing_guarded_is_written_over_a_completed_stream(store: CheckpointStore) -> None:
    """`chunkd cancel` forgets the aborted upload of the record it read FAILED; its daemon may have
    recorded the stream COMPLETED since (the cancel came too late). That write must not be undone."""
    from chunkd.ops.cancel import Canceller

    record = uploading()
    store.save_stream(record)
    stale = store.cancel_stream("s1", CANCELLED)
    assert stale is not None
    record.move_to(StreamState.FINALIZING)
    record.move_to(StreamState.COMPLETED)
    store.save_stream(record)  # the daemon's COMPLETED over the cancel (chunkd.pipeline.publish)

    reads = store.get_stream
    store.get_stream = lambda stream_id: stale  # type: ignore[method-assign]  # the canceller read before it
    try:
        Canceller(store, uploader=lambda: None)._forget_upload("s1", "upl-1")  # type: ignore[arg-type,return-value]
    finally:
        store.get_stream = reads  # type: ignore[method-assign]
    assert store.get_stream("s1") == record
    with pytest.raises(CancelledError):
        store.save_stream(stale, guard=True)
