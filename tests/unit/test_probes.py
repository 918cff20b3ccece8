"""/readyz answers at once from background checks: a frozen S3 server (SIGSTOP: connections hang,
nothing is refused) makes it say not ready within seconds instead of holding the probe for minutes.
A client that hangs up is not an error: no traceback in the log."""

from __future__ import annotations

import logging
import threading
import time
from types import SimpleNamespace
from typing import Any

import pytest

from chunkd.observe import http
from chunkd.observe.probes import Probes
from chunkd.store.health import StoreHealth
from tests.support.daemon import wait_for


class FrozenBucket:
    def __init__(self) -> None:
        self.thaw = threading.Event()

    def with_policy(self, policy: Any) -> FrozenBucket:
        return self

    def head_bucket(self, bucket: str) -> None:
        self.thaw.wait()


def timed_ready(probes: Probes) -> http.Check:
    started = time.monotonic()
    check = probes.ready()
    assert time.monotonic() - started < 1.0, "/readyz must answer within a second"
    return check


def test_readyz_answers_at_once_and_fails_while_s3_hangs() -> None:
    bucket = FrozenBucket()
    engine: Any = SimpleNamespace(
        uploader=bucket, store=SimpleNamespace(ping=lambda: None), settings=SimpleNamespace(bucket="chunkd"),
        stop=threading.Event(), store_health=StoreHealth(),
    )
    probes = Probes(engine, lambda: True, s3_cache_seconds=0.2, store_every=0.2, check_timeout=0.5)
    probes.start()
    try:
        check = wait_for(lambda: "s3" in (c := timed_ready(probes)).ages and c,
                         timeout=5, interval=0.05, what="s3 reported not ready")
        assert not check.ok and "no answer within" in check.detail["s3"]
        assert check.detail["store"] is True
        bucket.thaw.set()
        wait_for(lambda: timed_ready(probes).ok, timeout=5, interval=0.05, what="ready again")
    finally:
        bucket.thaw.set()
        probes.stop()


@pytest.mark.parametrize("error", [BrokenPipeError, ConnectionResetError])
def test_a_client_hanging_up_is_not_an_error(error: type[OSError], capsys: pytest.CaptureFixture[str],
                                             caplog: pytest.LogCaptureFixture) -> None:
    server = http._Server(("127.0.0.1", 0), http._Handler)
    try:
        with caplog.at_level(logging.DEBUG, logger="chunkd.http"):
            try:
                raise error("client went away")
            except OSError:
                server.handle_error(None, ("127.0.0.1", 5555))
    finally:
        server.server_close()
    assert "Traceback" not in capsys.readouterr().err
    assert [r.levelno for r in caplog.records if r.name == "chunkd.http"] == [logging.DEBUG]
