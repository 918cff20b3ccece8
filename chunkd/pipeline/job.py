"""One file's journey, under its lease: find or create its stream record, resume, send parts as the
file grows, finalize once it has gone idle, and say how it ended.

The pieces each do one thing — Discovery (which record), Resume (what the server already holds),
GrowthLoop (sending while the file grows), Finalizer (the object and its manifest) — and share one
UploadCoordinator and one PartSender. This module holds the lease and turns what happened into an
Outcome the scheduler acts on.
"""

from __future__ import annotations

import enum
import logging
from pathlib import Path
from typing import Any

from chunkd.errors import (
    CancelledError,
    Interrupted,
    KeyTakenError,
    LeaseLostError,
    PartNotReplaceable,
    PermanentError,
    Quarantined,
    SourceChangedError,
    SourceGoneError,
    StoreError,
    StoreResetError,
    TransferError,
)
from chunkd.model.planner import PartSchedule
from chunkd.model.states import StreamRecord, StreamState
from chunkd.pipeline.coordinator import UploadCoordinator
from chunkd.pipeline.discovery import Discovery
from chunkd.pipeline.disposal import after_upload
from chunkd.pipeline.engine import Engine, StreamLog
from chunkd.pipeline.growth import GrowthLoop
from chunkd.pipeline.monitor import take_snapshot
from chunkd.pipeline.resume import Resume
from chunkd.pipeline.sender import PartSender
from chunkd.store.fenced import FencedStore
from chunkd.store.lease import HeldLease

logger = logging.getLogger("chunkd.stream")

MAX_RESTARTS = 5


class Outcome(enum.Enum):
    COMPLETED = "completed"
    SKIPPED = "skipped"  # already uploaded and unchanged
    FAILED = "failed"
    QUARANTINED = "quarantined"  # not media: moved aside, nothing uploaded
    INTERRUPTED = "interrupted"  # shutdown: resumes on next start
    RETRY_LATER = "retry_later"  # transient trouble outlasted the retries
    BUSY = "busy"  # another daemon holds the file's lease; it is that daemon's to upload


class StreamJob:
    def __init__(
        self, engine: Engine, path: Path, relpath: str, *, final: bool = False, origin: dict[str, Any] | None = None
    ) -> None:
        self.engine = engine
        self.path = path
        self.relpath = relpath
        self.final = final  # the caller says the file is complete: no need to wait for idleness
        self.origin = origin  # where a downloaded file came from, for the manifest
        self.record: StreamRecord | None = None
        self.log = StreamLog(logger, {"relpath": relpath})
        self._held: HeldLease | None = None

    def run(self) -> Outcome:
        """Upload the file while holding its lease; never touch it once another daemon took over."""
        engine = self.engine
        try:
            held = engine.leases.acquire(engine.scope.lease_name(self.relpath))
        except StoreError as exc:
            engine.metrics.store_error()
            engine.store_health.failed(exc)
            return Outcome.RETRY_LATER
        engine.store_health.ok()
        if held is None:
            self.log.debug("another daemon holds this file's lease; leaving the file to it")
            return Outcome.BUSY
        self._held = held
        try:
            return self._run_leased(held)
        finally:
            if self._held is not None:  # None: taken again after a store reset by another daemon
                engine.leases.release(self._held)

    def _run_leased(self, held: HeldLease) -> Outcome:
        try:
            for _ in range(MAX_RESTARTS):
                try:
                    return self._run_owned(held)
                except StoreResetError:
                    self.log.warning(
                        "the state store lost its records (restarted empty, flushed, or failed over before "
                        "replicating them); rebuilding this upload from what the bucket holds"
                    )
                    retaken = self.engine.leases.reacquire(held)
                    self._held = retaken
                    if retaken is None:
                        return Outcome.BUSY
                    held = retaken
            return Outcome.FAILED
        except LeaseLostError as exc:
            self.log.warning("stopped: %s (its lease expired); that daemon carries on from the checkpoint", exc)
            return Outcome.BUSY
        except StoreError as exc:  # only on shutdown: the fenced store waits out outages
            self.log.info("stopped while the state store was unreachable: %s", exc)
            return Outcome.RETRY_LATER

    def _run_owned(self, held: HeldLease) -> Outcome:
        engine = self.engine
        store = FencedStore(engine.store, held, health=engine.store_health, wait=engine.stop.wait)
        discovery = Discovery(engine, store, self.path, self.relpath, self.origin)
        fresh = False
        for _ in range(MAX_RESTARTS):
            try:
                record = discovery.find_or_create(fresh=fresh)
            except SourceGoneError:
                discovery.forget_vanished()
                return Outcome.SKIPPED
            except KeyTakenError:
                return Outcome.FAILED  # recorded, with the reason, by discovery
            except StoreError as exc:
                engine.metrics.store_error()
                self.log.error("checkpoint store unavailable: %s", exc)
                return Outcome.RETRY_LATER
            if record is None:
                return Outcome.SKIPPED
            self.record = record
            self.log = StreamLog(logger, {"relpath": self.relpath, "stream_id": record.id, "key": record.key})
            upload = UploadCoordinator(engine, store, self.path, record, self.log, final=self.final)
            try:
                return self._run_stream(upload, held)
            except SourceChangedError as exc:
                upload.fail(f"restarting: {exc.reason}", abort=True)
                self.log.warning("file changed under the upload (%s); starting a fresh upload", exc.reason)
                fresh = True
            except PartNotReplaceable as exc:
                upload.fail(f"restarting: {exc}", abort=True)
                self.log.warning("the server keeps other bytes for part %s and will not replace them; "
                                 "starting a fresh upload", exc.part)
                fresh = True
        return Outcome.FAILED

    def _run_stream(self, upload: UploadCoordinator, held: HeldLease) -> Outcome:
        record = upload.record
        try:
            _upload(upload, held)
        except Interrupted:
            self.log.info("interrupted by shutdown; will resume on next start")
            return Outcome.INTERRUPTED
        except Quarantined:
            return Outcome.QUARANTINED
        except CancelledError:
            self.log.warning("cancelled by operator; stopped uploading")
            return Outcome.FAILED
        except SourceGoneError:
            upload.fail("file deleted or renamed during upload", abort=True)
            return Outcome.FAILED
        except PermissionError as exc:
            upload.fail(f"permission denied reading {exc.filename}", abort=True)
            return Outcome.FAILED
        except PartNotReplaceable:
            raise  # a fresh upload mends it (_run_owned)
        except PermanentError as exc:
            self.engine.metrics.s3_error(exc.code)
            upload.fail(str(exc), abort=False)
            return Outcome.FAILED
        except (TransferError, StoreError, OSError) as exc:
            if isinstance(exc, TransferError):
                self.engine.metrics.s3_error(exc.code)
            elif isinstance(exc, StoreError):
                self.engine.metrics.store_error()
            self.log.error("giving up for now, will retry later: %s", exc)
            upload.note_error(str(exc))
            return Outcome.RETRY_LATER
        duration = round((record.completed_at or self.engine.wall()) - record.discovered_at, 3)
        self.log.info("completed", extra={"bytes": record.size, "key": record.key, "duration": duration})
        after_upload(self.engine, record, self.path, self.log)
        return Outcome.COMPLETED


def _upload(upload: UploadCoordinator, held: HeldLease) -> None:
    """Resume from what the server holds, then send until the object is complete."""
    schedule = PartSchedule.from_dict(upload.record.schedule)
    snap = take_snapshot(upload.path)
    Resume(upload, schedule, snap).reconcile()
    if upload.record.state is StreamState.COMPLETED:
        return
    # A complete file of one PutObject goes straight to finalizing: its record is next written
    # when it is COMPLETED, instead of once per state on the way.
    one_put = upload.final and upload.record.upload_id is None and snap.size < schedule.part_size(1)
    upload.move_to(StreamState.UPLOADING, save=not one_put)
    sender = PartSender(upload, held)
    try:
        GrowthLoop(upload, sender, schedule).run(snap)
    except StoreResetError:
        sender.settle()  # let the parts in flight land before the rebuild lists what the server holds
        raise
