"""EventSink: the event log in the store, and webhook deliveries to a real local HTTP receiver."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from chunkd.model.states import StreamRecord, StreamState
from chunkd.observe.events import EventSink, WebhookTarget, build_event, sign
from chunkd.store.sqlite import SqliteStore

SECRET = "s3cr3t-webhook-key"


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    """A local HTTP server answering POSTs with the queued status codes (then 200), recording each."""

    statuses: list[int] = field(default_factory=list)
    delay: float = 0.0
    requests: list[Received] = field(default_factory=list)
    url: str = ""

    def handler(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                receiver.requests.append(Received(self.path, dict(self.headers.items()), body))
                time.sleep(receiver.delay)
                status = receiver.statuses.pop(0) if receiver.statuses else 200
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                pass

        return Handler


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    state = Receiver()
    server = ThreadingHTTPServer(("127.0.0.1", 0), state.handler())
    state.url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield state
    server.shutdown()
    server.server_close()
    thread.join(5)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteStore]:
    db = SqliteStore(str(tmp_path / "state.db"))
    yield db
    db.close()


def record(**overrides: object) -> StreamRecord:
    fields: dict[str, object] = {
        "id": "s1", "relpath": "cam/ünï.mp4", "source_path": "/in/cam/ünï.mp4", "bucket": "videos",
        "key": "raw/cam/ünï.mp4", "schedule": {}, "state": StreamState.COMPLETED, "size": 1234,
        "sha256": "ab" * 32, "first_byte_at": 100.0, "completed_at": 110.0,
    }
    fields.update(overrides)
    return StreamRecord(**fields)  # type: ignore[arg-type]


class Sleeps:
    def __init__(self) -> None:
        self.calls: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# -- webhooks --------------------------------------------------------------------------------


def test_post_carries_the_event_and_a_correct_signature(store: SqliteStore, receiver: Receiver) -> None:
    sink = EventSink(store, webhook_urls=[receiver.url], secret=SECRET, clock=lambda: 1_700_000_000.5)
    sink.emit("completed", record())
    sink.close(timeout=10)

    (got,) = receiver.requests
    assert got.path == "/hook"
    assert got.headers["Content-Type"] == "application/json"
    assert got.headers["X-Chunkd-Event"] == "completed"
    uuid.UUID(got.headers["X-Chunkd-Delivery"])
    expected = "sha256=" + hmac.new(SECRET.encode(), got.body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(got.headers["X-Chunkd-Signature"], expected)
    event = json.loads(got.body)
    assert event == build_event("completed", record(), ts=1_700_000_000.5)
    assert {"event", "ts", "stream_id", "relpath", "key", "bucket", "size", "sha256", "error"} <= event.keys()
    assert (event["relpath"], event["size"], event["error"]) == ("cam/ünï.mp4", 1234, None)


def test_no_signature_header_without_a_secret(store: SqliteStore, receiver: Receiver) -> None:
    sink = EventSink(store, webhook_urls=[receiver.url])
    sink.emit("failed", record(state=StreamState.FAILED, last_error="boom"))
    sink.close(timeout=10)
    (got,) = receiver.requests
    assert "X-Chunkd-Signature" not in got.headers
    assert json.loads(got.body)["error"] == "boom"


def test_503_twice_then_200_takes_three_attempts_with_one_delivery_id(store: SqliteStore, receiver: Receiver) -> None:
    receiver.statuses = [503, 503]
    sleeps = Sleeps()
    sink = EventSink(store, webhook_urls=[receiver.url], secret=SECRET, sleep=sleeps)
    sink.emit("completed", record())
    sink.close(timeout=10)
    assert len(receiver.requests) == 3
    assert len(sleeps.calls) == 2
    assert len({r.headers["X-Chunkd-Delivery"] for r in receiver.requests}) == 1
    assert len({r.body for r in receiver.requests}) == 1


def test_429_is_retried(store: SqliteStore, receiver: Receiver) -> None:
    receiver.statuses = [429]
    sink = EventSink(store, webhook_urls=[receiver.url], sleep=Sleeps())
    sink.emit("completed", record())
    sink.close(timeout=10)
    assert len(receiver.requests) == 2


def test_400_is_not_retried(store: SqliteStore, receiver: Receiver, caplog: pytest.LogCaptureFixture) -> None:
    receiver.statuses = [400, 400, 400]
    sleeps = Sleeps()
    sink = EventSink(store, webhook_urls=[receiver.url], sleep=sleeps)
    with caplog.at_level(logging.WARNING, logger="chunkd.events"):
        sink.emit("completed", record())
        sink.close(timeout=10)
    assert len(receiver.requests) == 1
    assert sleeps.calls == []
    assert "HTTP 400" in caplog.text


def test_500_gives_up_after_five_attempts(store: SqliteStore, receiver: Receiver) -> None:
    receiver.statuses = [500] * 10
    sleeps = Sleeps()
    sink = EventSink(store, webhook_urls=[receiver.url], sleep=sleeps)
    sink.emit("completed", record())
    sink.close(timeout=10)
    assert len(receiver.requests) == 5
    assert len(sleeps.calls) == 4
    assert all(0 <= s <= 30 for s in sleeps.calls)


def test_connection_refused_is_retried_and_userinfo_never_logged(
    store: SqliteStore, caplog: pytest.LogCaptureFixture
) -> None:
    sleeps = Sleeps()
    url = f"http://hook-user:hunter2@127.0.0.1:{closed_port()}/hook?token=tok3n"
    sink = EventSink(store, webhook_urls=[url], secret=SECRET, sleep=sleeps)
    with caplog.at_level(logging.DEBUG):
        sink.emit("completed", record())
        sink.close(timeout=10)
    assert len(sleeps.calls) == 4
    assert "not delivered" in caplog.text
    for secret in ("hunter2", "hook-user", "tok3n", SECRET):
        assert secret not in caplog.text


def test_userinfo_becomes_basic_auth(store: SqliteStore, receiver: Receiver) -> None:
    url = receiver.url.replace("http://", "http://alice:p%40ss@")
    sink = EventSink(store, webhook_urls=[url])
    sink.emit("quarantined", record(state=StreamState.QUARANTINED))
    sink.close(timeout=10)
    (got,) = receiver.requests
    assert got.headers["Authorization"] == "Basic YWxpY2U6cEBzcw=="  # alice:p@ss
    assert got.headers["X-Chunkd-Event"] == "quarantined"


def test_every_url_gets_the_event(store: SqliteStore, receiver: Receiver) -> None:
    sink = EventSink(store, webhook_urls=[receiver.url, receiver.url + "2"])
    sink.emit("completed", record())
    sink.close(timeout=10)
    assert sorted(r.path for r in receiver.requests) == ["/hook", "/hook2"]


def test_emit_never_blocks_on_a_slow_receiver(store: SqliteStore, receiver: Receiver) -> None:
    receiver.delay = 0.5
    sink = EventSink(store, webhook_urls=[receiver.url], queue_size=2)
    started = time.monotonic()
    for n in range(20):
        sink.emit("completed", record(id=f"s{n}"))
    assert time.monotonic() - started < 0.4
    sink.close(timeout=10)
    assert 1 <= len(receiver.requests) <= 3  # the rest were dropped (and logged), not waited for
    assert len(store.list_events()) == 20  # the log in the store has every one


def test_close_gives_up_after_its_timeout(store: SqliteStore, receiver: Receiver) -> None:
    receiver.statuses = [503] * 100
    sink = EventSink(store, webhook_urls=[receiver.url], attempts=100, sleep=lambda s: time.sleep(0.05))
    sink.emit("completed", record())
    started = time.monotonic()
    sink.close(timeout=0.5)
    assert time.monotonic() - started < 3
    assert sink._thread is not None and not sink._thread.is_alive()


@pytest.mark.parametrize("url", ["ftp://example.com/x", "file:///etc/passwd", "example.com/hook", "http:///nohost"])
def test_only_http_and_https_urls(store: SqliteStore, url: str) -> None:
    with pytest.raises(ValueError, match="http:// or https://"):
        EventSink(store, webhook_urls=[url])


def test_invalid_url_error_hides_userinfo() -> None:
    with pytest.raises(ValueError) as info:
        WebhookTarget.parse("ftp://bob:hunter2@example.com/")
    assert "hunter2" not in str(info.value)


def test_sign_matches_hmac_sha256() -> None:
    assert sign(b"{}", "k") == "sha256=" + hmac.new(b"k", b"{}", hashlib.sha256).hexdigest()


def test_unknown_kind_is_a_programming_error(store: SqliteStore) -> None:
    with pytest.raises(ValueError, match="unknown event kind"):
        EventSink(store).emit("uploaded", record())


# -- the event log ---------------------------------------------------------------------------


def test_emit_appends_to_the_store(store: SqliteStore) -> None:
    times = iter([10.0, 20.0, 30.0])
    sink = EventSink(store, maxlen=2, clock=lambda: next(times))
    sink.emit("completed", record(id="a"))
    sink.emit("failed", record(id="b", state=StreamState.FAILED, last_error="redis://:pw@h/0 down"))
    sink.emit("quarantined", record(id="c", state=StreamState.QUARANTINED))
    sink.close()
    events = store.list_events()
    kept = [(e["event"], e["stream_id"], e["ts"]) for e in events]
    assert kept == [("failed", "b", 20.0), ("quarantined", "c", 30.0)]
    assert events[0]["error"] == "redis://***@h/0 down"
    assert [e["stream_id"] for e in store.list_events(since=25.0)] == ["c"]


def test_emit_never_raises_when_the_store_is_down(
    tmp_path: Path, receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    broken = SqliteStore(str(tmp_path / "state.db"))
    broken.close()
    sink = EventSink(broken, webhook_urls=[receiver.url])
    with caplog.at_level(logging.ERROR, logger="chunkd.events"):
        sink.emit("completed", record())
    sink.close(timeout=10)
    assert "could not record completed event" in caplog.text
    assert len(receiver.requests) == 1  # the webhook still hears about it


def test_completed_events_carry_the_presigned_url_and_logs_never_do(
    store: SqliteStore, receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    url = "https://videos.s3.amazonaws.com/raw/cam/x.mp4?X-Amz-Signature=secret"
    sink = EventSink(store, webhook_urls=[receiver.url], presign=lambda rec: url)
    with caplog.at_level(logging.DEBUG):
        sink.emit("completed", record())
        sink.emit("failed", record(state=StreamState.FAILED, last_error="boom"))
        sink.close(timeout=10)
    bodies = {json.loads(got.body)["event"]: json.loads(got.body) for got in receiver.requests}
    assert bodies["completed"]["url"] == url
    assert "url" not in bodies["failed"]
    assert [event.get("url") for event in store.list_events()].count(url) == 1
    assert "X-Amz-Signature" not in caplog.text


def test_a_url_that_cannot_be_signed_leaves_the_event_without_one(
    store: SqliteStore, receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    def refuse(rec: StreamRecord) -> str:
        raise RuntimeError("X-Amz-Signature=leaked")

    sink = EventSink(store, webhook_urls=[receiver.url], presign=refuse)
    sink.emit("completed", record())
    sink.close(timeout=10)
    (got,) = receiver.requests
    assert json.loads(got.body)["url"] is None
    assert "could not presign" in caplog.text and "leaked" not in caplog.text


def test_a_completed_event_names_the_poster_frame() -> None:
    assert build_event("completed", record(thumbnail_key="raw/cam/ünï.mp4.thumb.jpg"), ts=1.0)["thumbnail_key"] == (
        "raw/cam/ünï.mp4.thumb.jpg"
    )
    assert build_event("quarantined", record(state=StreamState.QUARANTINED), ts=1.0)["thumbnail_key"] is None
