"""EventFeed: fan-out to bounded queues that never block the publisher; the poster-frame cache."""

from __future__ import annotations

import time
from typing import Any

from chunkd.errors import TransferError
from chunkd.model.states import StreamRecord, StreamState
from chunkd.observe.live import EventFeed
from chunkd.observe.thumbnails import MAX_THUMBNAIL_BYTES, Thumbnails


def event(n: int) -> dict[str, Any]:
    return {"event": "completed", "stream_id": f"s{n}", "url": "https://presigned"}


def test_a_slow_subscriber_is_cut_off_and_never_blocks_publish() -> None:
    feed = EventFeed(queue_size=3)
    slow, fast = feed.subscribe(), feed.subscribe()
    started = time.monotonic()
    for n in range(4):
        feed.publish(event(n))
        assert fast.get(timeout=1) is not None
    assert time.monotonic() - started < 1.0
    assert slow.closed  # the fourth event found its queue full
    feed.publish(event(5))
    assert fast.get(timeout=1) is not None


def test_close_wakes_a_waiting_reader_and_ids_are_unique() -> None:
    feed = EventFeed()
    subscription = feed.subscribe()
    feed.publish(event(1))
    feed.publish(event(1))
    first, second = subscription.get(timeout=1), subscription.get(timeout=1)
    assert first is not None and second is not None and first.id != second.id
    assert "presigned" not in first.data and b"event: completed\n" in first.frame()
    feed.close()
    started = time.monotonic()
    assert subscription.get(timeout=10) is None and subscription.closed
    assert time.monotonic() - started < 1.0


def test_an_unknown_last_event_id_replays_nothing() -> None:
    feed = EventFeed(keep=2)
    feed.publish(event(1))
    subscription = feed.subscribe("elsewhere-1")
    assert subscription.get(timeout=0.01) is None and not subscription.closed


class Store:
    def __init__(self, *records: StreamRecord) -> None:
        self.records = {record.id: record for record in records}

    def get_stream(self, stream_id: str) -> StreamRecord | None:
        return self.records.get(stream_id)


def record(stream_id: str, state: StreamState = StreamState.COMPLETED) -> StreamRecord:
    return StreamRecord(id=stream_id, relpath=f"{stream_id}.mp4", source_path="/x", bucket="b",
                        key=f"v/{stream_id}.mp4", schedule={}, state=state, thumbnail_key=f"v/{stream_id}.mp4.thumb.jpg")


class Bucket:
    def __init__(self, objects: dict[str, bytes]) -> None:
        self.objects = objects
        self.gets: list[str] = []
        self.error: Exception | None = None

    def fetch(self, bucket: str, key: str, limit: int) -> bytes | None:
        self.gets.append(key)
        if self.error is not None:
            raise self.error
        return self.objects.get(key)


def test_thumbnails_are_fetched_once_and_missing_ones_are_asked_again_later() -> None:
    now = [0.0]
    bucket = Bucket({"v/a.mp4.thumb.jpg": b"A" * 10})
    store = Store(record("a"), record("b"), record("up", StreamState.UPLOADING))
    thumbnails = Thumbnails(store, bucket.fetch, miss_seconds=5, clock=lambda: now[0])  # type: ignore[arg-type]
    assert thumbnails.get("a") == b"A" * 10 and thumbnails.get("a") == b"A" * 10
    assert thumbnails.get("b") is None and thumbnails.get("b") is None
    assert bucket.gets == ["v/a.mp4.thumb.jpg", "v/b.mp4.thumb.jpg"]
    assert thumbnails.get("up") is None and thumbnails.get("nope") is None and thumbnails.get("../x") is None
    bucket.objects["v/b.mp4.thumb.jpg"] = b"B"
    now[0] = 6.0
    assert thumbnails.get("b") == b"B"


def test_thumbnail_cache_is_bounded_and_errors_are_not_remembered() -> None:
    bucket = Bucket({f"v/{n}.mp4.thumb.jpg": bytes(40) for n in "abc"} | {"v/big.mp4.thumb.jpg": bytes(MAX_THUMBNAIL_BYTES + 1)})
    store = Store(*(record(n) for n in ("a", "b", "c", "big")))
    thumbnails = Thumbnails(store, bucket.fetch, budget=100)  # type: ignore[arg-type]
    for name in "abca":  # a, b fit; c pushes out a (least recently used), so a is fetched again
        thumbnails.get(name)
    assert bucket.gets.count("v/a.mp4.thumb.jpg") == 2
    assert thumbnails.get("big") is None
    bucket.error = TransferError("GetObject: connection refused", key="k")
    store.records["d"] = record("d")
    assert thumbnails.get("d") is None
    bucket.error = None
    bucket.objects["v/d.mp4.thumb.jpg"] = b"D"
    assert thumbnails.get("d") == b"D"
