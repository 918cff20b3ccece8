"""Heartbeats on Redis: which daemons of a fleet are alive (`chunkd nodes`).

Each daemon SETs `chunkd:node:<name>` with an expiry every few seconds: a daemon that stops
beating drops out by itself when the key expires, with nothing to clean up. The names are also in
one sorted set scored by last beat, so listing is one ZRANGE and one MGET, never a SCAN of a
database that holds a fleet's records; names that beat no more than a day ago are trimmed from it.
"""

from __future__ import annotations

import json
import time
from typing import Any

from chunkd.store.redis_role import RedisRole

FORGET_AFTER = 86400.0  # seconds: a name in the set this long after its last beat is removed


class RedisNodes(RedisRole):
    """NodeRegistry on Redis; RedisStore hands its heartbeat calls here."""

    def beat(self, node: str, info: dict[str, Any], *, ttl: float) -> None:
        now = time.time()
        document = json.dumps({**info, "node": node, "seen_at": now})
        with self._errors(f"heartbeat of node {node}"):
            pipe = self.client.pipeline(transaction=True)
            pipe.set(self.keys.node(node), document, px=max(1, int(ttl * 1000)))
            pipe.zadd(self.keys.nodes(), {node: now})
            pipe.zremrangebyscore(self.keys.nodes(), "-inf", now - FORGET_AFTER)
            pipe.execute()

    def list_nodes(self) -> list[dict[str, Any]]:
        with self._errors("list nodes"):
            names = [str(name) for name in self.client.zrange(self.keys.nodes(), 0, -1)]
            found = self.client.mget([self.keys.node(name) for name in names]) if names else []
        nodes = [json.loads(data) for data in found if data]
        return sorted(nodes, key=lambda info: str(info.get("node")))
