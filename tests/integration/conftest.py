"""Fixtures of the integration layer: the upload engine in-process, and state stores on both backends."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from chunkd.pipeline.engine import Engine
from chunkd.store import CheckpointStore
from chunkd.store.redis import RedisStore
from chunkd.store.sqlite import SqliteStore
from tests.support.engine import close_test_engine, make_test_engine
from tests.support.faultproxy import Proxied
from tests.support.s3_servers import make_client
from tests.support.stores import Opener


@pytest.fixture
def client(server: Any) -> Any:
    """A boto3 client on `server` (each S3 server in turn)."""
    return make_client(server.endpoint_url, server.access_key, server.secret_key)


@pytest.fixture
def make_engine(server: Any, tmp_path: Path) -> Iterator[Callable[..., Engine]]:
    """Builds engines on `server` with tmp_path/input as their folder; shuts every one down after."""
    engines: list[Engine] = []
    (tmp_path / "input").mkdir()

    def make(**settings: Any) -> Engine:
        engine = make_test_engine(server, tmp_path, **settings)
        engines.append(engine)
        return engine

    yield make
    for engine in engines:
        close_test_engine(engine)


@pytest.fixture
def proxied_engine(proxied: Proxied, tmp_path: Path) -> Iterator[Engine]:
    """An engine as `make_engine` builds it, talking to `server` through the FaultProxy `proxied`;
    faults armed after it is built miss its start-up probes."""
    (tmp_path / "input").mkdir()
    engine = make_test_engine(proxied, tmp_path)
    yield engine
    close_test_engine(engine)


@pytest.fixture(params=["sqlite", "redis"])
def open_backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Opener]:
    """Each call opens another connection to the same data (a reopen, or the daemon's and the CLI's)."""
    if request.param == "sqlite":
        path = str(tmp_path / "state" / "chunkd.db")
        opener: Opener = lambda: SqliteStore(path)
    else:
        url = request.getfixturevalue("redis_url")  # only redis params need the server
        opener = lambda: RedisStore.from_url(url)
    opened: list[CheckpointStore] = []

    def open_one() -> CheckpointStore:
        opened.append(opener())
        return opened[-1]

    yield open_one
    for store in opened:
        store.close()


@pytest.fixture
def store(open_backend: Opener) -> CheckpointStore:
    return open_backend()
