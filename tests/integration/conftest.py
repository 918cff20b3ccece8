"""Fixtures of the integration layer that run the upload engine in-process."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from chunkd.pipeline.engine import Engine
from tests.support.engine import close_test_engine, make_test_engine
from tests.support.s3_servers import make_client


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
