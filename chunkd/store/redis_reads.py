"""Stream reads on Redis: a record by id, the newest for a path, all (or some states') in
discovery order, a page of the newest and their count, a stream's parts, and the highest fencing
token a file's records were written with. No transactions: each read is one round trip or two, and
a record read is the truth where an index and the record disagree."""

from __future__ import annotations

import heapq
import json
from collections.abc import Iterable
from itertools import islice

from chunkd.model.node import Scope
from chunkd.model.states import PartRecord, StreamRecord, StreamState
from chunkd.store.redis_backfill import NodeIndexCheck
from chunkd.store.redis_replies import texts
from chunkd.store.redis_role import RedisRole


class RedisStreamReader(RedisRole):
    """StreamReader on Redis; RedisStore hands its stream reads here."""

    # Whether the store may hold records without a node (RedisStore sets it); None: assume it may.
    unscoped: NodeIndexCheck | None = None

    def get_stream(self, stream_id: str) -> StreamRecord | None:
        with self._errors(f"get stream {stream_id}"):
            data = self.client.hget(self.keys.stream(stream_id), "data")
        return StreamRecord.from_dict(json.loads(data)) if data else None

    def find_by_relpath(self, relpath: str, *, scope: Scope | None = None) -> StreamRecord | None:
        """A local folder's node looks in its own index first: a fleet's boxes all record
        `cam1/<date>.mp4`, and the index of every node's would load each box's stream of it. Only a
        store that holds records from before nodes (none of a node's index) needs that one too."""
        if scope is not None and scope.node is not None and not scope.single_box:
            found = self._newest(self.keys.node_path(scope.node, relpath), relpath, scope)
            if found is not None or (self.unscoped is not None and not self.unscoped.possible()):
                return found
        return self._newest(self.keys.path(relpath), relpath, scope)

    def _newest(self, index: str, relpath: str, scope: Scope | None) -> StreamRecord | None:
        # Newest by discovery, not by last save: re-saving an old stream (a retry of a failed
        # upload) must not take the path back from the file that replaced it.
        with self._errors(f"find stream for {relpath!r}"):
            ids = texts(self.client.zrevrange(index, 0, -1))
        for record in self._load(ids):
            # Skips a stream whose record was later moved to another path, and another node's.
            if record.relpath == relpath and (scope is None or scope.holds(record)):
                return record
        return None

    def find_by_key(self, bucket: str, key: str) -> list[StreamRecord]:
        with self._errors(f"find streams for s3://{bucket}/{key}"):
            ids = texts(self.client.zrevrange(self.keys.object(bucket, key), 0, -1))
        return [r for r in self._load(ids) if (r.bucket, r.key) == (bucket, key)]

    def list_streams(
        self, states: Iterable[StreamState] | None = None, *, discovered_before: float | None = None
    ) -> list[StreamRecord]:
        wanted, keys = self._indexes(states)
        high = "+inf" if discovered_before is None else f"({discovered_before!r}"
        with self._errors("list streams"):
            pipe = self.client.pipeline(transaction=False)
            for key in keys:
                pipe.zrangebyscore(key, "-inf", high, withscores=True)
            ranges = pipe.execute()
        # Same order as SQLite's "ORDER BY discovered_at, id", and what ZRANGE does within one set.
        merged = heapq.merge(*[[(score, sid) for sid, score in members] for members in ranges])
        records = self._load([sid for _, sid in merged])
        # A stream may change state between the two round trips; the record itself is the truth.
        return [r for r in records if wanted is None or r.state in wanted]

    def newest_streams(
        self, states: Iterable[StreamState] | None = None, *, limit: int, offset: int = 0
    ) -> list[StreamRecord]:
        """ZREVRANGE over the discovery index (or each state's): ids only, then the page's records
        in one pipelined round trip. Several states' tops are merged, as list_streams merges them."""
        wanted, keys = self._indexes(states)
        if limit <= 0 or not keys:
            return []
        offset = max(0, offset)
        with self._errors("list the newest streams"):
            if len(keys) == 1:
                ids = texts(self.client.zrevrange(keys[0], offset, offset + limit - 1))
            else:
                pipe = self.client.pipeline(transaction=False)
                for key in keys:
                    pipe.zrevrange(key, 0, offset + limit - 1, withscores=True)
                tops = [[(score, sid) for sid, score in members] for members in pipe.execute()]
                ids = [sid for _, sid in islice(heapq.merge(*tops, reverse=True), offset, offset + limit)]
        return [r for r in self._load(ids) if wanted is None or r.state in wanted]

    def count_streams(self, states: Iterable[StreamState] | None = None) -> int:
        _, keys = self._indexes(states)
        with self._errors("count streams"):
            pipe = self.client.pipeline(transaction=False)
            for key in keys:
                pipe.zcard(key)
            return sum(int(count) for count in pipe.execute())

    def highest_fence(self, name: str) -> int:
        """The highest token any record of the file named `name` was written with: where a new
        token must start above, whatever the counter says. A lease is named by the relpath (a shared
        folder, a single box) or `@node/relpath` (a node's local folder, chunkd.model.node): its
        records are in that node's relpath index, and one from before nodes were in the plain one.
        Reading an index too many can only raise the floor, which is safe."""
        indexes = [self.keys.path(name)]
        node, slash, relpath = name[1:].partition("/")
        if name.startswith("@") and slash and node:
            indexes += [self.keys.node_path(node, relpath), self.keys.path(relpath)]
        with self._errors(f"read the fencing tokens of {name!r}"):
            pipe = self.client.pipeline(transaction=False)
            for index in indexes:
                pipe.zrange(index, 0, -1)
            ids = {stream_id for found in pipe.execute() for stream_id in texts(found)}
            if not ids:
                return 0
            for stream_id in ids:
                pipe.hget(self.keys.stream(stream_id), "fence")
            return max((int(token) for token in pipe.execute() if token), default=0)

    def _indexes(self, states: Iterable[StreamState] | None) -> tuple[set[StreamState] | None, list[str]]:
        """The states asked for (None: all) and the discovery indexes that hold them: the one of
        every stream, or one per state."""
        wanted = None if states is None else {StreamState(state) for state in states}
        keys = [self.keys.streams()] if wanted is None else [self.keys.streams(state) for state in wanted]
        return wanted, keys

    def _load(self, ids: list[str]) -> list[StreamRecord]:
        if not ids:
            return []
        with self._errors("load streams"):
            pipe = self.client.pipeline(transaction=False)
            for stream_id in ids:
                pipe.hget(self.keys.stream(stream_id), "data")
            found = pipe.execute()
        return [StreamRecord.from_dict(json.loads(data)) for data in found if data]

    def list_parts(self, stream_id: str) -> list[PartRecord]:
        with self._errors(f"list parts of stream {stream_id}"):
            found = self.client.hgetall(self.keys.parts(stream_id))
        return sorted((PartRecord.from_dict(json.loads(data)) for data in found.values()), key=lambda p: p.number)
