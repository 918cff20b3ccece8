"""Retention: finished stream records older than CHUNKD_RETENTION_DAYS leave the state store.

`chunkd gc` expires them on demand; with CHUNKD_EXPIRE_RECORDS the daemon does it itself, hourly,
for its own node's records, so a fleet sharing one Redis stays bounded by days of work, not by
every file it ever uploaded. A record goes with its parts and its index entries (delete_stream),
and, once no stream of its file is left, the file's fencing counter: the one key per file that
would otherwise outlive everything else.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Protocol

from chunkd.errors import StoreError
from chunkd.model.node import Scope
from chunkd.model.states import StreamRecord, StreamState
from chunkd.store import LeaseStore, StreamLedger

logger = logging.getLogger("chunkd.retention")

FINISHED = (StreamState.COMPLETED, StreamState.FAILED, StreamState.QUARANTINED)
PASS_SECONDS = 3600.0


class RetentionStore(StreamLedger, LeaseStore, Protocol):
    """What expiring needs: the records, and the leases' fencing counters."""


def expired_records(
    store: StreamLedger, *, days: float, now: float, scope: Scope | None = None, indexed: bool = False
) -> list[StreamRecord]:
    """Finished streams last updated more than `days` ago (of `scope`'s node; None: every node's),
    oldest first. `indexed`: read only streams discovered before the cutoff, as the daemon's hourly
    pass does (a stream is updated after it is discovered); `chunkd gc` reads every finished one."""
    cutoff = now - days * 86400
    found = store.list_streams(FINISHED, discovered_before=cutoff if indexed else None)
    return [r for r in found if r.updated_at < cutoff and (scope is None or scope.holds(r))]


def forget(store: RetentionStore, record: StreamRecord) -> None:
    """Delete the record; its file's fencing counter too when no other stream of the file is left."""
    store.delete_stream(record.id)
    scope = Scope.of_record(record)
    if store.find_by_relpath(record.relpath, scope=scope) is None:
        store.forget_lease(scope.lease_name(record.relpath))


class RetentionPass:
    """The daemon's hourly expiry of its own node's finished records; `tick()` from its main loop."""

    def __init__(
        self, store: RetentionStore, *, days: float, scope: Scope, clock: Callable[[], float] = time.monotonic,
        every: float = PASS_SECONDS,
    ) -> None:
        self._store, self._days, self._scope = store, days, scope
        self._clock, self._every = clock, every
        self._next = clock() + 60.0  # not in the rush of a start

    def tick(self) -> int:
        """Expire when a pass is due; how many records went. A store outage waits for the next pass."""
        if self._clock() < self._next:
            return 0
        self._next = self._clock() + self._every
        try:
            old = expired_records(self._store, days=self._days, now=time.time(), scope=self._scope, indexed=True)
            for record in old:
                forget(self._store, record)
        except StoreError as exc:
            logger.warning("expiring old records failed (next try in %.0f min): %s", self._every / 60, exc)
            return 0
        if old:
            logger.info("expired %d finished record(s) older than %g days", len(old), self._days)
        return len(old)
