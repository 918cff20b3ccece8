"""Redis checkpoint store: lets several hosts (or a restarted container) share one ledger.

Keys, with the default prefix:

    chunkd:stream:<id>           hash: data (StreamRecord JSON), state, relpath
    chunkd:stream:<id>:parts     hash: part number -> PartRecord JSON
    chunkd:streams               sorted set: every stream id, scored by discovered_at
    chunkd:streams:<STATE>       sorted set: ids currently in STATE, scored by discovered_at
    chunkd:path:<relpath>        sorted set: ids of streams for that path, scored by discovered_at
    chunkd:sha256:<hex>          string: id of the completed stream whose object has that content
    chunkd:sizes                 set: sizes of indexed content (a file of another size is no duplicate)
    chunkd:url:<sha256 of url>   hash: data (UrlRecord JSON), state
    chunkd:urls                  sorted set: url keys scored by created_at
    chunkd:events                stream: field `data` = event JSON, trimmed to about events_maxlen
    chunkd:lease:<relpath>       string "<owner>|<token>", expires after lease_seconds (redis_leases.py)
    chunkd:fence:<relpath>       integer: the newest fencing token issued for that path (never expires)
"""

from __future__ import annotations

import hashlib
import heapq
import json
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any, TypeAlias

import redis
from redis.client import Pipeline

from chunkd.errors import StoreError
from chunkd.model.states import (
    PartRecord,
    StreamRecord,
    StreamState,
    UrlRecord,
    UrlState,
)
from chunkd.store.guard import cancelled, check_not_finished
from chunkd.store.lease import Lease, Renewal
from chunkd.store.redis_leases import RedisLeases, check_fence

# Queues one write's commands on a pipeline (see `RedisStore._write`).
_Queue: TypeAlias = "Callable[[Pipeline[str]], object]"

# Events are filtered on their own `ts`, but paged by stream id (the Redis server's clock): look this
# far below `since` in id time so an event written by a host whose clock runs ahead is not missed.
_EVENT_CLOCK_SLACK_SECONDS = 300.0
_EVENT_PAGE = 500

class RedisStore:
    """CheckpointStore on Redis. Thread-safe: redis-py hands each call its own pooled connection.

    Write methods take an optional `pipeline` (as rq's do) so a caller can make several updates one
    MULTI/EXEC; they then only queue commands, and the caller executes (see `batch`).
    """

    def __init__(self, client: redis.Redis[str], prefix: str = "chunkd:") -> None:
        if not _connection_kwargs(client).get("decode_responses"):
            raise ValueError("RedisStore needs a client created with decode_responses=True")
        self.client = client
        self.prefix = prefix
        self.leases = RedisLeases(client, prefix, errors=self._errors)

    @classmethod
    def from_url(cls, url: str, prefix: str = "chunkd:") -> RedisStore:
        try:
            client = redis.Redis.from_url(
                url,
                decode_responses=True,
                socket_connect_timeout=5,
                # Without a read timeout a half-dead server would hang a worker forever.
                socket_timeout=30,
                health_check_interval=30,
            )
        except ValueError as exc:  # malformed URL; the message may quote it, password and all
            raise StoreError(f"invalid redis URL {_redact(url)}") from exc
        return cls(client, prefix)

    # keys

    def _stream_key(self, stream_id: str) -> str:
        return f"{self.prefix}stream:{stream_id}"

    def _parts_key(self, stream_id: str) -> str:
        return f"{self.prefix}stream:{stream_id}:parts"

    def _path_key(self, relpath: str) -> str:
        return f"{self.prefix}path:{relpath}"

    def _url_key(self, url: str) -> str:
        return f"{self.prefix}url:{hashlib.sha256(url.encode()).hexdigest()}"

    def _content_key(self, sha256: str) -> str:
        return f"{self.prefix}sha256:{sha256}"

    def _streams_key(self, state: StreamState | None = None) -> str:
        return f"{self.prefix}streams" + (f":{state.value}" if state else "")

    def _events_key(self) -> str:
        return f"{self.prefix}events"

    # errors

    @contextmanager
    def _errors(self, action: str) -> Iterator[None]:
        try:
            yield
        except redis.RedisError as exc:
            raise StoreError(f"redis {self._where()}: {action} failed: {self._scrub(str(exc))}") from exc

    def _where(self) -> str:
        kwargs = _connection_kwargs(self.client)
        if kwargs.get("path"):
            return f"unix://{kwargs['path']}"
        return f"{kwargs.get('host', '?')}:{kwargs.get('port', '?')}/{kwargs.get('db', 0)}"

    def _scrub(self, message: str) -> str:
        password = _connection_kwargs(self.client).get("password")
        return message.replace(password, "***") if password else message

    # writes

    def batch(self) -> _Batch:
        """`with store.batch() as pipe:` queue writes with `pipeline=pipe`; one MULTI/EXEC on exit."""
        return _Batch(self)

    def _write(self, action: str, queue: _Queue, fence: Lease | None, *, guard: StreamRecord | None = None) -> None:
        """One MULTI/EXEC. With a fence (or a guarded record), WATCHed so the check of the token (or
        of the stored record) and the write are atomic."""
        if fence is None and guard is None:
            with self._errors(action), self.client.pipeline(transaction=True) as pipe:
                queue(pipe)
                pipe.execute()
            return
        keys = [] if fence is None else [self.leases.fence_key(fence.name)]
        keys += [] if guard is None else [self._stream_key(guard.id)]

        def checked(pipe: Pipeline[str]) -> _Queue:
            if fence is not None:
                check_fence(fence, _reply(pipe.get(self.leases.fence_key(fence.name))))
            if guard is not None:
                check_not_finished(self._stored(pipe, guard.id), guard)
            return queue

        self._transaction(action, keys, checked)

    def _transaction(self, action: str, keys: list[str], decide: Callable[[Pipeline[str]], _Queue | None]) -> bool:
        """WATCH `keys`; `decide` reads them (commands run at once while watching) and returns what to
        queue, or None to write nothing. Decided again whenever a watched key changed before EXEC.
        True when something was written."""
        with self._errors(action), self.client.pipeline(transaction=True) as pipe:
            while True:
                try:
                    pipe.watch(*keys)
                    queue = decide(pipe)
                    if queue is None:
                        return False
                    pipe.multi()
                    queue(pipe)
                    pipe.execute()
                    return True
                except redis.WatchError:
                    continue

    def _stored(self, pipe: Pipeline[str], stream_id: str) -> StreamRecord | None:
        """The stream's record as stored, read on a watching pipeline."""
        data = _reply(pipe.hget(self._stream_key(stream_id), "data"))
        return StreamRecord.from_dict(json.loads(data)) if data else None

    def save_stream(
        self,
        record: StreamRecord,
        *,
        pipeline: Pipeline[str] | None = None,
        fence: Lease | None = None,
        guard: bool = False,
    ) -> None:
        if pipeline is not None:
            if guard:
                raise ValueError("a guarded save reads before it writes: it cannot be queued on a batch")
            self._queue_save(pipeline, record)
            return
        action = f"save stream {record.id}"
        self._write(action, lambda pipe: self._queue_save(pipe, record), fence, guard=record if guard else None)

    def cancel_stream(self, stream_id: str, reason: str) -> StreamRecord | None:
        result: StreamRecord | None = None

        def decide(pipe: Pipeline[str]) -> _Queue | None:
            nonlocal result
            result = record = cancelled(self._stored(pipe, stream_id), reason)
            return None if record is None else lambda queued: self._queue_save(queued, record)

        written = self._transaction(f"cancel stream {stream_id}", [self._stream_key(stream_id)], decide)
        return result if written else None

    def _queue_save(self, pipe: Pipeline[str], record: StreamRecord) -> None:
        score: dict[str | bytes, float] = {record.id: record.discovered_at}
        fields: dict[str | bytes, str] = {
            "data": json.dumps(record.to_dict()), "state": record.state.value, "relpath": record.relpath
        }
        pipe.hset(self._stream_key(record.id), mapping=fields)
        pipe.zadd(self._streams_key(), score)
        # Blind ZREM from every other state's set: no read needed, so the write stays one MULTI.
        for state in StreamState:
            if state is not record.state:
                pipe.zrem(self._streams_key(state), record.id)
        pipe.zadd(self._streams_key(record.state), score)
        pipe.zadd(self._path_key(record.relpath), score)

    def record_part(
        self, stream_id: str, part: PartRecord, *, pipeline: Pipeline[str] | None = None, fence: Lease | None = None
    ) -> None:
        args = (self._parts_key(stream_id), str(part.number), json.dumps(part.to_dict()))
        if pipeline is not None:
            pipeline.hset(*args)
            return
        self._write(f"record part {part.number} of stream {stream_id}", lambda pipe: pipe.hset(*args), fence)

    def drop_parts(
        self,
        stream_id: str,
        numbers: Iterable[int] | None = None,
        *,
        pipeline: Pipeline[str] | None = None,
        fence: Lease | None = None,
    ) -> None:
        fields = None if numbers is None else [str(int(number)) for number in numbers]
        if fields == []:
            return  # HDEL with no fields is a syntax error
        key = self._parts_key(stream_id)

        def queue(pipe: Pipeline[str]) -> None:
            if fields is None:
                pipe.delete(key)
            else:
                pipe.hdel(key, *fields)

        if pipeline is not None:
            queue(pipeline)
            return
        self._write(f"drop parts of stream {stream_id}", queue, fence)

    # leases (see redis_leases)

    def acquire_lease(self, name: str, owner: str, ttl: float, *, steal_from: str | None = None) -> int | None:
        return self.leases.acquire_lease(name, owner, ttl, steal_from=steal_from)

    def lease_owner(self, name: str) -> str | None:
        return self.leases.lease_owner(name)

    def renew_lease(self, lease: Lease, ttl: float) -> Renewal:
        return self.leases.renew_lease(lease, ttl)

    def release_lease(self, lease: Lease) -> None:
        self.leases.release_lease(lease)

    def delete_stream(self, stream_id: str, *, pipeline: Pipeline[str] | None = None) -> None:
        record = self.get_stream(stream_id)  # its relpath and sha256 name the index keys to clean
        with self._errors(f"delete stream {stream_id}"):
            content_key = self._content_key(record.sha256) if record and record.sha256 else None
            owns_content = content_key is not None and self.client.get(content_key) == stream_id
            pipe = pipeline if pipeline is not None else self.client.pipeline(transaction=True)
            pipe.delete(self._stream_key(stream_id), self._parts_key(stream_id))
            for state in (None, *StreamState):
                pipe.zrem(self._streams_key(state), stream_id)
            if record is not None:
                pipe.zrem(self._path_key(record.relpath), stream_id)
            if owns_content and content_key is not None:
                pipe.delete(content_key)
            if pipeline is None:
                pipe.execute()

    def append_event(self, event: dict[str, Any], *, maxlen: int, pipeline: Pipeline[str] | None = None) -> None:
        fields = {"data": json.dumps(event)}
        target = pipeline if pipeline is not None else self.client
        with self._errors("append event"):
            target.xadd(self._events_key(), fields, maxlen=max(1, maxlen), approximate=True)

    # reads

    def list_events(self, *, since: float | None = None, limit: int = 1000) -> list[dict[str, Any]]:
        low = "-" if since is None else str(max(0, int((since - _EVENT_CLOCK_SLACK_SECONDS) * 1000)))
        found: list[dict[str, Any]] = []
        high = "+"
        with self._errors("list events"):
            while len(found) < limit:
                page = self.client.xrevrange(self._events_key(), max=high, min=low, count=_EVENT_PAGE)
                for _, fields in page:
                    event = json.loads(fields["data"])
                    if since is None or float(event.get("ts", 0)) >= since:
                        found.append(event)
                if len(page) < _EVENT_PAGE:
                    break
                high = f"({page[-1][0]}"
        return list(reversed(found[:limit]))

    def get_stream(self, stream_id: str) -> StreamRecord | None:
        with self._errors(f"get stream {stream_id}"):
            data = self.client.hget(self._stream_key(stream_id), "data")
        return StreamRecord.from_dict(json.loads(data)) if data else None

    def find_by_relpath(self, relpath: str) -> StreamRecord | None:
        # Newest by discovery, not by last save: re-saving an old stream (a retry of a failed
        # upload) must not take the path back from the file that replaced it.
        with self._errors(f"find stream for {relpath!r}"):
            ids = self.client.zrevrange(self._path_key(relpath), 0, -1)
        for record in self._load(ids):
            if record.relpath == relpath:  # skips a stream whose record was later moved to another path
                return record
        return None

    def list_streams(self, states: Iterable[StreamState] | None = None) -> list[StreamRecord]:
        wanted = None if states is None else {StreamState(state) for state in states}
        keys = [self._streams_key()] if wanted is None else [self._streams_key(state) for state in wanted]
        with self._errors("list streams"):
            pipe = self.client.pipeline(transaction=False)
            for key in keys:
                pipe.zrange(key, 0, -1, withscores=True)
            ranges = pipe.execute()
        # Same order as SQLite's "ORDER BY discovered_at, id", and what ZRANGE does within one set.
        merged = heapq.merge(*[[(score, sid) for sid, score in members] for members in ranges])
        records = self._load([sid for _, sid in merged])
        # A stream may change state between the two round trips; the record itself is the truth.
        return [r for r in records if wanted is None or r.state in wanted]

    def _load(self, ids: list[str]) -> list[StreamRecord]:
        if not ids:
            return []
        with self._errors("load streams"):
            pipe = self.client.pipeline(transaction=False)
            for stream_id in ids:
                pipe.hget(self._stream_key(stream_id), "data")
            found = pipe.execute()
        return [StreamRecord.from_dict(json.loads(data)) for data in found if data]

    def list_parts(self, stream_id: str) -> list[PartRecord]:
        with self._errors(f"list parts of stream {stream_id}"):
            found = self.client.hgetall(self._parts_key(stream_id))
        return sorted((PartRecord.from_dict(json.loads(data)) for data in found.values()), key=lambda p: p.number)

    def index_content(self, sha256: str, stream_id: str, *, size: int | None = None) -> None:
        with self._errors(f"index content of stream {stream_id}"):
            pipe = self.client.pipeline(transaction=True)
            pipe.set(self._content_key(sha256), stream_id)
            if size is not None:
                pipe.sadd(f"{self.prefix}sizes", size)
            pipe.execute()

    def may_hold_size(self, size: int) -> bool:
        with self._errors("look up content size"):
            if self.client.sismember(f"{self.prefix}sizes", size):
                return True
            # Content indexed before sizes were kept: cannot rule it out.
            return not self.client.exists(f"{self.prefix}sizes") and bool(
                next(iter(self.client.scan_iter(f"{self.prefix}sha256:*", count=100)), None)
            )

    def find_by_content(self, sha256: str) -> StreamRecord | None:
        with self._errors("find stream by content"):
            stream_id = self.client.get(self._content_key(sha256))
        return self.get_stream(stream_id) if stream_id else None

    def forget_content(self, sha256: str) -> None:
        with self._errors("forget content"):
            self.client.delete(self._content_key(sha256))

    def save_url(self, record: UrlRecord) -> None:
        key = self._url_key(record.url)
        with self._errors("save url"):
            pipe = self.client.pipeline(transaction=True)
            fields: dict[str | bytes, str] = {"data": json.dumps(record.to_dict()), "state": record.state.value}
            score: dict[str | bytes, float] = {key: record.created_at}
            pipe.hset(key, mapping=fields)
            pipe.zadd(f"{self.prefix}urls", score)
            pipe.execute()

    def get_url(self, url: str) -> UrlRecord | None:
        with self._errors("get url"):
            data = self.client.hget(self._url_key(url), "data")
        return UrlRecord.from_dict(json.loads(data)) if data else None

    def list_urls(self, states: Iterable[UrlState] | None = None) -> list[UrlRecord]:
        wanted = None if states is None else {UrlState(state) for state in states}
        with self._errors("list urls"):
            keys = self.client.zrange(f"{self.prefix}urls", 0, -1)
            pipe = self.client.pipeline(transaction=False)
            for key in keys:
                pipe.hget(key, "data")
            found = pipe.execute() if keys else []
        records = [UrlRecord.from_dict(json.loads(data)) for data in found if data]
        return [r for r in records if wanted is None or r.state in wanted]

    def ping(self) -> None:
        with self._errors("ping"):
            self.client.ping()

    def close(self) -> None:
        with self._errors("close"):
            self.client.close()


class _Batch:
    """Context manager behind `RedisStore.batch`: executes on success, discards on error."""

    def __init__(self, store: RedisStore) -> None:
        self._store = store
        self._pipe: Pipeline[str] | None = None

    def __enter__(self) -> Pipeline[str]:
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


def _connection_kwargs(client: redis.Redis[str]) -> dict[str, Any]:
    """What the client connects with (`get_connection_kwargs`, which the stubs leave untyped)."""
    kwargs: dict[str, Any] = client.connection_pool.connection_kwargs
    return kwargs


def _reply(value: object) -> str | None:
    """A command's reply on a watching pipeline, which runs it at once (the stubs type it as the
    pipeline itself)."""
    if value is not None and not isinstance(value, str):
        raise TypeError(f"expected a decoded reply, got {type(value).__name__}")
    return value


def _redact(url: str) -> str:
    """The URL without userinfo or query (`?password=` is legal too), safe for error messages."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return "<unparseable>"
    netloc, slash, path = rest.split("?")[0].partition("/")
    return f"{scheme}://{netloc.rpartition('@')[2]}{slash}{path}"
