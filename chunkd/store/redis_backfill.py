"""The object index (`chunkd:key:<bucket>/<key>`) for records saved before it existed.

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
