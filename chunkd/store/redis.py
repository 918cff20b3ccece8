"""Redis checkpoint store: lets several hosts (or a restarted container) share one ledger.

The stream writes live here: fenced and guarded transactions, batches, deletes. Every other role
is one class, which `RedisStore` composes and hands its calls to: stream reads, the history's pages
and a new lease's token floor among them (redis_reads.py), leases (redis_leases.py), the event log
(redis_events.py), the URL ledger (redis_urls.py) and the content index (redis_content.py). The key
layout is in redis_keys.py, errors in redis_errors.py, and the client a URL opens in redis_connect.py.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterable
from typing import Any, TypeAlias

import redis
from redis.client import Pipeline

from chunkd.errors import StoreFullError
from chunkd.model.node import Scope
from chunkd.model.states import (
    PartRecord,
    StreamRecord,
    StreamState,
    UrlRecord,
    UrlState,
)
from chunkd.store.guard import cancelled, check_not_finished
from chunkd.store.lease import Lease, Renewal
from chunkd.store.redis_backfill import KeyIndexBackfill, NodeIndexCheck
from chunkd.store.redis_connect import connect
from chunkd.store.redis_content import RedisContentIndex
from chunkd.store.redis_errors import RedisErrors, connection_kwargs
from chunkd.store.redis_events import RedisEventLog
from chunkd.store.redis_keys import RedisKeys
from chunkd.store.redis_leases import RedisLeases, check_fence
from chunkd.store.redis_nodes import RedisNodes
from chunkd.store.redis_reads import RedisStreamReader
from chunkd.store.redis_replies import Fields, member, text
from chunkd.store.redis_sentinel import WatchedSentinel
from chunkd.store.redis_urls import RedisUrlLedger

# Queues one write's commands on a pipeline (see `RedisStore._write`).
_Queue: TypeAlias = "Callable[[Pipeline], object]"


class RedisStore:
    """CheckpointStore on Redis. Thread-safe: redis-py hands each call its own pooled connection.

    Write methods take an optional `pipeline` (as rq's do) so a caller can make several updates one
    MULTI/EXEC; they then only queue commands, and the caller executes (see `batch`).
    """

    def __init__(self, client: redis.Redis, prefix: str = "chunkd:", *, errors: RedisErrors | None = None) -> None:
        if not connection_kwargs(client).get("decode_responses"):
            raise ValueError("RedisStore needs a client created with decode_responses=True")
        self.client = client
        self.prefix = prefix
        self.keys = RedisKeys(prefix)
        self._errors = errors or RedisErrors(client)
        self.reads = RedisStreamReader(client, self.keys, errors=self._errors)
        self.reads.unscoped = NodeIndexCheck(client, self.keys, errors=self._errors)
        self.leases = RedisLeases(client, prefix, errors=self._errors)
        self.events = RedisEventLog(client, self.keys, errors=self._errors)
        self.urls = RedisUrlLedger(client, self.keys, errors=self._errors)
        self.content = RedisContentIndex(client, self.keys, errors=self._errors)
        self.key_index = KeyIndexBackfill(client, self.keys, errors=self._errors)
        self.nodes = RedisNodes(client, self.keys, errors=self._errors)

    @classmethod
    def from_url(cls, url: str, prefix: str = "chunkd:") -> RedisStore:
        """`redis://`, `rediss://` (TLS), `unix://`, or `redis+sentinel://` (see redis_connect)."""
        client, errors = connect(url)
        return cls(client, prefix, errors=errors)

    # writes

    def batch(self) -> _Batch:
        """`with store.batch() as pipe:` queue writes with `pipeline=pipe`; one MULTI/EXEC on exit."""
        return _Batch(self)

    def _write(
        self,
        action: str,
        queue: _Queue,
        fence: Lease | None,
        *,
        guard: StreamRecord | None = None,
        stream_id: str | None = None,
    ) -> None:
        """One MULTI/EXEC. With a fence (or a guarded record), WATCHed so the check of the token (or
        of the stored record) and the write are atomic. A fenced write to stream `stream_id` leaves
        its token in the stream's hash (`fence`), and is refused below the one already there."""
        if fence is None and guard is None:
            with self._errors(action), self.client.pipeline(transaction=True) as pipe:
                queue(pipe)
                pipe.execute()
            return
        stream_id = stream_id or (guard.id if guard is not None else None)
        stream_key = self.keys.stream(stream_id) if stream_id else None
        keys = [] if fence is None else [self.leases.fence_key(fence.name), self.leases.lease_key(fence.name)]
        keys += [] if stream_key is None else [stream_key]

        def checked(pipe: Pipeline) -> _Queue:
            marked = queue
            if fence is not None:
                marked = self._check_fence(pipe, fence, stream_key, queue)
            if guard is not None:
                check_not_finished(self._stored(pipe, guard.id), guard)
            return marked

        self._transaction(action, keys, checked)

    def _check_fence(self, pipe: Pipeline, fence: Lease, stream_key: str | None, queue: _Queue) -> _Queue:
        """Check `fence` on a watching pipeline; what to queue: `queue`, and the token into the
        stream's hash when it is higher than the one there."""
        counter, holder = pipe.mget(self.leases.fence_key(fence.name), self.leases.lease_key(fence.name))
        seen = text(pipe.hget(stream_key, "fence")) if stream_key else None
        persisted = int(seen) if seen else None
        check_fence(fence, text(counter), holder=text(holder), persisted=persisted)
        if stream_key is None or persisted == fence.token:
            return queue

        def marked(queued: Pipeline) -> None:
            queue(queued)
            queued.hset(stream_key, "fence", str(fence.token))

        return marked

    def _transaction(self, action: str, keys: list[str], decide: Callable[[Pipeline], _Queue | None]) -> bool:
        """WATCH `keys`; `decide` reads them (commands run at once while watching) and returns what to
        queue, or None to write nothing. Decided again whenever a watched key changed before EXEC.
        True when something was written."""
        with self._errors(action), self.client.pipeline(transaction=True) as pipe:
            while True:
                try:
                    # redis 8.2 leaves Pipeline.watch unannotated (it returns the WATCH reply, unused here).
                    pipe.watch(*keys)  # type: ignore[no-untyped-call]
                    queue = decide(pipe)
                    if queue is None:
                        return False
                    pipe.multi()
                    queue(pipe)
                    pipe.execute()
                    return True
                except redis.WatchError:
                    continue

    def _stored(self, pipe: Pipeline, stream_id: str) -> StreamRecord | None:
        """The stream's record as stored, read on a watching pipeline."""
        data = text(pipe.hget(self.keys.stream(stream_id), "data"))
        return StreamRecord.from_dict(json.loads(data)) if data else None

    def save_stream(
        self,
        record: StreamRecord,
        *,
        pipeline: Pipeline | None = None,
        fence: Lease | None = None,
        guard: bool = False,
        index: bool = False,
    ) -> None:
        def queue(pipe: Pipeline) -> None:
            self._queue_save(pipe, record)
            if index and record.sha256:
                self.content.queue_index(pipe, record.sha256, record.id, size=record.size)

        if pipeline is not None:
            if guard:
                raise ValueError("a guarded save reads before it writes: it cannot be queued on a batch")
            queue(pipeline)
            return
        self._write(f"save stream {record.id}", queue, fence, guard=record if guard else None, stream_id=record.id)

    def cancel_stream(self, stream_id: str, reason: str) -> StreamRecord | None:
        result: StreamRecord | None = None

        def decide(pipe: Pipeline) -> _Queue | None:
            nonlocal result
            result = record = cancelled(self._stored(pipe, stream_id), reason)
            return None if record is None else lambda queued: self._queue_save(queued, record)

        written = self._transaction(f"cancel stream {stream_id}", [self.keys.stream(stream_id)], decide)
        return result if written else None

    def _queue_save(self, pipe: Pipeline, record: StreamRecord) -> None:
        score = {record.id: record.discovered_at}
        fields: Fields = {
            "data": json.dumps(record.to_dict()), "state": record.state.value, "relpath": record.relpath
        }
        pipe.hset(self.keys.stream(record.id), mapping=fields)
        pipe.zadd(self.keys.streams(), score)
        # Blind ZREM from every other state's set: no read needed, so the write stays one MULTI.
        for state in StreamState:
            if state is not record.state:
                pipe.zrem(self.keys.streams(state), record.id)
        pipe.zadd(self.keys.streams(record.state), score)
        pipe.zadd(self.keys.path(record.relpath), score)
        if record.node and not record.shared:
            pipe.zadd(self.keys.node_path(record.node, record.relpath), score)
        pipe.zadd(self.keys.object(record.bucket, record.key), score)

    def record_part(
        self, stream_id: str, part: PartRecord, *, pipeline: Pipeline | None = None, fence: Lease | None = None
    ) -> None:
        args = (self.keys.parts(stream_id), str(part.number), json.dumps(part.to_dict()))
        if pipeline is not None:
            pipeline.hset(*args)
            return
        self._write(
            f"record part {part.number} of stream {stream_id}", lambda pipe: pipe.hset(*args), fence, stream_id=stream_id
        )

    def drop_parts(
        self,
        stream_id: str,
        numbers: Iterable[int] | None = None,
        *,
        pipeline: Pipeline | None = None,
        fence: Lease | None = None,
    ) -> None:
        fields = None if numbers is None else [str(int(number)) for number in numbers]
        if fields == []:
            return  # HDEL with no fields is a syntax error
        key = self.keys.parts(stream_id)

        def queue(pipe: Pipeline) -> None:
            if fields is None:
                pipe.delete(key)
            else:
                pipe.hdel(key, *fields)

        if pipeline is not None:
            queue(pipeline)
            return
        self._write(f"drop parts of stream {stream_id}", queue, fence, stream_id=stream_id)

    # leases (see redis_leases)

    def acquire_lease(self, name: str, owner: str, ttl: float, *, steal_from: str | None = None) -> int | None:
        return self.leases.acquire_lease(name, owner, ttl, steal_from=steal_from, floor=self.reads.highest_fence(name))

    def lease_owner(self, name: str) -> str | None:
        return self.leases.lease_owner(name)

    def renew_lease(self, lease: Lease, ttl: float) -> Renewal:
        return self.leases.renew_lease(lease, ttl)

    def release_lease(self, lease: Lease) -> None:
        self.leases.release_lease(lease)

    def forget_lease(self, name: str) -> bool:
        return self.leases.forget_lease(name)

    def delete_stream(self, stream_id: str, *, pipeline: Pipeline | None = None) -> None:
        record = self.get_stream(stream_id)  # its relpath and sha256 name the index keys to clean
        with self._errors(f"delete stream {stream_id}"):
            content_key = self.keys.content(record.sha256) if record and record.sha256 else None
            owns_content = content_key is not None and self.client.get(content_key) == stream_id
            pipe = pipeline if pipeline is not None else self.client.pipeline(transaction=True)
            pipe.delete(self.keys.stream(stream_id), self.keys.parts(stream_id))
            for state in (None, *StreamState):
                pipe.zrem(self.keys.streams(state), stream_id)
            if record is not None:
                pipe.zrem(self.keys.path(record.relpath), stream_id)
                if record.node and not record.shared:
                    pipe.zrem(self.keys.node_path(record.node, record.relpath), stream_id)
                pipe.zrem(self.keys.object(record.bucket, record.key), stream_id)
            if owns_content and content_key is not None:
                pipe.delete(content_key)
            if pipeline is None:
                pipe.execute()

    # the other roles (see redis_reads, redis_events, redis_urls, redis_content)

    def get_stream(self, stream_id: str) -> StreamRecord | None:
        return self.reads.get_stream(stream_id)

    def find_by_relpath(self, relpath: str, *, scope: Scope | None = None) -> StreamRecord | None:
        return self.reads.find_by_relpath(relpath, scope=scope)

    def find_by_key(self, bucket: str, key: str) -> list[StreamRecord]:
        self.key_index.ensure()  # records from before the index are in it too
        return self.reads.find_by_key(bucket, key)

    def list_streams(
        self, states: Iterable[StreamState] | None = None, *, discovered_before: float | None = None
    ) -> list[StreamRecord]:
        return self.reads.list_streams(states, discovered_before=discovered_before)

    def newest_streams(
        self, states: Iterable[StreamState] | None = None, *, limit: int, offset: int = 0
    ) -> list[StreamRecord]:
        return self.reads.newest_streams(states, limit=limit, offset=offset)

    def count_streams(self, states: Iterable[StreamState] | None = None) -> int:
        return self.reads.count_streams(states)

    def list_parts(self, stream_id: str) -> list[PartRecord]:
        return self.reads.list_parts(stream_id)

    def append_event(self, event: dict[str, Any], *, maxlen: int, pipeline: Pipeline | None = None) -> None:
        self.events.append_event(event, maxlen=maxlen, pipeline=pipeline)

    def list_events(self, *, since: float | None = None, limit: int = 1000) -> list[dict[str, Any]]:
        return self.events.list_events(since=since, limit=limit)

    def save_url(self, record: UrlRecord) -> None:
        self.urls.save_url(record)

    def get_url(self, url: str) -> UrlRecord | None:
        return self.urls.get_url(url)

    def list_urls(self, states: Iterable[UrlState] | None = None) -> list[UrlRecord]:
        return self.urls.list_urls(states)

    def index_content(self, sha256: str, stream_id: str, *, size: int | None = None) -> None:
        self.content.index_content(sha256, stream_id, size=size)

    def may_hold_size(self, size: int) -> bool:
        return self.content.may_hold_size(size)

    def find_by_content(self, sha256: str) -> StreamRecord | None:
        stream_id = self.content.holder(sha256)
        return self.get_stream(stream_id) if stream_id else None

    def forget_content(self, sha256: str) -> None:
        self.content.forget_content(sha256)

    def beat(self, node: str, info: dict[str, Any], *, ttl: float) -> None:
        self.nodes.beat(node, info, ttl=ttl)

    def list_nodes(self) -> list[dict[str, Any]]:
        return self.nodes.list_nodes()

    def ping(self) -> None:
        """A Redis that cannot save refuses PING too (MISCONF): it answered, and reads still work;
        the writes it refuses are what tell the daemon (StoreHealth, and /readyz through it)."""
        try:
            with self._errors("ping"):
                self.client.ping()
        except StoreFullError:
            pass

    def data_mark(self) -> str:
        """Set if missing, then read, in one MULTI/EXEC: every daemon on this Redis sees one token.

        Behind Sentinel the mark also counts the failovers this client saw: the promoted replica
        may lack the last records the old primary acknowledged (a file's COMPLETED among them),
        so a failover is a loss of data too, and the daemon looks at every file again."""
        with self._errors("read the data mark"), self.client.pipeline(transaction=True) as pipe:
            pipe.set(self.keys.mark(), uuid.uuid4().hex, nx=True)
            pipe.get(self.keys.mark())
            mark = member(pipe.execute()[1])
        sentinel = getattr(self.client.connection_pool, "sentinel_manager", None)
        return f"{mark}/failover-{sentinel.failovers}" if isinstance(sentinel, WatchedSentinel) else mark

    def close(self) -> None:
        with self._errors("close"):
            self.client.close()


class _Batch:
    """Context manager behind `RedisStore.batch`: executes on success, discards on error."""

    def __init__(self, store: RedisStore) -> None:
        self._store = store
        self._pipe: Pipeline | None = None

    def __enter__(self) -> Pipeline:
        self._pipe = self._store.client.pipeline(transaction=True)
        return self._pipe

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        assert self._pipe is not None
        try:
            if exc_type is None:
                with self._store._errors("execute batch"):
                    self._pipe.execute()
        finally:
            self._pipe.reset()
