"""The status page's routes on a real HttpServer: / (the page), /events (Server-Sent Events from an
EventFeed), /thumbnail/<id>, and the token in the query a browser has to use."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from chunkd.observe.http import Check, HttpServer
from chunkd.observe.live import EventFeed
from chunkd.observe.metrics import Metrics
from tests.support.http_client import Response, get
from tests.support.sse import EventStream

TOKEN = "pa9e-t0ken"
JPEG = b"\xff\xd8\xff\xe0fake-jpeg\xff\xd9"
ServerFactory = Callable[..., HttpServer]


@pytest.fixture
def make_server() -> Iterator[ServerFactory]:
    started: list[HttpServer] = []

    def make(*, token: str | None = None, feed: EventFeed | None = None, **options: Any) -> HttpServer:
        options.setdefault("status", lambda limit=None: [{"id": "s1", "state": "UPLOADING"}])
        server = HttpServer(
            "127.0.0.1:0", token=token, metrics=Metrics(), health=lambda: Check(True, {}),
            ready=lambda: Check(True, {}),
            feed=feed or EventFeed(), thumbnails=lambda stream_id: JPEG if stream_id == "done1" else None,
            poll_interval=0.01, **options,
        )
        server.start()
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop()


def open_events(server: HttpServer, path: str = "/events", headers: dict[str, str] | None = None) -> EventStream:
    return EventStream(*server.address, path, headers)


def completed(stream_id: str = "s1", **extra: Any) -> dict[str, Any]:
    return {"event": "completed", "stream_id": stream_id, "state": "COMPLETED", "size": 10, **extra}


def test_the_page_is_one_self_contained_html_file(make_server: ServerFactory) -> None:
    reply = get(make_server(), "/")
    assert reply.status == 200
    assert reply.headers["Content-Type"] == "text/html; charset=utf-8"
    page = reply.body.decode()
    assert "<script>" in page and "<style>" in page and "EventSource" in page
    assert "http://" not in page and "https://" not in page  # nothing from elsewhere: works offline
    assert "default-src 'none'" in reply.headers["Content-Security-Policy"]
    assert reply.headers["Referrer-Policy"] == "no-referrer"


@pytest.mark.parametrize("path", ["/", "/status", "/metrics", "/thumbnail/done1", "/events"])
def test_the_token_guards_the_page_routes_in_the_header_or_the_query(make_server: ServerFactory, path: str) -> None:
    server = make_server(token=TOKEN)
    assert get(server, path).status == 401
    assert get(server, path + "?token=wrong").status == 401
    assert get(server, path + "?token=").status == 401
    assert get(server, path, token="wrong").status == 401
    if path != "/events":  # a granted /events stays open; see the stream tests
        assert get(server, path, token=TOKEN).status == 200
        assert get(server, f"{path}?token={TOKEN}").status == 200


def test_the_query_token_never_reaches_the_log(make_server: ServerFactory, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="chunkd.http"):
        server = make_server(token=TOKEN)
        get(server, f"/status?token={TOKEN}")
        get(server, f"/?x=1&token={TOKEN}")
        get(server, f"/nope?token={TOKEN}")
    assert any("GET /status?" in record.getMessage() for record in caplog.records)
    assert all(TOKEN not in record.getMessage() for record in caplog.records)


def test_thumbnail_is_a_jpeg_or_a_404(make_server: ServerFactory) -> None:
    server = make_server()
    reply = get(server, "/thumbnail/done1")
    assert reply.status == 200 and reply.body == JPEG
    assert reply.headers["Content-Type"] == "image/jpeg"
    assert get(server, "/thumbnail/other").status == 404
    assert get(server, "/thumbnail/").status == 404


def test_events_stream_what_the_feed_publishes_without_presigned_urls(make_server: ServerFactory) -> None:
    feed = EventFeed()
    server = make_server(token=TOKEN, feed=feed)
    stream = open_events(server, f"/events?token={TOKEN}")
    try:
        assert stream.response.status == 200
        assert stream.response.getheader("Content-Type") == "text/event-stream; charset=utf-8"
        assert stream.next_frame() == ["retry: 2000", ": connected"]
        feed.publish(completed(url="https://bucket.example/k?X-Amz-Signature=secret"))
        event = stream.next_event()
        assert event["event"] == "completed"
        assert '"stream_id":"s1"' in event["data"] and "X-Amz-Signature" not in event["data"]
    finally:
        stream.close()


def test_idle_events_stream_gets_heartbeats(make_server: ServerFactory) -> None:
    stream = open_events(make_server(heartbeat=0.05))
    try:
        stream.next_frame()
        assert stream.next_frame() == [": keep-alive"]
    finally:
        stream.close()


def test_a_reconnecting_client_gets_what_it_missed(make_server: ServerFactory) -> None:
    feed = EventFeed()
    server = make_server(feed=feed)
    feed.publish(completed("a"))
    feed.publish(completed("b"))
    feed.publish(completed("c"))
    first = open_events(server)
    try:
        first.next_frame()
        feed.publish(completed("d"))
        seen = first.next_event()
    finally:
        first.close()
    assert '"stream_id":"d"' in seen["data"]
    feed.publish(completed("e"))
    again = open_events(server, headers={"Last-Event-ID": seen["id"]})
    try:
        again.next_frame()
        assert '"stream_id":"e"' in again.next_event()["data"]
    finally:
        again.close()


def test_events_clients_are_capped(make_server: ServerFactory) -> None:
    server = make_server(max_event_clients=2)
    streams = [open_events(server) for _ in range(2)]
    try:
        for stream in streams:
            stream.next_frame()  # both admitted
        refused: Response = get(server, "/events")
        assert refused.status == 503 and refused.headers["Retry-After"]
    finally:
        for stream in streams:
            stream.close()


def test_stop_ends_open_event_streams_at_once() -> None:
    server = HttpServer(
        "127.0.0.1:0", token=None, metrics=Metrics(), health=lambda: Check(True, {}),
        ready=lambda: Check(True, {}), status=list, feed=EventFeed(), poll_interval=0.01, heartbeat=60.0,
    )
    server.start()
    stream = open_events(server)
    stream.next_frame()
    ended = threading.Event()

    def read_to_the_end() -> None:
        try:
            while True:
                stream.next_frame()
        except (EOFError, OSError):
            ended.set()

    reader = threading.Thread(target=read_to_the_end, daemon=True)
    reader.start()
    started = time.monotonic()
    server.stop()
    assert time.monotonic() - started < 2.0, "stop() waited on an open /events stream"
    assert ended.wait(5), "the /events stream stayed open after stop()"
    stream.close()


def test_browser_test_skips_without_chromium_unless_required(monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.support import browser

    monkeypatch.setattr(browser.shutil, "which", lambda name: None)
    monkeypatch.delenv("CHUNKD_REQUIRE_BROWSER", raising=False)
    with pytest.raises(pytest.skip.Exception, match="chromium, chromedriver not installed"):
        browser.headless_chromium()
    monkeypatch.setenv("CHUNKD_REQUIRE_BROWSER", "1")
    with pytest.raises(pytest.fail.Exception, match="CHUNKD_REQUIRE_BROWSER is set"):
        browser.headless_chromium()


def test_status_takes_a_limit_and_refuses_a_bad_one(make_server: ServerFactory) -> None:
    asked: list[int | None] = []

    def status(*, limit: int | None = None) -> list[dict[str, Any]]:
        asked.append(limit)
        return [{"id": "s1"}]

    server = make_server(status=status)
    assert get(server, "/status?limit=50").status == 200 and asked == [50]
    assert get(server, "/status").status == 200 and asked == [50, None]
    for bad in ("0", "-3", "x", "1.5"):
        assert get(server, f"/status?limit={bad}").status == 400
    assert asked == [50, None]
