"""Indexes for records saved before they existed: the object index (`chunkd:key:<bucket>/<key>`),
and whether any record lacks a node (so is in no node's path index, `NodeIndexCheck`).

Key collisions are found through that index; a completed record a store carried over from an older
chunkd would be invisible to it, and a second file could replace its object without a word. The
first lookup of a process fills the index from the records once, then marks the store done.
ZADD is idempotent, so daemons that backfill at the same time do no harm.
"""

from __future__ import annotations

import json
import threading

import redis

from chunkd.store.redis_keys import RedisKeys
from chunkd.store.redis_replies import texts
from chunkd.store.redis_role import Errors, RedisRole

INDEX_VERSION = "1"
NODE_INDEX_VERSION = "1"
BATCH = 500


class KeyIndexBackfill(RedisRole):
    """Runs the backfill at most once per process, and not at all on a store already marked."""

    def __init__(self, client: redis.Redis, keys: RedisKeys, *, errors: Errors) -> None:
        super().__init__(client, keys, errors=errors)
        self._lock = threading.Lock()
        self._done = False

    def ensure(self) -> None:
        if self._done:
            return
        with self._lock:
            if self._done:
                return
            with self._errors("check the object index"):
                marked = self.client.hget(self.keys.schema(), "key_index") == INDEX_VERSION
            if not marked:
                self._backfill()
            self._done = True

    def _backfill(self) -> None:
        with self._errors("list streams for the object index"):
            ids = texts(self.client.zrange(self.keys.streams(), 0, -1, withscores=False))
        for start in range(0, len(ids), BATCH):
            self._index(ids[start : start + BATCH])
        with self._errors("mark the object index"):
            self.client.hset(self.keys.schema(), "key_index", INDEX_VERSION)

    def _index(self, ids: list[str]) -> None:
        with self._errors("fill the object index"):
            pipe = self.client.pipeline(transaction=False)
            for stream_id in ids:
                pipe.hget(self.keys.stream(stream_id), "data")
            found = pipe.execute()
            pipe = self.client.pipeline(transaction=False)
            for data in found:
                if data:
                    record = json.loads(data)
                    score = {record["id"]: record.get("discovered_at", 0.0)}
                    pipe.zadd(self.keys.object(record["bucket"], record["key"]), score)
            pipe.execute()


class NodeIndexCheck(RedisRole):
    """Does the store hold records without a node, which a node's own path index does not list?

    Asked once per process: a store marked in its schema (made by a chunkd with nodes, or found
    without such records) never does; otherwise every record is read once, in batches, and a store
    with none is marked. While it does, a node's lookups also read the index of every node's."""

    def __init__(self, client: redis.Redis, keys: RedisKeys, *, errors: Errors) -> None:
        super().__init__(client, keys, errors=errors)
        self._lock = threading.Lock()
        self._possible: bool | None = None

    def possible(self) -> bool:
        if self._possible is None:
            with self._lock:
                if self._possible is None:
                    self._possible = self._check()
        return self._possible

    def _check(self) -> bool:
        with self._errors("check the node index"):
            if self.client.hget(self.keys.schema(), "node_index") == NODE_INDEX_VERSION:
                return False
            ids = texts(self.client.zrange(self.keys.streams(), 0, -1))
        for start in range(0, len(ids), BATCH):
            with self._errors("look for records without a node"):
                pipe = self.client.pipeline(transaction=False)
                for stream_id in ids[start : start + BATCH]:
                    pipe.hget(self.keys.stream(stream_id), "data")
                if any(data and json.loads(data).get("node") is None for data in pipe.execute()):
                    return True
        with self._errors("mark the node index"):
            self.client.hset(self.keys.schema(), "node_index", NODE_INDEX_VERSION)
        return False
