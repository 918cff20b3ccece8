"""One contract for every CheckpointStore backend: SQLite on a temp file, Redis on a real server."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from dataclasses import replace
from pathlib import Path

import pytest

from chunkd.errors import ConfigError, StoreError
from chunkd.model.states import PartRecord, StreamRecord, StreamState
from chunkd.store import CheckpointStore, open_store
from chunkd.store.health import ResetWatch
from chunkd.store.redis import RedisStore
from chunkd.store.sqlite import SqliteStore
from tests.support.sizes import MiB
from tests.support.stores import Opener


def make_stream(stream_id: str = "s1", **overrides: object) -> StreamRecord:
    fields: dict[str, object] = {
        "id": stream_id,
        "relpath": "cam/day 1/clip.mp4",
        "source_path": "/in/cam/day 1/clip.mp4",
        "bucket": "videos",
        "key": "cam/day 1/clip.mp4",
        "schedule": {"part_size": 8 * MiB, "sizes": [5, 8.5], "tag": "ünï", "opt": None, "nested": {"a": 1}},
        "discovered_at": 1_712_345_678.123456,
        "updated_at": 1_712_345_679.654321,
    }
    fields.update(overrides)
    return StreamRecord(**fields)  # type: ignore[arg-type]


def make_part(number: int, **overrides: object) -> PartRecord:
    fields: dict[str, object] = {
        "number": number,
        "offset": (number - 1) * 8 * MiB,
        "size": 8 * MiB,
        "etag": f'"etag-{number}"',
        "sha256": f"{number:064x}",
    }
    fields.update(overrides)
    return PartRecord(**fields)  # type: ignore[arg-type]


# streams


def test_roundtrip_keeps_every_field(store: CheckpointStore) -> None:
    record = make_stream(
        state=StreamState.UPLOADING,
        device=2049,
        inode=1234567,
        size=987_654_321,
        mtime=1_712_345_000.000001,
        upload_id="upl-xyz",
        sha256="ab" * 32,
        last_error="boom: 'quoted' \"double\"",
        first_byte_at=1_712_345_680.5,
        completed_at=1_712_345_690.25,
    )
    store.save_stream(record)
    loaded = store.get_stream("s1")
    assert loaded == record
    assert loaded is not None and loaded.state is StreamState.UPLOADING


def test_roundtrip_keeps_none_and_defaults(store: CheckpointStore) -> None:
    record = make_stream(schedule={})
    store.save_stream(record)
    loaded = store.get_stream("s1")
    assert loaded == record
    assert loaded is not None
    assert (loaded.upload_id, loaded.sha256, loaded.completed_at) == (None, None, None)
    assert loaded.state is StreamState.PENDING


def test_save_replaces_the_record(store: CheckpointStore) -> None:
    record = make_stream()
    store.save_stream(record)
    record.move_to(StreamState.UPLOADING)
    record.upload_id = "upl-2"
    store.save_stream(record)
    assert store.get_stream("s1") == record
    assert [r.id for r in store.list_streams()] == ["s1"]


def test_unknown_stream_is_none(store: CheckpointStore) -> None:
    store.save_stream(make_stream())
    assert store.get_stream("nope") is None
    assert store.find_by_relpath("other.mp4") is None


def test_find_by_relpath_returns_the_newest_stream(store: CheckpointStore) -> None:
    old = make_stream("old", discovered_at=100.0, state=StreamState.FAILED)
    new = make_stream("new", discovered_at=200.0)
    elsewhere = make_stream("elsewhere", relpath="b.mp4", discovered_at=300.0)
    for record in (new, old, elsewhere):  # saved out of order: the last save must not win
        store.save_stream(record)
    assert store.find_by_relpath(old.relpath) == new
    # Retrying the old stream saves it again; the path still belongs to the file that replaced it.
    old.move_to(StreamState.PENDING)
    store.save_stream(old)
    assert store.find_by_relpath(old.relpath) == new
    assert store.find_by_relpath("b.mp4") == elsewhere


def test_find_by_key_returns_every_stream_for_the_object_newest_first(store: CheckpointStore) -> None:
    first = make_stream("first", relpath="a/x.mp4", key="x.mp4", discovered_at=100.0)
    second = make_stream("second", relpath="b/x.mp4", key="x.mp4", discovered_at=200.0)
    other_bucket = make_stream("ob", relpath="c/x.mp4", bucket="other", key="x.mp4", discovered_at=300.0)
    other_key = make_stream("ok", relpath="d/y.mp4", key="y.mp4", discovered_at=400.0)
    for record in (second, first, other_bucket, other_key):
        store.save_stream(record)
    assert [r.id for r in store.find_by_key("videos", "x.mp4")] == ["second", "first"]
    assert [r.id for r in store.find_by_key("other", "x.mp4")] == ["ob"]
    assert store.find_by_key("videos", "nothing.mp4") == []
    store.delete_stream("second")
    assert [r.id for r in store.find_by_key("videos", "x.mp4")] == ["first"]


def test_list_streams_oldest_discovery_first(store: CheckpointStore) -> None:
    for stream_id, at in [("c", 300.0), ("d", 100.0), ("a", 100.0), ("b", 200.0)]:
        store.save_stream(make_stream(stream_id, relpath=f"{stream_id}.mp4", discovered_at=at))
    # Ties on discovered_at fall back to the id, so every backend gives the same order.
    assert [r.id for r in store.list_streams()] == ["a", "d", "b", "c"]


def test_list_streams_filters_by_state(store: CheckpointStore) -> None:
    states = {"p1": StreamState.PENDING, "u1": StreamState.UPLOADING, "f1": StreamState.FAILED}
    for at, (stream_id, state) in enumerate(states.items()):
        store.save_stream(make_stream(stream_id, relpath=f"{stream_id}.mp4", state=state, discovered_at=float(at)))
    assert [r.id for r in store.list_streams([StreamState.PENDING])] == ["p1"]
    assert [r.id for r in store.list_streams({StreamState.FAILED, StreamState.PENDING})] == ["p1", "f1"]
    assert store.list_streams([StreamState.COMPLETED]) == []
    assert store.list_streams([]) == []
    assert [r.id for r in store.list_streams(None)] == ["p1", "u1", "f1"]


def test_newest_streams_pages_newest_discovery_first(store: CheckpointStore) -> None:
    order = [("a", 100.0, StreamState.COMPLETED), ("b", 300.0, StreamState.FAILED), ("c", 200.0, StreamState.COMPLETED),
             ("d", 200.0, StreamState.UPLOADING), ("e", 400.0, StreamState.COMPLETED)]
    for stream_id, discovered, state in order:
        store.save_stream(make_stream(stream_id, relpath=f"{stream_id}.mp4", discovered_at=discovered, state=state))
    assert [r.id for r in store.newest_streams(limit=2)] == ["e", "b"]
    assert [r.id for r in store.newest_streams(limit=2, offset=2)] == ["d", "c"]  # a tie: by id, as list_streams
    assert [r.id for r in store.newest_streams(limit=10, offset=4)] == ["a"]
    assert store.newest_streams(limit=2, offset=5) == []
    finished = [StreamState.COMPLETED, StreamState.FAILED]
    assert [r.id for r in store.newest_streams(finished, limit=3)] == ["e", "b", "c"]
    assert [r.id for r in store.newest_streams(finished, limit=3, offset=3)] == ["a"]
    assert [r.id for r in store.newest_streams([StreamState.UPLOADING], limit=5)] == ["d"]
    assert store.newest_streams([], limit=5) == [] and store.newest_streams(limit=0) == []
    assert store.count_streams() == 5 and store.count_streams(finished) == 4
    assert store.count_streams([StreamState.PENDING]) == 0 and store.count_streams([]) == 0


def test_newest_streams_reads_only_the_page(store: CheckpointStore, monkeypatch: pytest.MonkeyPatch) -> None:
    for n in range(30):
        store.save_stream(make_stream(f"s{n:02d}", relpath=f"{n}.mp4", discovered_at=1000.0 + n))
    loaded: list[str] = []
    original = StreamRecord.from_dict

    def counted(data: dict[str, object]) -> StreamRecord:
        loaded.append(str(data["id"]))
        return original(data)

    monkeypatch.setattr(StreamRecord, "from_dict", staticmethod(counted))
    assert [r.id for r in store.newest_streams(limit=3, offset=1)] == ["s28", "s27", "s26"]
    assert store.count_streams() == 30
    assert sorted(loaded) == ["s26", "s27", "s28"]


def test_state_change_moves_stream_between_filters(store: CheckpointStore) -> None:
    record = make_stream()
    store.save_stream(record)
    record.move_to(StreamState.UPLOADING)
    store.save_stream(record)
    assert store.list_streams([StreamState.PENDING]) == []
    assert store.list_streams([StreamState.UPLOADING]) == [record]


# parts


def test_parts_come_back_ordered_by_number(store: CheckpointStore) -> None:
    for number in (10, 2, 1, 3):  # 10 catches a lexicographic sort
        store.record_part("s1", make_part(number))
    assert store.list_parts("s1") == [make_part(n) for n in (1, 2, 3, 10)]


def test_record_part_replaces_same_number(store: CheckpointStore) -> None:
    store.record_part("s1", make_part(1))
    store.record_part("s1", make_part(2))
    store.record_part("s1", make_part(2, etag='"second"', size=123))
    assert store.list_parts("s1") == [make_part(1), make_part(2, etag='"second"', size=123)]


def test_drop_some_parts(store: CheckpointStore) -> None:
    for number in range(1, 6):
        store.record_part("s1", make_part(number))
    store.drop_parts("s1", [1, 3, 99])  # 99 was never recorded: not an error
    assert [p.number for p in store.list_parts("s1")] == [2, 4, 5]
    store.drop_parts("s1", [])
    assert [p.number for p in store.list_parts("s1")] == [2, 4, 5]


def test_drop_all_parts(store: CheckpointStore) -> None:
    for number in range(1, 4):
        store.record_part("s1", make_part(number))
    store.drop_parts("s1")
    assert store.list_parts("s1") == []
    store.record_part("s1", make_part(7))  # the stream can start over
    assert store.list_parts("s1") == [make_part(7)]


def test_parts_do_not_leak_between_streams(store: CheckpointStore) -> None:
    store.record_part("a", make_part(1))
    store.record_part("a", make_part(2))
    store.record_part("b", make_part(1, etag='"b1"'))
    store.drop_parts("a", [1])
    assert store.list_parts("a") == [make_part(2)]
    assert store.list_parts("b") == [make_part(1, etag='"b1"')]
    store.drop_parts("b")
    assert store.list_parts("a") == [make_part(2)]
    assert store.list_parts("unknown") == []


def test_concurrent_record_part_loses_nothing(store: CheckpointStore) -> None:
    threads, per_thread = 8, 50
    start = threading.Barrier(threads)

    def worker(index: int) -> None:
        start.wait()
        for i in range(per_thread):
            number = index * per_thread + i + 1
            store.record_part("s1", make_part(number))
            store.record_part(f"own-{index}", make_part(i + 1))

    with ThreadPoolExecutor(threads) as pool:
        for future in [pool.submit(worker, i) for i in range(threads)]:
            future.result()
    assert store.list_parts("s1") == [make_part(n) for n in range(1, threads * per_thread + 1)]
    for index in range(threads):
        assert len(store.list_parts(f"own-{index}")) == per_thread


# durability and health


def test_reopened_store_sees_everything(open_backend: Opener) -> None:
    first = open_backend()
    record = make_stream(state=StreamState.UPLOADING, upload_id="upl-1")
    first.save_stream(record)
    first.save_stream(make_stream("s2", relpath="b.mp4", discovered_at=2e9))
    first.record_part("s1", make_part(1))
    first.record_part("s1", make_part(2))
    first.drop_parts("s1", [2])
    first.close()

    second = open_backend()
    assert second.get_stream("s1") == record
    assert second.find_by_relpath(record.relpath) == record
    assert [r.id for r in second.list_streams([StreamState.UPLOADING])] == ["s1"]
    assert [r.id for r in second.list_streams()] == ["s1", "s2"]
    assert second.list_parts("s1") == [make_part(1)]


def test_content_index_finds_forgets_and_replaces(store: CheckpointStore) -> None:
    digest = "ab" * 32
    assert store.find_by_content(digest) is None
    store.save_stream(make_stream("s1"))
    store.save_stream(make_stream("s2", relpath="other.mp4"))
    store.index_content(digest, "s1")
    found = store.find_by_content(digest)
    assert found is not None and found.id == "s1"
    store.index_content(digest, "s2")  # the newest object with these bytes wins
    found = store.find_by_content(digest)
    assert found is not None and found.id == "s2"
    assert store.find_by_content("cd" * 32) is None
    store.forget_content(digest)
    assert store.find_by_content(digest) is None


def test_a_record_saved_with_index_is_found_by_its_content_and_size(store: CheckpointStore) -> None:
    record = make_stream("s1", state=StreamState.COMPLETED, sha256="ab" * 32, size=1234)
    store.save_stream(record, index=True)
    assert store.find_by_content("ab" * 32) == record
    assert store.may_hold_size(1234)
    store.save_stream(make_stream("s2", relpath="b.mp4", sha256="cd" * 32, size=99))  # no index asked for
    assert store.find_by_content("cd" * 32) is None
    assert not store.may_hold_size(99)


def test_ping_answers_while_the_backend_is_there_and_raises_once_it_is_gone(
    store: CheckpointStore, request: pytest.FixtureRequest
) -> None:
    store.ping()
    if isinstance(store, SqliteStore):
        store.close()
    else:
        request.getfixturevalue("redis_server").stop()  # the next test's `redis_url` starts it again
    with pytest.raises(StoreError):
        store.ping()


# deleting streams (chunkd gc's retention)


def test_delete_stream_forgets_record_parts_path_and_state(store: CheckpointStore) -> None:
    old = make_stream("old", discovered_at=100.0, state=StreamState.FAILED, sha256="ab" * 32)
    new = make_stream("new", discovered_at=200.0, state=StreamState.COMPLETED, sha256="cd" * 32)
    other = make_stream("other", relpath="b.mp4", discovered_at=300.0)
    for record in (old, new, other):
        store.save_stream(record)
    store.record_part("new", make_part(1))
    store.record_part("other", make_part(1))
    store.index_content("cd" * 32, "new")
    store.delete_stream("new")
    assert store.get_stream("new") is None
    assert store.list_parts("new") == []
    assert store.find_by_relpath(new.relpath) == old  # the path index falls back to the older stream
    assert store.list_streams([StreamState.COMPLETED]) == []
    assert [r.id for r in store.list_streams()] == ["old", "other"]
    assert store.find_by_content("cd" * 32) is None
    assert store.list_parts("other") == [make_part(1)]
    store.delete_stream("old")
    assert store.find_by_relpath(old.relpath) is None
    assert [r.id for r in store.list_streams([StreamState.FAILED, StreamState.PENDING])] == ["other"]


def test_delete_unknown_stream_is_not_an_error(store: CheckpointStore) -> None:
    store.save_stream(make_stream())
    store.delete_stream("nope")
    assert [r.id for r in store.list_streams()] == ["s1"]


def test_deleted_stream_can_be_saved_again(store: CheckpointStore) -> None:
    record = make_stream()
    store.save_stream(record)
    store.delete_stream("s1")
    store.save_stream(record)
    assert store.get_stream("s1") == record
    assert store.find_by_relpath(record.relpath) == record


# events


def make_event(n: int, **overrides: object) -> dict[str, object]:
    event: dict[str, object] = {
        "event": "completed", "ts": 1_700_000_000.0 + n, "stream_id": f"s{n}", "relpath": f"ünï/{n}.mp4",
        "key": f"k/{n}.mp4", "bucket": "videos", "size": n, "sha256": None, "error": None,
    }
    event.update(overrides)
    return event


def test_events_come_back_oldest_first_and_intact(store: CheckpointStore) -> None:
    assert store.list_events() == []
    events = [make_event(n) for n in range(5)]
    events[2] = make_event(2, event="failed", error="boom: 'x'")
    for event in events:
        store.append_event(event, maxlen=100)
    assert store.list_events() == events


def test_list_events_since_and_limit(store: CheckpointStore) -> None:
    for n in range(10):
        store.append_event(make_event(n), maxlen=100)
    assert [e["stream_id"] for e in store.list_events(since=1_700_000_007.0)] == ["s7", "s8", "s9"]
    assert [e["stream_id"] for e in store.list_events(limit=2)] == ["s8", "s9"]  # the newest, oldest first
    assert [e["stream_id"] for e in store.list_events(since=1_700_000_003.0, limit=3)] == ["s7", "s8", "s9"]
    assert store.list_events(since=1_800_000_000.0) == []


def test_list_events_pages_past_many_filtered_entries(store: CheckpointStore) -> None:
    for n in range(1200):
        store.append_event(make_event(n, ts=float(n)), maxlen=10_000)
    found = store.list_events(since=0.0, limit=1100)
    assert len(found) == 1100
    assert found[0]["ts"] == 100.0 and found[-1]["ts"] == 1199.0


def test_event_log_keeps_the_newest_maxlen(store: CheckpointStore) -> None:
    for n in range(300):
        store.append_event(make_event(n), maxlen=10)
    kept = store.list_events(limit=10_000)
    # Redis trims approximately (whole stream nodes of up to 100 entries); SQLite exactly.
    assert 10 <= len(kept) <= 110
    assert [e["stream_id"] for e in kept[-10:]] == [f"s{n}" for n in range(290, 300)]


def test_sqlite_event_log_is_trimmed_exactly(tmp_path: Path) -> None:
    store = SqliteStore(str(tmp_path / "state.db"))
    for n in range(30):
        store.append_event(make_event(n), maxlen=7)
    assert [e["stream_id"] for e in store.list_events()] == [f"s{n}" for n in range(23, 30)]
    store.close()


def test_events_survive_a_reopen(open_backend: Opener) -> None:
    first = open_backend()
    first.append_event(make_event(1), maxlen=10)
    first.close()
    assert open_backend().list_events() == [make_event(1)]


# open_store


def test_open_store_sqlite_relative_to_working_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    store = open_store("sqlite:///.chunkd/state.db")
    try:
        assert isinstance(store, SqliteStore)
        store.ping()
        assert (tmp_path / ".chunkd" / "state.db").is_file()
    finally:
        store.close()


def test_open_store_sqlite_absolute(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path / 'abs' / 'state.db'}")
    try:
        assert isinstance(store, SqliteStore)
        assert (tmp_path / "abs" / "state.db").is_file()
    finally:
        store.close()


def test_open_store_redis(redis_url: str) -> None:
    store = open_store(redis_url)
    try:
        assert isinstance(store, RedisStore)
        store.ping()
    finally:
        store.close()


def test_open_store_rejects_unknown_scheme() -> None:
    with pytest.raises(ConfigError) as info:
        open_store("ftp://x")
    assert info.value.setting == "CHUNKD_STATE_URL"


# Redis only: key layout and batching are not part of the Protocol


def test_redis_keys_are_readable(redis_url: str) -> None:
    store = RedisStore.from_url(redis_url)
    record = make_stream(discovered_at=100.0)
    store.save_stream(record)
    record.move_to(StreamState.UPLOADING)
    store.save_stream(record)
    store.record_part("s1", make_part(3))
    client = store.client
    assert client.hget("chunkd:stream:s1", "state") == "UPLOADING"
    assert client.hget("chunkd:stream:s1", "relpath") == record.relpath
    assert client.hkeys("chunkd:stream:s1:parts") == ["3"]
    assert client.zrange("chunkd:streams", 0, -1, withscores=True) == [("s1", 100.0)]
    assert client.zrange("chunkd:streams:UPLOADING", 0, -1) == ["s1"]
    assert client.zrange("chunkd:streams:PENDING", 0, -1) == []  # left the old state's set
    assert client.zrange(f"chunkd:path:{record.relpath}", 0, -1) == ["s1"]
    store.append_event({"event": "completed", "ts": 1.0}, maxlen=10)
    assert [fields for _, fields in client.xrange("chunkd:events")] == [{"data": '{"event": "completed", "ts": 1.0}'}]
    store.delete_stream("s1")
    assert [key for key in client.keys("chunkd:*") if key != "chunkd:events"] == []  # nothing left behind
    store.close()



def test_redis_batch_is_one_transaction(redis_url: str) -> None:
    store = RedisStore.from_url(redis_url)
    record = make_stream()
    with pytest.raises(RuntimeError), store.batch() as pipe:
        store.save_stream(record, pipeline=pipe)
        store.record_part("s1", make_part(1), pipeline=pipe)
        raise RuntimeError("caller failed before the batch was executed")
    assert store.get_stream("s1") is None and store.list_parts("s1") == []

    with store.batch() as pipe:
        store.save_stream(replace(record, state=StreamState.UPLOADING), pipeline=pipe)
        store.record_part("s1", make_part(1), pipeline=pipe)
        store.drop_parts("s0", pipeline=pipe)
        assert store.get_stream("s1") is None  # queued, not yet sent
    assert store.get_stream("s1") == replace(record, state=StreamState.UPLOADING)
    assert store.list_parts("s1") == [make_part(1)]
    store.close()


def test_data_mark_is_one_token_for_every_connection(open_backend: Opener) -> None:
    first, second = open_backend(), open_backend()
    mark = first.data_mark()
    assert mark and second.data_mark() == mark == first.data_mark()


def test_redis_data_mark_tells_once_that_the_data_was_lost(redis_url: str) -> None:
    store = RedisStore.from_url(redis_url)
    watch = ResetWatch(store)
    assert not watch.lost_data()  # the first call notes the mark
    store.save_stream(make_stream())
    assert not watch.lost_data()
    store.client.flushall()
    assert watch.lost_data()
    assert not watch.lost_data()  # once per loss
    store.close()


def test_url_records_round_trip_and_filter(store: CheckpointStore) -> None:
    from chunkd.model.states import UrlRecord, UrlState

    first = UrlRecord(url="https://a.example/x.mp4", display="https://a.example/x.mp4", links_file="links.txt",
                      relpath="x.mp4", created_at=1.0, info={"title": "X", "nested": {"n": 1}})
    second = UrlRecord(url="https://u:p@b.example/y.mp4", display="https://***@b.example/y.mp4",
                       links_file="links.txt", relpath="y.mp4", created_at=2.0)
    store.save_url(first)
    store.save_url(second)
    assert store.get_url(first.url) == first
    assert store.get_url("https://nope.example/") is None
    second.move_to(UrlState.FAILED, error="HTTP 404")
    second.attempts = 3
    store.save_url(second)
    assert [r.url for r in store.list_urls()] == [first.url, second.url]
    assert [r.url for r in store.list_urls([UrlState.FAILED])] == [second.url]
    stored = store.get_url(second.url)
    assert stored is not None and stored.attempts == 3 and stored.last_error == "HTTP 404"


def test_redis_finds_by_key_the_streams_saved_before_the_object_index(redis_url: str) -> None:
    """Records an older chunkd saved have no `chunkd:key:` entry: the first lookup fills it in."""
    with closing(RedisStore.from_url(redis_url)) as older:
        older.save_stream(make_stream("old", relpath="a/x.mp4", key="x.mp4", state=StreamState.COMPLETED))
        older.save_stream(make_stream("other", relpath="b/y.mp4", key="y.mp4", discovered_at=5.0))
        for index in older.client.scan_iter("chunkd:key:*"):
            older.client.delete(index)
        older.client.delete("chunkd:schema")  # as an older chunkd left it
    with closing(RedisStore.from_url(redis_url)) as store:
        assert [r.id for r in store.find_by_key("videos", "x.mp4")] == ["old"]
        assert [r.id for r in store.find_by_key("videos", "y.mp4")] == ["other"]
        assert store.client.hget("chunkd:schema", "key_index") == "1"
    with closing(RedisStore.from_url(redis_url)) as store:  # marked: no second pass, the index stays right
        store.client.zrem("chunkd:key:videos/y.mp4", "other")
        assert store.find_by_key("videos", "y.mp4") == []
