"""Fixtures shared by every test layer.

Append new fixtures below; keep each one small and say in its docstring what it guarantees.
Redis tests run against a real redis-server (tests/support/redis_server.py), flushed per test.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from chunkd.devserver import LocalS3Server
from tests.support.redis_server import RedisServer
from tests.support.s3_servers import MotoServer


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


# -- S3 servers --------------------------------------------------------------------------------

BUCKET = "chunkd"


@pytest.fixture(scope="session")
def moto_server() -> Iterator[MotoServer]:
    """One moto server (HTTP, in this process) for the session; `moto` isolates each test."""
    with MotoServer() as server:
        yield server


@pytest.fixture
def moto(moto_server: MotoServer) -> MotoServer:
    """A running moto server with an empty `chunkd` bucket and zeroed request counts."""
    moto_server.start()  # a fault test may have stopped it
    moto_server.reset()
    moto_server.create_bucket(BUCKET)
    moto_server.reset_counts()
    return moto_server


@pytest.fixture
def rclone_s3(tmp_path: Path) -> Iterator[LocalS3Server]:
    """A fresh `rclone serve s3` on tmp_path/s3 with a `chunkd` bucket."""
    with LocalS3Server(tmp_path / "s3", buckets=(BUCKET,)) as server:
        yield server


@pytest.fixture(params=["moto", "rclone"])
def server(request: pytest.FixtureRequest) -> MotoServer | LocalS3Server:
    """Runs a test once against each S3 server; both have endpoint_url, access_key, secret_key."""
    return request.getfixturevalue("moto" if request.param == "moto" else "rclone_s3")


@pytest.fixture
def input_dir(tmp_path: Path) -> Path:
    """An empty drop folder."""
    folder = tmp_path / "input"
    folder.mkdir()
    return folder
