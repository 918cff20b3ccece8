"""Fixtures shared by every test layer.

Append new fixtures below; keep each one small and say in its docstring what it guarantees.
Redis tests run against a real redis-server (tests/support/redis_server.py), flushed per test.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from tests.support.redis_server import RedisServer


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """One real redis-server for the run; fault tests may stop or kill it (see `redis_url`)."""
    with RedisServer() as server:
        yield server


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """URL of an empty, running Redis, restarted if an earlier test left it down."""
    redis_server.start()
    client = redis.Redis.from_url(redis_server.url)
    try:
        client.flushall()
    finally:
        client.close()
    return redis_server.url
