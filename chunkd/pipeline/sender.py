"""Sending parts: the one place parts are started, awaited and checkpointed.

The growth loop starts every part a growing file already holds in full; finalize sends what is
left. Both go through one PartSender, so concurrency, the lease check and the checkpoint of every
acknowledged part are the same whoever asked.
"""

from __future__ import annotations

import time
from concurrent.futures import FIRST_COMPLETED, Future, wait

from chunkd.errors import Interrupted, StoreResetError
from chunkd.model.planner import Part, PartSchedule
from chunkd.model.states import PartRecord
from chunkd.pipeline.coordinator import UploadCoordinator
from chunkd.pipeline.monitor import Snapshot
from chunkd.store.lease import HeldLease


class PartSender:
    """The parts of one upload in flight, at most `part_concurrency` at a time."""

    def __init__(self, upload: UploadCoordinator, held: HeldLease | None) -> None:
        self._upload = upload
        self._engine = upload.engine
        self._held = held
        self.in_flight: dict[Future[PartRecord], Part] = {}
        self._busy_since: float | None = None  # monotonic time the first of the parts in flight started

    @property
    def busy_numbers(self) -> set[int]:
        return {part.number for part in self.in_flight.values()}

    def may_start_parts(self) -> bool:
        """Not while the lease could not be renewed lately (another daemon may own the file by
        now) or the store is down (the part could not be recorded)."""
        held_ok = self._held is None or self._held.fresh
        return held_ok and not self._engine.store_health.down

    def check_lease(self) -> None:
        """Lost: stop at once. Forgotten by a store that restarted empty: let the parts in flight
        land first, so the rebuild from the bucket finds them there."""
        held = self._held
        if held is None or not held.lost.is_set():
            return
        if held.forgotten:
            self.settle()
        held.check()

    def settle(self) -> None:
        """Wait (bounded) for the parts in flight, e.g. before the bucket is listed."""
        if self.in_flight:
            wait(list(self.in_flight), timeout=self._engine.settings.shutdown_timeout)

    def fill(self, schedule: PartSchedule, snap: Snapshot) -> None:
        """Start every part the file already holds in full, up to the per-file concurrency."""
        limit = self._engine.settings.part_concurrency
        if len(self.in_flight) >= limit or not self.may_start_parts():
            return
        busy = self.busy_numbers
        number = 0
        while len(self.in_flight) < limit:
            number += 1
            if number in busy or _is_full(self._upload.done.get(number), schedule):
                continue
            part = schedule.part(number)
            if part.end > snap.size:
                return
            self._start(part)

    def send_now(self, parts: list[Part]) -> None:
        """Send these parts and wait for them (finalize): the tail and anything rewritten."""
        queue = list(parts)
        limit = self._engine.settings.part_concurrency
        while queue or self.in_flight:
            self.stop_if_asked()
            self.check_lease()
            while queue and len(self.in_flight) < limit and self.may_start_parts():
                self._start(queue.pop(0))
            self.wait_any(self._engine.settings.poll_seconds)
            self.harvest()

    def wait_any(self, timeout: float) -> None:
        """Until a part finishes, `timeout` passes or shutdown is asked for."""
        if self.in_flight:
            wait(list(self.in_flight), timeout=timeout, return_when=FIRST_COMPLETED)
        else:
            self._engine.stop.wait(timeout)

    def stop_if_asked(self) -> None:
        """On shutdown, let the parts in flight finish (bounded) so their checkpoints are kept."""
        if not self._engine.stop.is_set():
            return
        self.settle()
        error = self._collect_done()
        if error is not None:  # shutting down: the part is sent again on resume
            self._upload.log.warning("part failed during shutdown: %s", error)
        raise Interrupted

    def cancel_all(self) -> None:
        for future in self.in_flight:
            future.cancel()
        self.settle()

    def harvest(self, *, block: bool = False) -> None:
        """Checkpoint finished parts; on an error, let the other parts land first, then raise it."""
        if block:
            wait(list(self.in_flight))
        error = self._collect_done()
        if error is not None:
            wait(list(self.in_flight))
            self._collect_done()
            raise error

    def _collect_done(self) -> BaseException | None:
        """Checkpoint every finished part; the first part's error, if any, for the caller to raise."""
        error: BaseException | None = None
        for future in [f for f in self.in_flight if f.done()]:
            del self.in_flight[future]
            self._count_busy()
            try:
                part = future.result()
            except BaseException as exc:  # noqa: BLE001 - the caller raises it after the others land
                error = error or exc
                continue
            try:
                self._upload.record_part(part)
            except StoreResetError:
                self.settle()  # the rebuild from the bucket must find every part in flight there
                raise
        return error

    def _count_busy(self) -> None:
        """Add the time since the first part in flight started, once none is left, to the stream's
        send_seconds: time with several parts in flight counts once."""
        if self.in_flight or self._busy_since is None:
            return
        self._upload.record.send_seconds += time.monotonic() - self._busy_since
        self._busy_since = None

    def _start(self, part: Part) -> None:
        upload_id = self._upload.ensure_upload()
        if not self.in_flight:
            self._busy_since = time.monotonic()
        record, engine, path = self._upload.record, self._engine, self._upload.path
        identity = self._upload.identity

        def send() -> PartRecord:
            with engine.metrics.parts_in_flight.track_inprogress():
                return engine.uploader.upload_part(record.bucket, record.key, upload_id, path, part, identity)

        self.in_flight[engine.part_pool.submit(send)] = part


def _is_full(part: PartRecord | None, schedule: PartSchedule) -> bool:
    return part is not None and part.size == schedule.part_size(part.number)
