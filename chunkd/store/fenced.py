"""The state store as one stream job sees it: writes fenced by the job's lease, outages waited out.

While the store is unreachable a job blocks in its next store call: no new part starts, parts
already in flight finish, and the first write after the store returns records them. A shutdown
ends the wait with the StoreError, so the job stops and resumes on the next start.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TypeVar

from chunkd.errors import StoreError
from chunkd.model.node import Scope
from chunkd.model.states import PartRecord, StreamRecord, StreamState
from chunkd.store.health import StoreHealth
from chunkd.store.lease import HeldLease
from chunkd.store.protocol import CheckpointStore

T = TypeVar("T")

_FIRST_WAIT = 0.5
_LONGEST_WAIT = 5.0


class FencedStore:
    """A JobLedger over the daemon's store: the three ledger writes carry the lease's fencing token,
    stream saves never write over a cancel, and every call waits out an outage."""

    def __init__(
        self, store: CheckpointStore, held: HeldLease, *, health: StoreHealth, wait: Callable[[float], bool]
    ) -> None:
        self._store = store
        self.held = held
        self._health = health
        self._wait = wait  # stop_event.wait: True once shutdown was requested

    def patiently(self, call: Callable[[], T], *, wrote: bool = False) -> T:
        delay = _FIRST_WAIT
        while True:
            self.held.check()
            try:
                result = call()
            except StoreError as exc:
                self._health.failed(exc)
                if self._wait(delay):
                    raise
                delay = min(delay * 2, _LONGEST_WAIT)
                continue
            self._health.ok(wrote=wrote)
            return result

    def save_stream(self, record: StreamRecord, *, index: bool = False, guard: bool = True) -> None:
        """Guarded: raises CancelledError rather than write over an operator's cancel (`guard=False`:
        the COMPLETED record of an object committed before the cancel came)."""
        self.patiently(
            lambda: self._store.save_stream(record, fence=self.held.lease, guard=guard, index=index), wrote=True
        )

    def record_part(self, stream_id: str, part: PartRecord) -> None:
        self.patiently(lambda: self._store.record_part(stream_id, part, fence=self.held.lease), wrote=True)

    def drop_parts(self, stream_id: str, numbers: Iterable[int] | None = None) -> None:
        self.patiently(lambda: self._store.drop_parts(stream_id, numbers, fence=self.held.lease), wrote=True)

    def get_stream(self, stream_id: str) -> StreamRecord | None:
        return self.patiently(lambda: self._store.get_stream(stream_id))

    def find_by_relpath(self, relpath: str, *, scope: Scope | None = None) -> StreamRecord | None:
        return self.patiently(lambda: self._store.find_by_relpath(relpath, scope=scope))

    def find_by_key(self, bucket: str, key: str) -> list[StreamRecord]:
        return self.patiently(lambda: self._store.find_by_key(bucket, key))

    def list_streams(
        self, states: Iterable[StreamState] | None = None, *, discovered_before: float | None = None
    ) -> list[StreamRecord]:
        return self.patiently(lambda: self._store.list_streams(states, discovered_before=discovered_before))

    def list_parts(self, stream_id: str) -> list[PartRecord]:
        return self.patiently(lambda: self._store.list_parts(stream_id))

    def index_content(self, sha256: str, stream_id: str, *, size: int | None = None) -> None:
        self.patiently(lambda: self._store.index_content(sha256, stream_id, size=size), wrote=True)

    def may_hold_size(self, size: int) -> bool:
        return self.patiently(lambda: self._store.may_hold_size(size))

    def find_by_content(self, sha256: str) -> StreamRecord | None:
        return self.patiently(lambda: self._store.find_by_content(sha256))

    def forget_content(self, sha256: str) -> None:
        self.patiently(lambda: self._store.forget_content(sha256), wrote=True)
