"""The checkpoint store seam: what the engine needs from Redis or SQLite, and nothing more.

One small Protocol per role, so a consumer names only the part it uses (the event sink an
EventLog, the lease keeper a LeaseStore, `chunkd status` a StreamHistory); CheckpointStore is all
of them, what a backend implements.

Every write is atomic on its own: a crash between two calls leaves the store in the state of the
last call that returned.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol

from chunkd.model.node import Scope
from chunkd.model.states import (
    PartRecord,
    StreamRecord,
    StreamState,
    UrlRecord,
    UrlState,
)
from chunkd.store.lease import Lease, Renewal


class StreamReader(Protocol):
    """Streams and their acknowledged parts, read only."""

    def get_stream(self, stream_id: str) -> StreamRecord | None: ...

    def find_by_relpath(self, relpath: str, *, scope: Scope | None = None) -> StreamRecord | None:
        """The newest stream recorded for this relative path, if any: of any node, or only one
        `scope` holds (a fleet's boxes each have their own `cam1/a.mp4`; chunkd.model.node)."""

    def find_by_key(self, bucket: str, key: str) -> list[StreamRecord]:
        """Every stream recorded for this object (any endpoint, any path), newest discovery first:
        two files must not take one key unnoticed."""

    def list_streams(
        self, states: Iterable[StreamState] | None = None, *, discovered_before: float | None = None
    ) -> list[StreamRecord]:
        """Streams (optionally only those in `states`, discovered before a time), oldest discovery
        first. `discovered_before` reads only those from the index (retention looks at old ones)."""

    def list_parts(self, stream_id: str) -> list[PartRecord]:
        """Recorded parts ordered by part number."""


class StreamHistory(StreamReader, Protocol):
    """A long history read a page at a time: `chunkd status` on a box that keeps tens of
    thousands of finished streams reads the newest few, not all of them."""

    def newest_streams(
        self, states: Iterable[StreamState] | None = None, *, limit: int, offset: int = 0
    ) -> list[StreamRecord]:
        """At most `limit` streams (optionally only those in `states`), newest discovery first
        (ties: highest id first), skipping the `offset` newest; only those records are read. A page
        may come short before the end while records change meanwhile; an empty one is the end."""

    def count_streams(self, states: Iterable[StreamState] | None = None) -> int:
        """How many streams (optionally only in `states`) there are, from the index: no record read."""


class StreamLedger(StreamReader, Protocol):
    """Durable ledger of streams and their acknowledged parts.

    Writes that take a `fence` are refused with LeaseLostError (or StoreResetError when the store
    has no trace of the lease) unless the lease's token is still the newest one issued for its name;
    the check and the write are one atomic step. On Redis they are also refused below the highest
    token the stream's record was ever written with, which survives a failover's rollback of the
    counter (see redis_leases).
    """

    def save_stream(
        self, record: StreamRecord, *, fence: Lease | None = None, guard: bool = False, index: bool = False
    ) -> None:
        """Insert or replace a stream record and point its relpath at it.

        `guard`: refuse with CancelledError to write a running record over a finished one (an
        operator's cancel, above all); the check and the write are one atomic step.
        `index`: the record's SHA-256 (and size) enter the content index in the same write, as
        `index_content` would put them: a completed upload is one write, not two."""

    def cancel_stream(self, stream_id: str, reason: str) -> StreamRecord | None:
        """Atomically move an unfinished stream to FAILED with `reason` (its upload id kept, so the
        abort can follow) and return the new record; None when the id is unknown or finished."""

    def record_part(self, stream_id: str, part: PartRecord, *, fence: Lease | None = None) -> None:
        """Record an acknowledged part; replaces an earlier record with the same number."""

    def drop_parts(
        self, stream_id: str, numbers: Iterable[int] | None = None, *, fence: Lease | None = None
    ) -> None:
        """Forget some parts (or all when `numbers` is None), e.g. after the upload vanished."""

    def delete_stream(self, stream_id: str) -> None:
        """Forget a stream: its record, parts, path index entry, state-set membership and a content
        index entry pointing at it. An unknown id is not an error."""


class ContentIndex(Protocol):
    """Which completed stream holds which bytes: content dedup."""

    def index_content(self, sha256: str, stream_id: str, *, size: int | None = None) -> None:
        """Remember that a completed stream's object holds exactly these bytes (content dedup),
        and that some indexed content has this size."""

    def may_hold_size(self, size: int) -> bool:
        """False only when no indexed content has this size: a file of that size cannot be a
        duplicate, so it need not be hashed before its first byte is sent."""

    def find_by_content(self, sha256: str) -> StreamRecord | None:
        """The stream last indexed under this SHA-256, if any."""

    def forget_content(self, sha256: str) -> None:
        """Drop an index entry whose object turned out to be gone."""


class EventLog(Protocol):
    """What happened to files, newest kept."""

    def append_event(self, event: dict[str, Any], *, maxlen: int) -> None:
        """Append an event (a JSON-able dict with a float `ts`) to the event log, which keeps about
        the newest `maxlen` events (Redis trims approximately, SQLite exactly)."""

    def list_events(self, *, since: float | None = None, limit: int = 1000) -> list[dict[str, Any]]:
        """The newest `limit` events whose `ts` >= `since` (all when None), oldest first."""


class UrlLedger(Protocol):
    """URLs from links files and how far each got."""

    def save_url(self, record: UrlRecord) -> None:
        """Insert or replace a URL record (keyed by its normalized URL)."""

    def get_url(self, url: str) -> UrlRecord | None: ...

    def list_urls(self, states: Iterable[UrlState] | None = None) -> list[UrlRecord]:
        """URL records, oldest first."""


class LeaseStore(Protocol):
    """Per-file leases and the fencing tokens that stream writes carry."""

    def acquire_lease(self, name: str, owner: str, ttl: float, *, steal_from: str | None = None) -> int | None:
        """A new fencing token if `name` is free (or held by `owner` or by `steal_from`), else None."""

    def lease_owner(self, name: str) -> str | None:
        """Who holds the lease on `name` now, if anyone."""

    def renew_lease(self, lease: Lease, ttl: float) -> Renewal:
        """Extend the lease; also re-takes an expired one that nobody else took meanwhile."""

    def release_lease(self, lease: Lease) -> None:
        """Give the lease up if it is still ours, so another daemon need not wait for it to expire."""

    def forget_lease(self, name: str) -> bool:
        """Drop the fencing counter of `name` unless its lease is held: retention does it for a
        file whose records expired, so a fleet's Redis does not keep a key per file ever seen.
        True when it was dropped (or there was none)."""


class NodeRegistry(Protocol):
    """Which daemons of a fleet are alive: each beats every few seconds (chunkd.observe.heartbeat)."""

    def beat(self, node: str, info: dict[str, Any], *, ttl: float) -> None:
        """Say `node` is alive, with `info` (version, start, queue depth, last error); kept `ttl`
        seconds unless said again. `seen_at` is added."""

    def list_nodes(self) -> list[dict[str, Any]]:
        """The heartbeats not yet expired, by node name."""


class JobLedger(StreamReader, ContentIndex, Protocol):
    """What a stream job reads and writes through: its lease-fenced view of the store
    (chunkd.store.fenced), which any whole store also satisfies."""

    def save_stream(self, record: StreamRecord, *, index: bool = False, guard: bool = ...) -> None: ...

    def record_part(self, stream_id: str, part: PartRecord) -> None: ...

    def drop_parts(self, stream_id: str, numbers: Iterable[int] | None = None) -> None: ...


class StoreConnection(Protocol):
    def ping(self) -> None:
        """Raise StoreError when the backend is unreachable."""

    def data_mark(self) -> str:
        """A token naming the data the store holds: made on the first call, the same on every later
        one until the store loses its data (Redis restarted empty, flushed, or failed over to a
        replica), then a new one."""

    def close(self) -> None: ...


class CheckpointStore(
    StreamLedger, StreamHistory, ContentIndex, EventLog, UrlLedger, LeaseStore, NodeRegistry, StoreConnection, Protocol
):
    """Every role at once: what a backend implements and what the daemon holds."""
