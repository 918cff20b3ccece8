"""The HTTP endpoint, over real sockets: probes, metrics, status, the bearer token, failures."""

from __future__ import annotations

import logging
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from chunkd.observe.http import Check, HttpServer, parse_addr
from chunkd.observe.metrics import Metrics
from tests.support.http_client import get

TOKEN = "s3cr3t-t0ken"
POLL = 0.01  # stop() returns this fast


@dataclass
class Probes:
    """What the server is told; tests flip these between requests."""

    health: Check = field(default_factory=lambda: Check(True, {"scheduler": True}))
    ready: Check = field(default_factory=lambda: Check(True, {"store": True, "watcher": True}))
    streams: list[dict[str, Any]] = field(default_factory=lambda: [{"id": "s1", "state": "UPLOADING"}])
    status_error: Exception | None = None

    def status(self) -> list[dict[str, Any]]:
        if self.status_error is not None:
            raise self.status_error
        return self.streams


ServerFactory = Callable[..., HttpServer]


@pytest.fixture
def probes() -> Probes:
    return Probes()


@pytest.fixture
def make_server(probes: Probes) -> Iterator[ServerFactory]:
    """Starts HttpServers on 127.0.0.1 (a free port unless told) and stops them all afterwards."""
    started: list[HttpServer] = []

    def make(*, token: str | None = None, metrics: Metrics | None = None, addr: str = "127.0.0.1:0") -> HttpServer:
        server = HttpServer(
            addr,
            token=token,
            metrics=metrics or Metrics(),
            health=lambda: probes.health,
            ready=lambda: probes.ready,
            status=probes.status,
            poll_interval=POLL,
        )
        server.start()
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop()


def test_healthz_ok_and_failing(make_server: ServerFactory, probes: Probes) -> None:
    server = make_server()
    reply = get(server, "/healthz")
    assert reply.status == 200
    assert reply.headers["Content-Type"] == "application/json"
    assert reply.json() == {"ok": True, "scheduler": True}

    probes.health = Check(False, {"scheduler": "worker threads died: chunkd-file-0"})
    reply = get(server, "/healthz")
    assert reply.status == 503
    assert reply.json() == {"ok": False, "scheduler": False}


def test_readyz_ok_and_failing(make_server: ServerFactory, probes: Probes) -> None:
    server = make_server()
    assert get(server, "/readyz").status == 200
    assert get(server, "/readyz").json() == {"ok": True, "store": True, "watcher": True}

    probes.ready = Check(False, {"store": "redis://:hunter2@db:6379 connection refused", "watcher": True})
    reply = get(server, "/readyz")
    assert reply.status == 503
    assert reply.json() == {"ok": False, "store": False, "watcher": True}
    assert b"hunter2" not in reply.body and b"refused" not in reply.body


def test_probe_failures_are_logged_once_per_change(
    make_server: ServerFactory, probes: Probes, caplog: pytest.LogCaptureFixture
) -> None:
    server = make_server()
    probes.ready = Check(False, {"store": "connection refused"})
    with caplog.at_level(logging.INFO, logger="chunkd.http"):
        for _ in range(3):
            get(server, "/readyz")
        probes.ready = Check(True, {"store": True})
        get(server, "/readyz")
    messages = [r.getMessage() for r in caplog.records if r.name == "chunkd.http"]
    assert sum("readyz: failing" in m and "connection refused" in m for m in messages) == 1
    assert sum("readyz: ok again" in m for m in messages) == 1


def test_metrics_endpoint_serves_prometheus_text(make_server: ServerFactory) -> None:
    metrics = Metrics()
    metrics.part_uploaded(1234)
    server = make_server(metrics=metrics)
    reply = get(server, "/metrics")
    assert reply.status == 200
    assert reply.headers["Content-Type"].startswith("text/plain; version=")
    assert "chunkd_uploaded_bytes_total 1234.0" in reply.body.decode().splitlines()


def test_status_returns_the_stream_list(make_server: ServerFactory, probes: Probes) -> None:
    server = make_server()
    reply = get(server, "/status")
    assert reply.status == 200
    assert reply.headers["Content-Type"] == "application/json"
    assert reply.json() == [{"id": "s1", "state": "UPLOADING"}]
    probes.streams = []
    assert get(server, "/status").json() == []


@pytest.mark.parametrize("path", ["/metrics", "/status"])
def test_token_guards_metrics_and_status(make_server: ServerFactory, path: str) -> None:
    server = make_server(token=TOKEN)
    missing = get(server, path)
    assert missing.status == 401
    assert missing.headers["WWW-Authenticate"].startswith("Bearer")
    assert get(server, path, token="wrong").status == 401
    assert get(server, path, token=TOKEN + "x").status == 401
    assert get(server, path, token="").status == 401
    assert get(server, path, token=TOKEN).status == 200


def test_basic_auth_is_not_a_bearer_token(make_server: ServerFactory) -> None:
    server = make_server(token=TOKEN)
    host, port = server.address
    request = urllib.request.Request(f"http://{host}:{port}/status", headers={"Authorization": f"Basic {TOKEN}"})
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(request, timeout=5)
    caught.value.close()
    assert caught.value.code == 401


@pytest.mark.parametrize("path", ["/healthz", "/readyz"])
def test_probes_stay_open_with_a_token(make_server: ServerFactory, path: str) -> None:
    server = make_server(token=TOKEN)
    reply = get(server, path)
    assert reply.status == 200
    assert reply.json()["ok"] is True


def test_the_token_never_reaches_the_log(make_server: ServerFactory, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="chunkd.http"):
        server = make_server(token=TOKEN)
        get(server, "/status", token=TOKEN)
        get(server, "/status", token="wrong")
    assert caplog.records  # request lines do go to logging, at DEBUG
    assert all(TOKEN not in record.getMessage() for record in caplog.records)


def test_request_lines_go_to_logging_not_stderr(
    make_server: ServerFactory, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG, logger="chunkd.http"):
        get(make_server(), "/healthz")
    assert capsys.readouterr().err == ""
    assert any("GET /healthz" in r.getMessage() and r.levelno == logging.DEBUG for r in caplog.records)


def test_unknown_path_is_a_json_404(make_server: ServerFactory) -> None:
    server = make_server(token=TOKEN)
    reply = get(server, "/nope")
    assert reply.status == 404
    assert reply.json() == {"error": "not found"}


def test_query_string_is_ignored_for_routing(make_server: ServerFactory) -> None:
    assert get(make_server(), "/healthz?verbose=1").status == 200


def test_only_get_is_allowed(make_server: ServerFactory) -> None:
    reply = get(make_server(), "/status", method="POST")
    assert reply.status == 405
    assert reply.headers["Allow"] == "GET"


def test_a_raising_callable_is_a_500_for_that_request_only(
    make_server: ServerFactory, probes: Probes, caplog: pytest.LogCaptureFixture
) -> None:
    server = make_server()
    probes.status_error = RuntimeError("store exploded")
    with caplog.at_level(logging.ERROR, logger="chunkd.http"):
        reply = get(server, "/status")
    assert reply.status == 500
    assert reply.json() == {"error": "internal error"}
    assert b"exploded" not in reply.body
    assert any("/status" in r.getMessage() for r in caplog.records)

    probes.status_error = None
    assert get(server, "/status").status == 200
    assert get(server, "/healthz").status == 200


def test_a_raising_probe_is_a_500(make_server: ServerFactory, probes: Probes) -> None:
    def broken() -> Check:
        raise RuntimeError("boom")

    server = HttpServer(
        "127.0.0.1:0", token=None, metrics=Metrics(), health=broken, ready=lambda: probes.ready, status=probes.status,
        poll_interval=POLL,
    )
    server.start()
    try:
        assert get(server, "/healthz").status == 500
        assert get(server, "/readyz").status == 200
    finally:
        server.stop()


def test_concurrent_requests_are_served(make_server: ServerFactory) -> None:
    server = make_server()
    results: list[int] = []
    threads = [threading.Thread(target=lambda: results.append(get(server, "/metrics").status)) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert results == [200] * 8


def test_binds_exactly_the_host_given(make_server: ServerFactory) -> None:
    host, port = make_server().address
    assert host == "127.0.0.1"
    assert port > 0


def test_stop_frees_the_port(probes: Probes) -> None:
    def new(addr: str) -> HttpServer:
        return HttpServer(addr, token=None, metrics=Metrics(), health=lambda: probes.health,
                          ready=lambda: probes.ready, status=probes.status, poll_interval=POLL)

    first = new("127.0.0.1:0")
    first.start()
    port = first.address[1]
    assert get(first, "/healthz").status == 200
    first.stop()
    with pytest.raises(OSError):
        get_raw(port)

    second = new(f"127.0.0.1:{port}")
    second.start()
    try:
        assert second.address == ("127.0.0.1", port)
        assert get(second, "/healthz").status == 200
    finally:
        second.stop()


def get_raw(port: int) -> None:
    urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2).close()


def test_stop_is_idempotent_and_address_needs_a_running_server(probes: Probes) -> None:
    server = HttpServer("127.0.0.1:0", token=None, metrics=Metrics(), health=lambda: probes.health,
                        ready=lambda: probes.ready, status=probes.status, poll_interval=POLL)
    with pytest.raises(RuntimeError, match="not running"):
        _ = server.address
    server.stop()
    server.start()
    server.stop()
    server.stop()
    assert not any(t.name == "chunkd-http" and t.is_alive() for t in threading.enumerate())


def test_port_in_use_is_a_clear_error(make_server: ServerFactory, probes: Probes) -> None:
    taken = make_server().address[1]
    server = HttpServer(f"127.0.0.1:{taken}", token=None, metrics=Metrics(), health=lambda: probes.health,
                        ready=lambda: probes.ready, status=probes.status)
    with pytest.raises(OSError, match="CHUNKD_HTTP_ADDR"):
        server.start()


@pytest.mark.parametrize("addr", ["", "8765", "127.0.0.1", "127.0.0.1:", ":8765", "127.0.0.1:http", "127.0.0.1:70000"])
def test_malformed_address_is_refused(addr: str) -> None:
    with pytest.raises(ValueError, match="host:port"):
        HttpServer(addr, token=None, metrics=Metrics(), health=lambda: Check(True, {}),
                   ready=lambda: Check(True, {}), status=list)


@pytest.mark.parametrize(
    ("addr", "expected"),
    [("127.0.0.1:8765", ("127.0.0.1", 8765)), ("0.0.0.0:0", ("0.0.0.0", 0)), ("[::1]:9000", ("::1", 9000)),
     ("localhost:1", ("localhost", 1))],
)
def test_parse_addr(addr: str, expected: tuple[str, int]) -> None:
    assert parse_addr(addr) == expected
