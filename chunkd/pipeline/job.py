"""One file's journey: find or create its stream record, resume, send parts as the file grows,
and hand it to the finalizer once it has gone idle.

A part is sent as soon as the file holds all of its bytes; only the tail waits for idleness.
Acknowledged parts are recorded in the checkpoint store before anything else happens, so a
restart never sends them again.
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, wait
from pathlib import Path
from typing import Any

from chunkd.pipeline.engine import Engine, StreamLog
from chunkd.errors import (
    LeaseLostError,
    PermanentError,
    SourceChangedError,
    SourceGoneError,
    StoreError,
    StoreResetError,
    TransferError,
    UploadGoneError,
)
from chunkd.pipeline.finalize import Finalizer, Quarantined, after_upload, completed_earlier
from chunkd.model.keys import render_key
from chunkd.store.lease import HeldLease
from chunkd.pipeline.monitor import Change, IdleTracker, Snapshot, take_snapshot
from chunkd.pipeline.partreader import FileIdentity, digest_range, open_checked
from chunkd.model.planner import Part, PartSchedule, plan_schedule
from chunkd.pipeline.recovery import restore_completed
from chunkd.pipeline.hashing import whole_md5
from chunkd.model.states import PartRecord, StreamRecord, StreamState, new_stream_id
from chunkd.store.fenced import FencedStore

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


class Interrupted(Exception):
    pass


class Cancelled(Exception):
    """An operator cancelled the stream (`chunkd cancel`); the store already says so."""


CANCEL_CHECK_SECONDS = 2.0
GROWING_POLL_SECONDS = 0.1
GROWTH_SAVE_SECONDS = 1.0  # a growing file's new size is recorded at most this often
PRESCAN_MIN_IDLE_SECONDS = 2.0


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
        self.held: HeldLease | None = None

    def run(self) -> Outcome:
        """Upload the file while holding its lease; never touch it once another daemon took over."""
        base = self.engine
        try:
            held = base.leases.acquire(self.relpath)
        except StoreError as exc:
            base.metrics.store_error()
            base.store_health.failed(exc)
            return Outcome.RETRY_LATER
        base.store_health.ok()
        if held is None:
            self.log.debug("another daemon holds this file's lease; leaving the file to it")
            return Outcome.BUSY
        try:
            for _ in range(MAX_RESTARTS):
                self.held = held
                self.engine = base.with_store(
                    FencedStore(base.store, held, health=base.store_health, wait=base.stop.wait)
                )
                try:
                    return self._run_owned()
                except StoreResetError:
                    self.log.warning(
                        "the state store lost its records (restarted empty or flushed); rebuilding this "
                        "upload from what the bucket holds"
                    )
                    base.leases.release(held, quiet=True)
                    held = base.leases.acquire(self.relpath)
                    if held is None:
                        return Outcome.BUSY
            return Outcome.FAILED
        except LeaseLostError as exc:
            self.log.warning("stopped: %s (its lease expired); that daemon carries on from the checkpoint", exc)
            return Outcome.BUSY
        except StoreError as exc:  # only on shutdown: the fenced store waits out outages
            self.log.info("stopped while the state store was unreachable: %s", exc)
            return Outcome.RETRY_LATER
        finally:
            self.engine = base
            base.leases.release(held)

    def _run_owned(self) -> Outcome:
        fresh = False
        for _ in range(MAX_RESTARTS):
            try:
                record = self._load_or_create(fresh=fresh)
            except SourceGoneError:
                self._forget_vanished()
                return Outcome.SKIPPED
            except StoreError as exc:
                self.engine.metrics.store_error()
                self.log.error("checkpoint store unavailable: %s", exc)
                return Outcome.RETRY_LATER
            if record is None:
                return Outcome.SKIPPED
            self.record = record
            self.log = StreamLog(logger, {"relpath": self.relpath, "stream_id": record.id, "key": record.key})
            try:
                return self._run_stream(record)
            except SourceChangedError as exc:
                self._fail(record, f"restarting: {exc.reason}", abort=True)
                self.log.warning("file changed under the upload (%s); starting a fresh upload", exc.reason)
                fresh = True
        return Outcome.FAILED

    def _run_stream(self, record: StreamRecord) -> Outcome:
        try:
            self._upload(record)
        except Interrupted:
            self.log.info("interrupted by shutdown; will resume on next start")
            return Outcome.INTERRUPTED
        except Quarantined:
            return Outcome.QUARANTINED
        except Cancelled:
            self.log.warning("cancelled by operator; stopped uploading")
            return Outcome.FAILED
        except SourceGoneError:
            self._fail(record, "file deleted or renamed during upload", abort=True)
            return Outcome.FAILED
        except PermissionError as exc:
            self._fail(record, f"permission denied reading {exc.filename}", abort=True)
            return Outcome.FAILED
        except PermanentError as exc:
            self.engine.metrics.s3_error(exc.code)
            self._fail(record, str(exc), abort=False)
            return Outcome.FAILED
        except (TransferError, StoreError, OSError) as exc:
            if isinstance(exc, TransferError):
                self.engine.metrics.s3_error(exc.code)
            elif isinstance(exc, StoreError):
                self.engine.metrics.store_error()
            self.log.error("giving up for now, will retry later: %s", exc)
            self._note_error(record, str(exc))
            return Outcome.RETRY_LATER
        duration = round((record.completed_at or time.time()) - record.discovered_at, 3)
        self.log.info("completed", extra={"bytes": record.size, "key": record.key, "duration": duration})
        after_upload(self.engine, record, self.path, self.log)
        return Outcome.COMPLETED

    # -- discovery -------------------------------------------------------------------------

    def _load_or_create(self, *, fresh: bool) -> StreamRecord | None:
        snap = take_snapshot(self.path)
        existing = None if fresh else self.engine.store.find_by_relpath(self.relpath)
        if existing is not None:
            same_file = (existing.device, existing.inode) == (snap.identity.device, snap.identity.inode)
            unchanged = same_file and (existing.size, existing.mtime) == (snap.size, snap.mtime)
            if existing.state is StreamState.COMPLETED and unchanged:
                after_upload(self.engine, existing, self.path, self.log)  # in case a crash cut it short
                return None
            if existing.state is StreamState.FAILED and unchanged:
                return None  # nothing new since it failed: `chunkd retry` is the way back
            if not existing.state.terminal:
                if same_file:
                    return existing
                self._fail(existing, "replaced by a new file with the same name", abort=True)
        elif not fresh and snap.mtime < self.engine.started_at and self._uploaded_before(snap):
            return None
        return self._new_record(snap)

    def _uploaded_before(self, snap: Snapshot) -> bool:
        """A file older than this run with no record: maybe the store forgot it (see recovery)."""
        key = render_key(self.engine.settings.key_template, self.relpath, hostname=self.engine.hostname)
        return restore_completed(self.engine, key, self.relpath, self.path, snap) is not None

    def _forget_vanished(self) -> None:
        existing = self.engine.store.find_by_relpath(self.relpath)
        if existing is not None and not existing.state.terminal:
            self.log = StreamLog(logger, {"relpath": self.relpath, "stream_id": existing.id})
            self._fail(existing, "file disappeared before its upload finished", abort=True)

    def _new_record(self, snap: Snapshot) -> StreamRecord:
        settings = self.engine.settings
        schedule = plan_schedule(settings.part_size, fixed=settings.fixed_parts)
        record = StreamRecord(
            id=new_stream_id(),
            relpath=self.relpath,
            source_path=str(self.path),
            bucket=settings.bucket,
            key=render_key(settings.key_template, self.relpath, hostname=self.engine.hostname),
            schedule=schedule.to_dict(),
            device=snap.identity.device,
            inode=snap.identity.inode,
            size=snap.size,
            mtime=snap.mtime,
            origin=self.origin,
        )
        self.engine.store.save_stream(record)
        self.log.info("discovered", extra={"stream_id": record.id, "key": record.key, "bytes": snap.size})
        return record

    # -- the upload loop -------------------------------------------------------------------

    def _upload(self, record: StreamRecord) -> None:
        schedule = PartSchedule.from_dict(record.schedule)
        snap = take_snapshot(self.path)
        done = self._reconcile(record, schedule, snap)
        if record.state is StreamState.COMPLETED:
            return
        if record.state is not StreamState.UPLOADING:
            record.move_to(StreamState.UPLOADING)
            self.engine.store.save_stream(record)
        tracker = IdleTracker(self.engine.settings.idle_seconds, snap)
        in_flight: dict[Future[PartRecord], Part] = {}
        finalizer = Finalizer(self.engine, record, self.path, self.log, self._send_parts_now(record, done))
        try:
            self._loop(record, schedule, snap, tracker, in_flight, done, finalizer)
        except StoreResetError:
            # Let the parts in flight land before the rebuild lists what the server holds.
            wait(list(in_flight), timeout=self.engine.settings.shutdown_timeout)
            raise
        finally:
            finalizer.drop_prescan()

    def _loop(
        self,
        record: StreamRecord,
        schedule: PartSchedule,
        snap: Snapshot,
        tracker: IdleTracker,
        in_flight: dict[Future[PartRecord], Part],
        done: dict[int, PartRecord],
        finalizer: Finalizer,
    ) -> None:
        next_cancel_check = time.monotonic() + CANCEL_CHECK_SECONDS
        next_growth_save = 0.0
        while True:
            if self.engine.stop.is_set():
                self._drain(record, in_flight, done)
                raise Interrupted
            self._check_lease(in_flight)
            if time.monotonic() >= next_cancel_check:
                next_cancel_check = time.monotonic() + CANCEL_CHECK_SECONDS
                self._check_cancelled(record, in_flight, done)
            snap = take_snapshot(self.path)
            change = tracker.observe(snap)
            self._check_change(change, snap, done)
            if change is not Change.UNCHANGED:
                finalizer.drop_prescan()
                record.size, record.mtime = snap.size, snap.mtime
                if change is not Change.GREW or time.monotonic() >= next_growth_save:
                    next_growth_save = time.monotonic() + GROWTH_SAVE_SECONDS
                    self._save_unless_cancelled(record)
            self._harvest(record, in_flight, done, block=False)
            settled = self.final or tracker.idle
            if settled and not in_flight:
                # A file complete at discovery goes straight here: it is checked (media, dedup)
                # before a single byte is sent.
                with self.engine.metrics.finalize_seconds.time():
                    finished = finalizer.finalize(schedule, done, snap)
                if finished:
                    return
                record.move_to(StreamState.UPLOADING)  # the file moved on while we finalized
                self._save_unless_cancelled(record)
                continue
            if not settled:
                self._fill(record, schedule, in_flight, done, snap)
                if self._prescan_due(tracker):
                    finalizer.prescan(schedule, snap, set(done) | {part.number for part in in_flight.values()})
            poll = self._next_look(change, tracker)
            if in_flight:
                wait(list(in_flight), timeout=poll, return_when=FIRST_COMPLETED)
            else:
                self.engine.stop.wait(poll)

    def _next_look(self, change: Change, tracker: IdleTracker) -> float:
        """A growing file is looked at more often, so a part is sent soon after it fills; a quiet
        one again the moment its idle period ends, so finalizing starts then."""
        settings = self.engine.settings
        poll = min(settings.poll_seconds, GROWING_POLL_SECONDS) if change is Change.GREW else settings.poll_seconds
        until_idle = settings.idle_seconds - tracker.quiet_for
        return max(0.01, min(poll, until_idle)) if until_idle > 0 else poll

    def _prescan_due(self, tracker: IdleTracker) -> bool:
        """Half way through the idle period: late enough that a writer that paused is rarely back,
        early enough that the read is done when the period ends."""
        idle = self.engine.settings.idle_seconds
        return idle >= PRESCAN_MIN_IDLE_SECONDS and tracker.quiet_for >= idle / 2

    def _check_lease(self, in_flight: dict[Future[PartRecord], Part]) -> None:
        """Lost: stop at once. Forgotten by a store that restarted empty: let the parts in flight
        land first, so the rebuild from the bucket finds them there."""
        if self.held is None or not self.held.lost.is_set():
            return
        if self.held.forgotten and in_flight:
            wait(list(in_flight), timeout=self.engine.settings.shutdown_timeout)
        self.held.check()

    def _may_start_parts(self) -> bool:
        """Not while the lease could not be renewed lately (another daemon may own the file by
        now) or the store is down (the part could not be recorded)."""
        held_ok = self.held is None or self.held.fresh
        return held_ok and not self.engine.store_health.down

    def _save_unless_cancelled(self, record: StreamRecord) -> None:
        """Save, unless an operator cancelled the stream meanwhile: never write over that."""
        stored = self.engine.store.get_stream(record.id)
        if stored is not None and stored.state is StreamState.FAILED and record.state is not StreamState.FAILED:
            raise Cancelled
        self.engine.store.save_stream(record)

    def _check_cancelled(
        self, record: StreamRecord, in_flight: dict[Future[PartRecord], Part], done: dict[int, PartRecord]
    ) -> None:
        stored = self.engine.store.get_stream(record.id)
        if stored is not None and stored.state is StreamState.FAILED:
            for future in in_flight:
                future.cancel()
            wait(list(in_flight), timeout=self.engine.settings.shutdown_timeout)
            if record.upload_id and stored.upload_id:  # not yet aborted by whoever cancelled
                try:
                    self.engine.uploader.abort(record.bucket, record.key, record.upload_id)
                except TransferError:
                    pass
            raise Cancelled

    def _check_change(self, change: Change, snap: Snapshot, done: dict[int, PartRecord]) -> None:
        if change is Change.REPLACED:
            raise SourceChangedError("file was replaced by a new file (different inode)")
        covered = max((p.offset + p.size for p in done.values()), default=0)
        if snap.size < covered:
            raise SourceChangedError(f"file shrank to {snap.size} bytes below the {covered} already sent")

    def _next_numbers(self, schedule: PartSchedule, done: dict[int, PartRecord], busy: set[int]) -> Iterator[int]:
        number = 1
        while True:
            if number not in busy and not _is_full(done.get(number), schedule):
                yield number
            number += 1

    def _fill(
        self,
        record: StreamRecord,
        schedule: PartSchedule,
        in_flight: dict[Future[PartRecord], Part],
        done: dict[int, PartRecord],
        snap: Snapshot,
    ) -> None:
        """Start every part the file already holds in full, up to the per-file concurrency."""
        limit = self.engine.settings.part_concurrency
        if len(in_flight) >= limit or not self._may_start_parts():
            return
        busy = {part.number for part in in_flight.values()}
        for number in self._next_numbers(schedule, done, busy):
            part = schedule.part(number)
            if part.end > snap.size or len(in_flight) >= limit:
                return
            self._ensure_upload(record)
            in_flight[self._submit(record, part)] = part

    def _ensure_upload(self, record: StreamRecord) -> None:
        if record.upload_id is not None:
            return
        record.upload_id = self.engine.uploader.create(record.bucket, record.key)
        record.first_byte_at = time.time()
        try:
            self._save_unless_cancelled(record)  # recorded at once: a crash now leaves no orphan unknown
        except Cancelled:
            self.engine.uploader.abort(record.bucket, record.key, record.upload_id)
            raise
        self.log.info("multipart upload created")

    def _submit(self, record: StreamRecord, part: Part) -> Future[PartRecord]:
        assert record.upload_id is not None
        identity = FileIdentity(record.device, record.inode)
        upload_id, engine = record.upload_id, self.engine

        def send() -> PartRecord:
            with engine.metrics.parts_in_flight.track_inprogress():
                return engine.uploader.upload_part(record.bucket, record.key, upload_id, self.path, part, identity)

        return engine.part_pool.submit(send)

    def _harvest(
        self,
        record: StreamRecord,
        in_flight: dict[Future[PartRecord], Part],
        done: dict[int, PartRecord],
        *,
        block: bool,
    ) -> None:
        """Record finished parts; on an error, let the other parts land first, then raise it."""
        if block and in_flight:
            wait(list(in_flight))
        error: BaseException | None = None
        for future in [f for f in in_flight if f.done()]:
            del in_flight[future]
            try:
                part = future.result()
            except BaseException as exc:  # noqa: BLE001 - re-raised below after the others land
                error = error or exc
                continue
            previous = done.get(part.number)
            try:
                self.engine.store.record_part(record.id, part)
            except StoreResetError:
                # The rebuild from the bucket must find every part in flight already there.
                wait(list(in_flight), timeout=self.engine.settings.shutdown_timeout)
                raise
            self.engine.metrics.part_uploaded(part.size)
            done[part.number] = part
            self.engine.progress(self.relpath, part.size - (previous.size if previous else 0))
        if error is not None:
            self._harvest(record, in_flight, done, block=True)
            raise error

    def _drain(self, record: StreamRecord, in_flight: dict[Future[PartRecord], Part], done: dict[int, PartRecord]) -> None:
        """On shutdown, let in-flight parts finish (bounded) so their checkpoints are kept."""
        deadline = self.engine.settings.shutdown_timeout
        if in_flight:
            wait(list(in_flight), timeout=deadline)
        try:
            self._harvest(record, {f: p for f, p in in_flight.items() if f.done()}, done, block=False)
        except Exception as exc:  # noqa: BLE001 - shutting down; the part will be re-sent on resume
            self.log.warning("part failed during shutdown: %s", exc)

    def _send_parts_now(self, record: StreamRecord, done: dict[int, PartRecord]) -> Callable[[list[Part]], None]:
        """For the finalizer: send these parts now, at most `part_concurrency` at a time."""
        limit = self.engine.settings.part_concurrency

        def send(parts: list[Part]) -> None:
            if parts:
                self._ensure_upload(record)
            queue = list(parts)
            in_flight: dict[Future[PartRecord], Part] = {}
            while queue or in_flight:
                if self.engine.stop.is_set():
                    self._drain(record, in_flight, done)
                    raise Interrupted
                self._check_lease(in_flight)
                while queue and len(in_flight) < limit and self._may_start_parts():
                    part = queue.pop(0)
                    in_flight[self._submit(record, part)] = part
                wait(list(in_flight), timeout=self.engine.settings.poll_seconds, return_when=FIRST_COMPLETED)
                self._harvest(record, in_flight, done, block=False)

        return send

    # -- resume ----------------------------------------------------------------------------

    def _reconcile(self, record: StreamRecord, schedule: PartSchedule, snap: Snapshot) -> dict[int, PartRecord]:
        """Bring the ledger in line with what the server holds (ListParts is the truth)."""
        store, uploader = self.engine.store, self.engine.uploader
        ledger = {part.number: part for part in store.list_parts(record.id)}
        if record.upload_id is None:
            if ledger:
                store.drop_parts(record.id)
            return self._adopt_upload(record, schedule, snap)
        try:
            remote = uploader.list_parts(record.bucket, record.key, record.upload_id)
        except UploadGoneError:
            return self._upload_gone(record, ledger)
        stale = [n for n, part in ledger.items() if n not in remote or remote[n].etag.strip('"') != part.etag.strip('"')]
        if stale:
            store.drop_parts(record.id, stale)
            for number in stale:
                del ledger[number]
        for number, remote_part in sorted(remote.items()):
            if number not in ledger:
                adopted = self._adopt(record, schedule, snap, number, remote_part.size, remote_part.etag)
                if adopted is not None:
                    store.record_part(record.id, adopted)
                    ledger[number] = adopted
        self.log.info("resumed", extra={"parts_recorded": len(ledger), "parts_on_server": len(remote)})
        return ledger

    def _adopt_upload(self, record: StreamRecord, schedule: PartSchedule, snap: Snapshot) -> dict[int, PartRecord]:
        """A new record for a file whose upload the bucket may already hold (the state store came
        back empty, or lost the record): adopt the newest upload for the key whose parts match the
        local bytes, instead of sending them again."""
        if snap.size < schedule.part(1).end:
            return {}  # no full part yet: nothing can have been sent
        uploader = self.engine.uploader
        try:
            candidates = uploader.list_uploads(record.bucket, record.key)[:3]
        except PermanentError as exc:  # a server without ListMultipartUploads: nothing to adopt
            self.log.debug("cannot list unfinished uploads: %s", exc)
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
                part = self._adopt(record, schedule, snap, number, remote_part.size, remote_part.etag)
                if part is not None:
                    adopted[number] = part
            if not adopted:
                continue
            record.upload_id = upload_id
            self._save_unless_cancelled(record)
            for part in adopted.values():
                self.engine.store.record_part(record.id, part)
            self.log.info(
                "adopted an unfinished upload found in the bucket",
                extra={"upload_id": upload_id, "parts_adopted": len(adopted), "parts_on_server": len(remote)},
            )
            return adopted
        if empty is not None:  # ours to use (we hold the file's lease) rather than leave for gc
            record.upload_id = empty
            self._save_unless_cancelled(record)
            self.log.info("reusing an empty unfinished upload found in the bucket", extra={"upload_id": empty})
        return {}

    def _adopt(
        self, record: StreamRecord, schedule: PartSchedule, snap: Snapshot, number: int, size: int, etag: str
    ) -> PartRecord | None:
        """A part the server holds but the ledger missed (killed between ack and checkpoint):
        keep it only if the local bytes hash to the server's ETag."""
        part = schedule.part(number)
        if size != part.size or part.end > snap.size:
            return None
        with open_checked(self.path, snap.identity) as handle:
            digest = digest_range(handle, part.offset, part.size, md5=True)
        if digest.md5_hex != etag.strip('"').lower():
            return None
        self.log.debug("adopted a part the server had but the checkpoint missed", extra={"part": number})
        return PartRecord(number=number, offset=part.offset, size=part.size, etag=etag, sha256=digest.sha256_hex)

    def _upload_gone(self, record: StreamRecord, ledger: dict[int, PartRecord]) -> dict[int, PartRecord]:
        store, uploader = self.engine.store, self.engine.uploader
        parts = [ledger[n] for n in sorted(ledger)]
        identity = FileIdentity(record.device, record.inode)
        if (
            record.state is StreamState.FINALIZING
            and parts
            and completed_earlier(
                uploader.head(record.bucket, record.key), parts, lambda: whole_md5(self.path, identity)
            )
        ):
            # Completed on the server before a crash; only the manifest and the record are missing.
            return ledger
        self.log.warning("multipart upload no longer exists on the server; starting a fresh upload")
        store.drop_parts(record.id)
        record.upload_id = None
        self._save_unless_cancelled(record)
        return {}

    # -- failure bookkeeping ---------------------------------------------------------------

    def _fail(self, record: StreamRecord, reason: str, *, abort: bool) -> None:
        if abort and record.upload_id:
            try:
                self.engine.uploader.abort(record.bucket, record.key, record.upload_id)
            except TransferError as exc:
                self.log.warning("could not abort multipart upload: %s", exc)
        record.move_to(StreamState.FAILED, error=reason)
        try:
            self.engine.store.save_stream(record)
        except StoreError as exc:
            self.engine.metrics.store_error()
            self.log.error("could not record failure: %s", exc)
        self.log.error("failed: %s", reason)

    def _note_error(self, record: StreamRecord, reason: str) -> None:
        record.last_error = reason
        record.updated_at = time.time()
        try:
            self.engine.store.save_stream(record)
        except StoreError:
            self.engine.metrics.store_error()


def _is_full(part: PartRecord | None, schedule: PartSchedule) -> bool:
    return part is not None and part.size == schedule.part_size(part.number)
