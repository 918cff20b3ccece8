"""Finding a file's stream record, or starting one.

A file is the same file while its inode is; its record says whether it was uploaded, failed, or is
under way. A completed or failed file unchanged since is left alone; a replaced one fails its old
stream and starts a new one. A cancelled file (`chunkd cancel`) is left alone even as it grows, until
it is replaced (another inode), shrinks (rewritten from the start), or `chunkd retry` brings it back.
A file older than this run (or than the store's loss of its data) with no record may be one the store
forgot: its manifest in the bucket says so (see chunkd.pipeline.recovery).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from chunkd.errors import KeyTakenError
from chunkd.model.keys import render_key
from chunkd.model.planner import plan_schedule
from chunkd.model.states import StreamRecord, StreamState, new_stream_id
from chunkd.pipeline.coordinator import UploadCoordinator, record_failure
from chunkd.pipeline.disposal import after_upload
from chunkd.pipeline.engine import Engine, StreamLog
from chunkd.pipeline.keyclaim import find_rival, taken_message
from chunkd.pipeline.monitor import Snapshot, take_snapshot
from chunkd.pipeline.recovery import restore_completed
from chunkd.store import JobLedger

logger = logging.getLogger("chunkd.stream")


@dataclass
class Discovery:
    engine: Engine
    store: JobLedger
    path: Path
    relpath: str
    origin: dict[str, Any] | None = None  # where a downloaded file came from, for the manifest

    def find_or_create(self, *, fresh: bool) -> StreamRecord | None:
        """The record to work on; None when there is nothing to do. Raises SourceGoneError, and
        KeyTakenError when another file has the key (see chunkd.pipeline.keyclaim)."""
        snap = take_snapshot(self.path)
        existing = None if fresh else self.store.find_by_relpath(self.relpath, scope=self.engine.scope)
        if existing is not None and not self._goes_here(existing):
            self._moved_destination(existing)
            return self._new_record(snap)
        if existing is not None:
            same_file = (existing.device, existing.inode) == (snap.identity.device, snap.identity.inode)
            unchanged = same_file and (existing.size, existing.mtime) == (snap.size, snap.mtime)
            if existing.state is StreamState.COMPLETED and unchanged and self._still_there(existing, snap):
                after_upload(self.engine, existing, self.path, self._log())  # in case a crash cut it short
                return None
            if existing.state is StreamState.FAILED and unchanged:
                return None  # nothing new since it failed: `chunkd retry` is the way back
            if existing.cancelled_at is not None and same_file and self._still_cancelled(existing, snap):
                return None
            if existing.state is StreamState.FAILED and same_file and self._still_taken(existing, snap):
                return None
            if not existing.state.terminal:
                if same_file:
                    self._claim_key(existing)
                    if existing.node is None:  # from before nodes: it is this node's from now on
                        existing.node, existing.shared = self.engine.node, self.engine.settings.shared_input
                    return existing
                self._fail(existing, "replaced by a new file with the same name")
        elif not fresh and self.engine.may_be_forgotten(snap.mtime) and self._uploaded_before(snap):
            return None
        return self._new_record(snap)

    def _destination(self) -> tuple[str, str, str]:
        engine = self.engine
        key = render_key(engine.settings.key_template, self.relpath, hostname=engine.hostname, node=engine.node)
        return engine.endpoint, engine.settings.bucket, key

    def _goes_here(self, record: StreamRecord) -> bool:
        """A record is done (or under way) only for the destination it went to: endpoint, bucket, key.
        A record from before endpoints were recorded is taken to be for this endpoint."""
        endpoint, bucket, key = self._destination()
        return (record.endpoint or endpoint, record.bucket, record.key) == (endpoint, bucket, key)

    def _moved_destination(self, record: StreamRecord) -> None:
        """The settings point elsewhere now: the file goes there too. An unfinished upload to the old
        place is given up (aborted where this endpoint can reach it; else `chunkd gc` there)."""
        endpoint, bucket, key = self._destination()
        self._log().info(
            "destination changed from s3://%s/%s (%s) to s3://%s/%s (%s): uploading there",
            record.bucket, record.key, record.endpoint or endpoint, bucket, key, endpoint,
        )
        if not record.state.terminal:
            self._fail(record, "destination changed", abort=(record.endpoint or endpoint) == endpoint)

    def _still_there(self, record: StreamRecord, snap: Snapshot) -> bool:
        """Says "uploaded" only for an object seen at its destination: `chunkd upload` looks for a completed
        file's object (HeadObject) before it skips it; the daemon does when the file was handled since
        it was uploaded (its ctime is newer: moved out and dropped in again, renamed, touched), and
        otherwise trusts its records — a bucket's expiry rule must not make it upload again hourly."""
        dropped_again = snap.ctime_ns / 1e9 > (record.completed_at or record.updated_at)
        if not (self.engine.confirm_skips or dropped_again):
            return True
        info = self.engine.uploader.head(record.bucket, record.key)
        if info is not None and info.size == record.size:
            return True
        self._log().warning("s3://%s/%s is no longer there: uploading it again", record.bucket, record.key)
        return False

    def forget_vanished(self) -> None:
        """The file disappeared: an unfinished stream of it fails (and its upload is aborted)."""
        existing = self.store.find_by_relpath(self.relpath, scope=self.engine.scope)
        if existing is not None and not existing.state.terminal:
            self._fail(existing, "file disappeared before its upload finished")

    def _fail(self, record: StreamRecord, reason: str, *, abort: bool = True) -> None:
        """Fail an old stream of this file; its multipart upload is aborted when `abort` (this
        endpoint can reach it)."""
        log = StreamLog(logger, {"relpath": self.relpath, "stream_id": record.id})
        if record.upload_id is None or not abort:
            record_failure(self.engine, self.store, record, reason, log)
            return
        UploadCoordinator(self.engine, self.store, self.path, record, log).fail(reason, abort=True)

    def _uploaded_before(self, snap: Snapshot) -> bool:
        """A file older than this run (or the store's loss) with no record: maybe the store forgot it."""
        _, _, key = self._destination()
        return restore_completed(self.engine, self.store, key, self.relpath, self.path, snap) is not None

    def _new_record(self, snap: Snapshot) -> StreamRecord:
        record = new_record(self.engine, self.path, self.relpath, snap, origin=self.origin)
        self.store.save_stream(record)
        self._log().info("discovered", extra={"stream_id": record.id, "key": record.key, "bytes": snap.size})
        self._claim_key(record)
        return record

    def _claim_key(self, record: StreamRecord) -> None:
        """Raises KeyTakenError (after failing the stream) when another file has its key. Checked for
        a new stream, and again each time one resumes: `chunkd retry` may have put back a stream
        whose key another file took, or it began with overwriting on."""
        rival = None if self.engine.settings.overwrite else find_rival(self.store, record, endpoint=self.engine.endpoint)
        if rival is not None:
            reason = taken_message(record, rival)
            self._fail(record, reason)
            raise KeyTakenError(reason)

    def _still_cancelled(self, record: StreamRecord, snap: Snapshot) -> bool:
        """An operator's cancel holds for the file, not just its upload: a recording cancelled while
        it grows stays cancelled as it goes on growing, and its record follows its size. Only a file
        shorter than the record last saw (truncated, rewritten from the start) is new content; a
        file replaced under its name (another inode) never gets here."""
        if snap.size < record.size:
            return False
        if (record.size, record.mtime) != (snap.size, snap.mtime):
            record.size, record.mtime, record.updated_at = snap.size, snap.mtime, time.time()
            self.store.save_stream(record)
        return True

    def _still_taken(self, record: StreamRecord, snap: Snapshot) -> bool:
        """A file that lost its key keeps its one FAILED record while it changes: a growing file would
        otherwise start, and fail, a new stream on every write. The record follows the file's size."""
        if self.engine.settings.overwrite:
            return False
        rival = find_rival(self.store, record, endpoint=self.engine.endpoint)
        if rival is None:
            return False
        record.size, record.mtime = snap.size, snap.mtime
        record.last_error, record.updated_at = taken_message(record, rival), time.time()
        self.store.save_stream(record)
        return True

    def _log(self) -> StreamLog:
        return StreamLog(logger, {"relpath": self.relpath})


def new_record(
    engine: Engine, path: Path, relpath: str, snap: Snapshot | None, *, origin: dict[str, Any] | None = None
) -> StreamRecord:
    """A stream for this file to the destination the settings name now (not saved). `snap`: the
    file as last seen, None when it could not be read."""
    settings = engine.settings
    record = StreamRecord(
        id=new_stream_id(),
        relpath=relpath,
        source_path=str(path),
        bucket=settings.bucket,
        key=render_key(settings.key_template, relpath, hostname=engine.hostname, node=engine.node),
        schedule=plan_schedule(settings.part_size, fixed=settings.fixed_parts).to_dict(),
        origin=origin,
        endpoint=engine.endpoint,
        node=engine.node,
        shared=settings.shared_input,
    )
    if snap is not None:
        record.device, record.inode = snap.identity.device, snap.identity.inode
        record.size, record.mtime = snap.size, snap.mtime
    return record
