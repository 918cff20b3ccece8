"""A second `chunkd run --dev` on a host whose HTTP port is taken picks a free one and says which;
the endpoint's address is logged once."""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from chunkd.observe.http import Check, HttpServer
from chunkd.observe.metrics import Metrics
from tests.support.daemon import DaemonProcess, wait_for


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def server(port: int, **options: bool) -> HttpServer:
    return HttpServer(f"127.0.0.1:{port}", token=None, metrics=Metrics(), health=lambda: Check(True, {}),
                      ready=lambda: Check(True, {}), status=list, **options)


def test_a_busy_port_is_an_error_unless_any_free_port_will_do(busy_port: int) -> None:
    with pytest.raises(OSError, match="CHUNKD_HTTP_ADDR"):
        server(busy_port).start()
    http = server(busy_port, any_free_port=True)
    http.start()
    try:
        assert http.address[1] not in (busy_port, 0)
    finally:
        http.stop()


def test_dev_run_on_a_busy_port_prints_the_one_it_took(tmp_path: Path, busy_port: int) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CHUNKD_", "AWS_"))}
    env.update(CHUNKD_HTTP_ADDR=f"127.0.0.1:{busy_port}", CHUNKD_LOG_FORMAT="text")
    daemon = DaemonProcess(env, tmp_path / "dev.log", args=("--dev",), cwd=tmp_path).start()
    try:
        wait_for(lambda: daemon.logged("watching") or not daemon.running, timeout=60, what="the daemon watching")
        assert daemon.running, daemon.log_path.read_text()
        log = daemon.log_path.read_text()
        assert log.count("HTTP endpoint on") == 1, log
        (port,) = re.findall(r"HTTP endpoint on http://127\.0\.0\.1:(\d+)", log)
        assert int(port) != busy_port and str(busy_port) in log  # the busy one is named too
        assert daemon.terminate() == 0
    finally:
        daemon.stop()
