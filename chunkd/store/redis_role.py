"""What each part of the Redis store stands on: the client, the key layout, and the one way a
RedisError becomes a StoreError (chunkd.store.redis_errors)."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager

import redis

from chunkd.store.redis_keys import RedisKeys

Errors = Callable[[str], AbstractContextManager[None]]  # `with errors("doing what"):` around each call


class RedisRole:
    """One role of the store (reads, content index, events, URLs) over the shared connection."""

    def __init__(self, client: redis.Redis, keys: RedisKeys, *, errors: Errors) -> None:
        self.client = client
        self.keys = keys
        self._errors = errors  # a RedisError becomes a StoreError without secrets
