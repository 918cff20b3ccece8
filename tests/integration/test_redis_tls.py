"""`CHUNKD_STATE_URL=rediss://…`: a real `chunkd run` on a real redis-server that speaks only TLS
(a throw-away CA and a certificate for 127.0.0.1) and wants a password, and one that also wants a
client certificate from that CA (`--tls-auth-clients yes`); and `rediss+sentinel://…`
on a primary, a replica and three sentinels that all speak only TLS. The S3 side is moto: what is
under test is the store connection, which no S3 server changes."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from chunkd.model.states import StreamState
from tests.support.bucket import read_manifest, sha256_object
from tests.support.certs import make_client_certificate, make_server_certificate
from tests.support.cli import error_lines, run_chunkd
from tests.support.daemon import DaemonProcess, daemon_env, wait_for
from tests.support.files import sha256_file, write_random
from tests.support.redis_server import RedisServer, SentinelGroup
from tests.support.s3_servers import MotoServer
from tests.support.sizes import MiB

PASSWORD = "tls-s3cret-0x5f"


@pytest.fixture(scope="module")
def tls_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A redis-server with TLS only (no plain port) and `--requirepass`."""
    certificate = make_server_certificate(tmp_path_factory.mktemp("tls"))
    with RedisServer(tls=certificate, password=PASSWORD) as server:
        yield server


@pytest.fixture
def tls_url(tls_redis: RedisServer) -> str:
    """`rediss://:password@127.0.0.1:port/0?ssl_ca_certs=ca.pem` on an empty database."""
    return _emptied(tls_redis)


@pytest.fixture(scope="module")
def mtls_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A redis-server with TLS only, `--requirepass` and `--tls-auth-clients yes`: its `url` carries
    `ssl_certfile`/`ssl_keyfile`, a client certificate from the server's CA."""
    certificate = make_server_certificate(tmp_path_factory.mktemp("mtls"))
    with RedisServer(tls=certificate, password=PASSWORD, client_certificate=make_client_certificate(certificate)) as server:
        yield server


@pytest.fixture
def mtls_url(mtls_redis: RedisServer) -> str:
    """`rediss://:password@127.0.0.1:port/0?ssl_ca_certs=…&ssl_certfile=…&ssl_keyfile=…` on an empty database."""
    return _emptied(mtls_redis)


def _emptied(server: RedisServer) -> str:
    """The server's URL, its database emptied first."""
    client = server.client()
    try:
        client.flushall()
    finally:
        client.close()
    return server.url


def _uploaded(daemon: DaemonProcess, s3: Any, source: Path, *, timeout: float) -> dict[str, Any]:
    """The manifest of `source` once the daemon (still running) wrote it, its object checked."""

    def uploaded() -> dict[str, Any] | None:
        assert daemon.running, f"chunkd run exited:\n{daemon.log_path.read_text()[-3000:]}"
        return read_manifest(s3, source.name)

    manifest: dict[str, Any] = wait_for(uploaded, timeout=timeout, what="the manifest")
    assert manifest["sha256"] == sha256_file(source) == sha256_object(s3, source.name)
    return manifest


def _stored(server: RedisServer, relpath: str) -> tuple[dict[str, Any], dict[str, str]]:
    """The COMPLETED record of `relpath` in that Redis, and its parts hash."""
    client = server.client()
    try:
        record = wait_for(lambda: _completed_record(client, relpath), timeout=30, what="a COMPLETED record")
        parts: dict[str, str] = client.hgetall(f"chunkd:stream:{record['id']}:parts")
    finally:
        client.close()
    return record, parts


def _completed_record(client: redis.Redis, relpath: str) -> dict[str, Any] | None:
    """The stream record of `relpath` as the daemon stored it, once it is COMPLETED."""
    ids = client.zrange(f"chunkd:path:{relpath}", 0, -1)
    if len(ids) != 1:
        return None
    stored = client.hgetall(f"chunkd:stream:{ids[0]}")
    if stored.get("state") != StreamState.COMPLETED.value:
        return None
    record: dict[str, Any] = json.loads(stored["data"])
    return record


def _refused_at_start(command: str, state_url: str, moto: MotoServer, tmp_path: Path) -> str:
    """`chunkd run` or `chunkd doctor` on `state_url`: it fails without a traceback or the password,
    in the one line returned."""
    env = daemon_env(input_dir=tmp_path / "input", state_url=state_url, endpoint_url=moto.endpoint_url,
                     access_key=moto.access_key, secret_key=moto.secret_key)
    result = run_chunkd(command, env=env, cwd=tmp_path, timeout=60)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "Traceback" not in output and PASSWORD not in output, output
    lines = error_lines(result) if command == "run" else [ln for ln in result.stdout.splitlines() if "FAIL" in ln]
    assert len(lines) == 1, output
    return lines[0]


def _nothing_written(server: RedisServer, tmp_path: Path) -> None:
    """No SQLite store to fall back on, and nothing in the Redis that refused the connection."""
    assert not (tmp_path / ".chunkd").exists(), "fell back to a local SQLite store"
    client = server.client()
    try:
        assert client.dbsize() == 0
    finally:
        client.close()


def test_a_daemon_on_rediss_uploads_and_keeps_its_records_there(
    chunkd_daemon: Callable[..., DaemonProcess], moto: MotoServer, tls_redis: RedisServer, tls_url: str,
    input_dir: Path,
) -> None:
    assert tls_url.startswith(f"rediss://:{PASSWORD}@127.0.0.1:") and "ssl_ca_certs=" in tls_url
    source = write_random(input_dir / "cam.mp4", 12 * MiB)
    daemon = chunkd_daemon(moto, state_url=tls_url, part_size="5MiB", log_level="DEBUG")
    manifest = _uploaded(daemon, moto.client(), source, timeout=120)

    record, parts = _stored(tls_redis, "cam.mp4")
    assert record["key"] == "cam.mp4" and record["sha256"] == manifest["sha256"]
    assert sorted(int(number) for number in parts) == [1, 2, 3]
    assert daemon.running
    assert PASSWORD not in daemon.log_path.read_text(), "the password reached the log"


@pytest.mark.parametrize("command", ["run", "doctor"])
def test_an_untrusted_certificate_fails_at_start_in_one_line(
    command: str, moto: MotoServer, tls_redis: RedisServer, tls_url: str, tmp_path: Path,
) -> None:
    """Without `ssl_cert_reqs=none` or the CA, redis-py verifies against the system's CAs, which do
    not know ours: chunkd must say so and stop, not fall back to SQLite or print a traceback."""
    line = _refused_at_start(command, tls_url.split("?")[0], moto, tmp_path)

    assert "state store" in line and "certificate verify failed" in line, line
    assert f"127.0.0.1:{tls_redis.port}" in line, line
    _nothing_written(tls_redis, tmp_path)


def test_a_ca_file_that_is_not_there_is_named(moto: MotoServer, tls_url: str, tmp_path: Path) -> None:
    """Not `Error 2 connecting to 127.0.0.1:port. No such file or directory.`, as if the server were."""
    missing = tmp_path / "ca-typo.pem"
    line = _refused_at_start("run", f"{tls_url.split('?')[0]}?ssl_ca_certs={missing}", moto, tmp_path)
    assert f"ssl_ca_certs={missing} is not a readable file" in line, line


def test_a_daemon_on_rediss_with_a_client_certificate_uploads_and_keeps_its_records_there(
    chunkd_daemon: Callable[..., DaemonProcess], moto: MotoServer, mtls_redis: RedisServer, mtls_url: str,
    input_dir: Path,
) -> None:
    """Mutual TLS: the ssl_certfile and ssl_keyfile of the URL reach every store connection."""
    assert "ssl_certfile=" in mtls_url and "ssl_keyfile=" in mtls_url
    source = write_random(input_dir / "cam.mp4", 6 * MiB)
    daemon = chunkd_daemon(moto, state_url=mtls_url, part_size="5MiB", log_level="DEBUG")
    manifest = _uploaded(daemon, moto.client(), source, timeout=120)

    record, parts = _stored(mtls_redis, "cam.mp4")
    assert record["key"] == "cam.mp4" and record["sha256"] == manifest["sha256"]
    assert sorted(int(number) for number in parts) == [1, 2]
    assert daemon.running
    assert PASSWORD not in daemon.log_path.read_text(), "the password reached the log"


@pytest.mark.parametrize("command", ["run", "doctor"])
def test_no_client_certificate_for_a_server_that_wants_one_fails_at_start_in_one_line(
    command: str, moto: MotoServer, mtls_redis: RedisServer, mtls_url: str, tmp_path: Path,
) -> None:
    """The CA is trusted, the password right: only the client certificate is missing, and the
    server drops the connection. chunkd must say so and stop, not fall back to SQLite."""
    assert mtls_redis.tls is not None
    line = _refused_at_start(command, f"{mtls_url.split('?')[0]}?ssl_ca_certs={mtls_redis.tls.ca}", moto, tmp_path)

    assert "state store" in line and f"127.0.0.1:{mtls_redis.port}" in line, line
    assert "add ssl_certfile= and ssl_keyfile= to the URL" in line, line  # whatever the TLS library said
    _nothing_written(mtls_redis, tmp_path)


def test_a_client_key_file_that_is_not_there_is_named(moto: MotoServer, mtls_url: str, tmp_path: Path) -> None:
    """The certificate is there, its key is not: the key file is what the one line names."""
    missing = tmp_path / "client-typo.key"
    query = mtls_url.split("?")[1].split("&ssl_keyfile=")[0]
    line = _refused_at_start("run", f"{mtls_url.split('?')[0]}?{query}&ssl_keyfile={missing}", moto, tmp_path)
    assert f"ssl_keyfile={missing} is not a readable file" in line, line


def test_a_client_key_without_its_certificate_is_named(moto: MotoServer, mtls_url: str, tmp_path: Path) -> None:
    """Not a traceback from redis-py's first connection (`TypeError: certfile should be a valid
    filesystem path`): a key alone is a URL mistake, said in one line."""
    line = _refused_at_start("run", re.sub(r"&ssl_certfile=[^&]*", "", mtls_url), moto, tmp_path)
    assert "ssl_keyfile" in line and "without ssl_certfile" in line, line


def test_a_daemon_on_rediss_sentinel_with_a_private_ca_uploads_through_tls_sentinels(
    chunkd_daemon: Callable[..., DaemonProcess], moto: MotoServer, input_dir: Path, tmp_path: Path,
) -> None:
    """Servers, replication and sentinels all TLS-only with one private CA: the URL names it once."""
    with SentinelGroup(tls=make_server_certificate(tmp_path / "tls"), password=PASSWORD) as group:
        assert group.url.startswith(f"rediss+sentinel://:{PASSWORD}@") and "sentinel_ssl=true&ssl_ca_certs=" in group.url
        source = write_random(input_dir / "cam.mp4", 1 * MiB)
        daemon = chunkd_daemon(moto, state_url=group.url, log_level="DEBUG")
        manifest = _uploaded(daemon, moto.client(), source, timeout=60)
        record, _ = _stored(group.primary, "cam.mp4")
        assert record["key"] == "cam.mp4" and record["sha256"] == manifest["sha256"]
        assert daemon.running
        daemon.stop()
    assert PASSWORD not in daemon.log_path.read_text(), "the password reached the log"
