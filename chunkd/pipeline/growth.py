"""The growth loop: watch the file, send each part as soon as the file holds all of its bytes, and
finalize once it has gone idle.

Only the tail waits for idleness. A growing file is looked at often (GROWING_POLL_SECONDS) so a part
leaves soon after it fills; a quiet one again the moment its idle period ends, so finalizing starts
then. The store is told of growth at most every GROWTH_SAVE_SECONDS, and an operator's cancel is
looked for every CANCEL_CHECK_SECONDS (all in chunkd.pipeline.engine.Pacing).
"""

from __future__ import annotations

from chunkd.errors import CancelledError, SourceChangedError
from chunkd.model.planner import PartSchedule
from chunkd.model.states import StreamState
from chunkd.pipeline.coordinator import UploadCoordinator
from chunkd.pipeline.finalize import Finalizer
from chunkd.pipeline.monitor import Change, IdleTracker, Snapshot, take_snapshot
from chunkd.pipeline.sender import PartSender


class GrowthLoop:
    """Runs until the object is complete; raises Interrupted, CancelledError or the error that
    stopped it."""

    def __init__(
        self, upload: UploadCoordinator, sender: PartSender, schedule: PartSchedule
    ) -> None:
        self._upload = upload
        self._sender = sender
        self._schedule = schedule
        self._pacing = upload.engine.pacing
        self._finalizer = Finalizer(upload, sender, schedule)
        engine = upload.engine
        self._settings = engine.settings
        self._now = engine.monotonic

    def run(self, snap: Snapshot) -> None:
        try:
            self._loop(IdleTracker(self._settings.idle_seconds, snap, clock=self._now, wall=self._upload.engine.wall))
        finally:
            self._finalizer.prescans.drop()

    def _loop(self, tracker: IdleTracker) -> None:
        upload, sender, pacing = self._upload, self._sender, self._pacing
        next_cancel_check = self._now() + pacing.cancel_check_seconds
        next_growth_save = 0.0
        while True:
            sender.stop_if_asked()
            sender.check_lease()
            if self._now() >= next_cancel_check:
                next_cancel_check = self._now() + pacing.cancel_check_seconds
                self._stop_if_cancelled()
            # Checkpoints first: they wait out a store outage, and the idle verdict below must rest
            # on a look taken after that wait, not on one from before a file that kept growing.
            sender.harvest()
            snap = take_snapshot(upload.path)
            change = tracker.observe(snap)
            self._check_change(change, snap)
            if change is not Change.UNCHANGED:
                self._finalizer.prescans.drop()
                upload.record.size, upload.record.mtime = snap.size, snap.mtime
                if change is not Change.GREW or self._now() >= next_growth_save:
                    next_growth_save = self._now() + pacing.growth_save_seconds
                    upload.save()
            # A look that saw a change is never the one that says idle: saving the growth may have
            # waited out a store outage meanwhile, and the file may have grown again since.
            settled = upload.final or (change is Change.UNCHANGED and tracker.idle)
            if settled and not sender.in_flight:
                # A file complete at discovery goes straight here: it is checked (media, dedup)
                # before a single byte is sent.
                with upload.engine.metrics.finalize_seconds.time():
                    if self._finalizer.finalize(snap):
                        return
                upload.move_to(StreamState.UPLOADING)  # the file moved on while we finalized
                continue
            if not settled:
                sender.fill(self._schedule, snap)
                if self._prescan_due(tracker):
                    self._finalizer.prescans.start(
                        self._finalizer.scan_for(snap, set(upload.done) | sender.busy_numbers), snap
                    )
            sender.wait_any(self._next_look(change, tracker))

    def _next_look(self, change: Change, tracker: IdleTracker) -> float:
        poll = self._settings.poll_seconds
        if change is Change.GREW:
            poll = min(poll, self._pacing.growing_poll_seconds)
        until_idle = self._settings.idle_seconds - tracker.quiet_for
        return max(0.01, min(poll, until_idle)) if until_idle > 0 else poll

    def _prescan_due(self, tracker: IdleTracker) -> bool:
        """Half way through the idle period: late enough that a writer that paused is rarely back,
        early enough that the read is done when the period ends."""
        idle = self._settings.idle_seconds
        return idle >= self._pacing.prescan_min_idle_seconds and tracker.quiet_for >= idle / 2

    def _stop_if_cancelled(self) -> None:
        upload = self._upload
        stored = upload.cancelled()
        if stored is None:
            return
        self._sender.cancel_all()
        if upload.record.upload_id and stored.upload_id:  # not yet aborted by the canceller
            upload.run_cleanups()
        raise CancelledError(f"stream {upload.record.id} was cancelled")

    def _check_change(self, change: Change, snap: Snapshot) -> None:
        if change is Change.REPLACED:
            raise SourceChangedError("file was replaced by a new file (different inode)")
        covered = max((p.offset + p.size for p in self._upload.done.values()), default=0)
        if snap.size < covered:
            raise SourceChangedError(f"file shrank to {snap.size} bytes below the {covered} already sent")
