"""Fixtures shared by every test layer.

Append new fixtures below; keep each one small and say in its docstring what it guarantees.
Redis tests run against a real redis-server (tests/support/redis_server.py), flushed per test.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from chunkd.s3.devserver import LocalS3Server
from tests.support.bucket import BUCKET
from tests.support.ceph_rgw import CephRGW, require_ceph
from tests.support.daemon import DaemonProcess, daemon_env
from tests.support.faultproxy import FaultProxy, Proxied
from tests.support.redis_server import RedisServer
from tests.support.s3_servers import MotoServer


@pytest.fixture(autouse=True, scope="session")
def _in_process_moto_reads_bytearray_bodies() -> Iterator[None]:
    """chunkd sends a part straight from its pooled bytearray; moto's in-process mock (mock_aws)
    reads a body only as bytes, a file or a form, so it gets a copy (servers read the socket)."""
    from moto.core import botocore_stubber

    original = botocore_stubber.normalize_request

    def normalize(request: Any) -> Any:
        if isinstance(getattr(request, "body", None), bytearray):
            request.body = bytes(request.body)
        return original(request)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(botocore_stubber, "normalize_request", normalize)
        yield


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


@pytest.fixture(scope="session")
def rgw_server() -> Iterator[CephRGW]:
    """One Ceph RGW cluster for the session (about 2 s to start); `rgw` isolates each test."""
    require_ceph()
    with CephRGW() as server:
        yield server


@pytest.fixture
def rgw(rgw_server: CephRGW) -> CephRGW:
    """A running Ceph RGW whose `chunkd` bucket holds no object and no multipart upload."""
    rgw_server.start()  # a fault test may have stopped it (the gateway alone, or the whole cluster)
    rgw_server.empty_bucket(BUCKET)
    return rgw_server


S3Server = MotoServer | LocalS3Server | CephRGW
_SERVER_FIXTURES = {"moto": "moto", "rclone": "rclone_s3", "rgw": "rgw"}


@pytest.fixture(params=["moto", "rclone", "rgw"])
def server(request: pytest.FixtureRequest) -> S3Server:
    """Runs a test once against each S3 server; all have endpoint_url, access_key, secret_key."""
    chosen: S3Server = request.getfixturevalue(_SERVER_FIXTURES[request.param])
    return chosen


@pytest.fixture(params=["moto", "rgw"])
def pausable(request: pytest.FixtureRequest) -> MotoServer | CephRGW:
    """A server whose endpoint can go down and come back with its data (tests/support/pause.py):
    moto, and Ceph RGW's gateway."""
    chosen: MotoServer | CephRGW = request.getfixturevalue(request.param)
    return chosen


@pytest.fixture
def proxied(server: S3Server) -> Iterator[Proxied]:
    """`server` behind a FaultProxy (tests/support/faultproxy.py): chunkd talks to its endpoint_url,
    faults are armed on `.proxy`, and `.direct` is the server itself, for checking what it holds."""
    with FaultProxy(server.endpoint_url) as proxy:
        yield Proxied(server, proxy)


@pytest.fixture
def input_dir(tmp_path: Path) -> Path:
    """An empty drop folder."""
    folder = tmp_path / "input"
    folder.mkdir()
    return folder


@pytest.fixture
def chunkd_daemon(tmp_path: Path, input_dir: Path) -> Iterator[Callable[..., DaemonProcess]]:
    """Starts real `chunkd run` processes on `input_dir` against a given S3 server; kills leftovers.

    `start(server, state_url=None, extra_env=None, **settings)`: state defaults to SQLite in
    tmp_path, settings become CHUNKD_* variables, the log goes to tmp_path/<log_name> (daemon.log).
    """
    started: list[DaemonProcess] = []

    def start(server: Any, *, state_url: str | None = None, extra_env: dict[str, str] | None = None,
              log_name: str = "daemon.log", **settings: Any) -> DaemonProcess:
        env = daemon_env(
            input_dir=input_dir, state_url=state_url or f"sqlite:///{tmp_path / 'state.db'}",
            endpoint_url=server.endpoint_url, access_key=server.access_key, secret_key=server.secret_key,
            **settings,
        )
        env.update(extra_env or {})
        process = DaemonProcess(env, tmp_path / log_name).start()
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop()


def _subprocess_env(tmp_path: Path, s3: S3Server) -> dict[str, str]:
    (tmp_path / "input").mkdir(exist_ok=True)
    return daemon_env(
        input_dir=tmp_path / "input", state_url=f"sqlite:///{tmp_path / 'state.db'}",
        endpoint_url=s3.endpoint_url, access_key=s3.access_key, secret_key=s3.secret_key,
    )


@pytest.fixture
def env(tmp_path: Path, moto: MotoServer) -> dict[str, str]:
    """Environment for a chunkd subprocess: moto endpoint, SQLite state and an input folder in tmp_path.

    For commands whose S3 side does not matter (config errors, store-only commands); a test of
    what chunkd does with S3 takes `server_env`."""
    return _subprocess_env(tmp_path, moto)


@pytest.fixture
def server_env(tmp_path: Path, server: S3Server) -> dict[str, str]:
    """`env` on `server`: the test runs once against each S3 server."""
    return _subprocess_env(tmp_path, server)
