"""A fleet on one state store, on both backends: streams per (node, relpath), heartbeats, retention."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from chunkd.model.node import Scope
from chunkd.model.states import PartRecord, StreamRecord, StreamState
from chunkd.ops.retention import expired_records, forget
from chunkd.pipeline.job import Outcome
from chunkd.store import CheckpointStore
from tests.support.daemon import wait_for
from tests.support.engine import close_test_engine, make_test_engine, run_job
from tests.support.files import write_random
from tests.support.s3_servers import MotoServer

DAY = 86400.0
NOW = 1_800_000_000.0


def stream(stream_id: str, relpath: str = "cam1/2026-12-04.mp4", **fields: Any) -> StreamRecord:
    values: dict[str, Any] = {"discovered_at": NOW - 100, "updated_at": NOW - 100, **fields}
    return StreamRecord(id=stream_id, relpath=relpath, source_path=f"/in/{relpath}", bucket="b",
                        key=f"{values.get('node') or 'x'}/{relpath}", schedule={}, **values)


def test_one_relpath_on_two_nodes_is_two_streams(store: CheckpointStore) -> None:
    store.save_stream(stream("a1", node="rec-1", discovered_at=NOW - 10))
    store.save_stream(stream("b2", node="rec-2", discovered_at=NOW - 5))
    relpath = "cam1/2026-12-04.mp4"
    found_1, found_2 = (store.find_by_relpath(relpath, scope=Scope(n)) for n in ("rec-1", "rec-2"))
    assert found_1 is not None and found_1.id == "a1"
    assert found_2 is not None and found_2.id == "b2"
    assert store.find_by_relpath(relpath, scope=Scope("rec-3")) is None
    newest = store.find_by_relpath(relpath)  # no scope: any node's, as before nodes
    assert newest is not None and newest.id == "b2"


def test_a_record_from_before_nodes_is_found_by_any_local_node(store: CheckpointStore) -> None:
    store.save_stream(stream("old1"))  # node None: written by a chunkd without nodes
    found = store.find_by_relpath("cam1/2026-12-04.mp4", scope=Scope("rec-1"))
    assert found is not None and found.id == "old1"
    store.save_stream(stream("new1", node="rec-1", discovered_at=NOW - 1))
    found = store.find_by_relpath("cam1/2026-12-04.mp4", scope=Scope("rec-1"))
    assert found is not None and found.id == "new1"


def test_a_shared_folder_sees_shared_streams_of_every_node_and_no_local_one(store: CheckpointStore) -> None:
    store.save_stream(stream("loc", node="rec-1", discovered_at=NOW - 1))
    store.save_stream(stream("shr", node="rec-2", shared=True, discovered_at=NOW - 9))
    found = store.find_by_relpath("cam1/2026-12-04.mp4", scope=Scope(None))
    assert found is not None and found.id == "shr"


def test_heartbeats_are_listed_until_they_expire(store: CheckpointStore) -> None:
    store.beat("rec-1", {"version": "9", "queue_depth": 2}, ttl=60)
    store.beat("rec-2", {"version": "9", "queue_depth": 0}, ttl=0.5)
    listed = store.list_nodes()
    assert [info["node"] for info in listed] == ["rec-1", "rec-2"]
    assert listed[0]["queue_depth"] == 2 and time.time() - listed[0]["seen_at"] < 30
    wait_for(lambda: [info["node"] for info in store.list_nodes()] == ["rec-1"], timeout=10,
             what="rec-2's heartbeat to expire")
    store.beat("rec-2", {"version": "10"}, ttl=60)  # back: listed again, with what it says now
    assert {info["node"]: info["version"] for info in store.list_nodes()} == {"rec-1": "9", "rec-2": "10"}


def test_retention_reads_only_old_streams_and_keeps_other_nodes_and_live_ones(store: CheckpointStore) -> None:
    old = {"discovered_at": NOW - 40 * DAY, "updated_at": NOW - 39 * DAY}
    store.save_stream(stream("done", "a.mp4", node="rec-1", state=StreamState.COMPLETED, **old))
    store.save_stream(stream("other", "a.mp4", node="rec-2", state=StreamState.COMPLETED, **old))
    store.save_stream(stream("live", "b.mp4", node="rec-1", state=StreamState.UPLOADING, **old))
    store.save_stream(stream("late", "c.mp4", node="rec-1", state=StreamState.FAILED,
                             discovered_at=NOW - 40 * DAY, updated_at=NOW - DAY))
    store.save_stream(stream("new", "d.mp4", node="rec-1", state=StreamState.COMPLETED))
    assert sorted(r.id for r in store.list_streams(discovered_before=NOW - 30 * DAY)) == ["done", "late", "live", "other"]
    assert [r.id for r in expired_records(store, days=30, now=NOW, scope=Scope("rec-1"), indexed=True)] == ["done"]
    assert sorted(r.id for r in expired_records(store, days=30, now=NOW)) == ["done", "other"]


def test_forgetting_a_record_drops_its_parts_and_its_files_fencing_counter(store: CheckpointStore) -> None:
    record = stream("done", "a.mp4", node="rec-1", state=StreamState.COMPLETED)
    store.save_stream(record)
    store.record_part("done", PartRecord(1, 0, 10, '"e"', sha256="0" * 64))
    name = Scope("rec-1").lease_name("a.mp4")
    first = store.acquire_lease(name, "h/1/a", 30)
    assert first is not None
    assert store.forget_lease(name) is False  # held: its counter stays
    store.release_lease(_lease(name, "h/1/a", first))
    forget(store, record)
    assert store.get_stream("done") is None and store.list_parts("done") == []
    assert store.acquire_lease(name, "h/1/b", 30) == 1  # the counter was dropped with the file's records


def test_forgetting_an_old_stream_keeps_the_counter_of_a_newer_one(store: CheckpointStore) -> None:
    old = stream("old", "a.mp4", node="rec-1", state=StreamState.COMPLETED, discovered_at=NOW - 50)
    store.save_stream(old)
    store.save_stream(stream("newer", "a.mp4", node="rec-1", state=StreamState.UPLOADING, discovered_at=NOW))
    name = Scope("rec-1").lease_name("a.mp4")
    token = store.acquire_lease(name, "h/1/a", 30)
    assert token is not None
    store.release_lease(_lease(name, "h/1/a", token))
    forget(store, old)
    assert store.acquire_lease(name, "h/1/b", 30) == token + 1


def _lease(name: str, owner: str, token: int) -> Any:
    from chunkd.store.lease import Lease

    return Lease(name, owner, token)


def test_a_file_whose_record_expired_is_not_uploaded_again(moto: MotoServer, tmp_path: Path) -> None:
    """Retention forgets a completed record while its file stays in the folder, a file newer than the
    daemon's start: its manifest restores the record; nothing is sent again."""
    (tmp_path / "input").mkdir()
    engine = make_test_engine(moto, tmp_path, retention_days=0, key_template="{node}/{relpath}", node="rec-1")
    try:
        write_random(engine.input_dir / "a.mp4", 100_000)
        assert run_job(engine, "a.mp4") is Outcome.COMPLETED
        record = engine.store.find_by_relpath("a.mp4", scope=engine.scope)
        assert record is not None and record.key == "rec-1/a.mp4" and record.node == "rec-1"
        forget(engine.store, record)
        # With 0 days every file is "maybe forgotten", so the first job listed the folder before its
        # manifest existed; a real record expires days after its manifest, beyond that minute's listing.
        engine.folders.forget()
        sent = engine.requests["PutObject"]  # type: ignore[attr-defined]
        assert run_job(engine, "a.mp4") is Outcome.SKIPPED
        assert engine.requests["PutObject"] == sent  # type: ignore[attr-defined]
        restored = engine.store.find_by_relpath("a.mp4", scope=engine.scope)
        assert restored is not None and restored.state is StreamState.COMPLETED and restored.node == "rec-1"
    finally:
        close_test_engine(engine)


def test_a_completed_record_from_before_nodes_keeps_its_file_uploaded(
    moto: MotoServer, tmp_path: Path, redis_url: str
) -> None:
    """Upgraded in place: the single box's records carry no node, and are still its own."""
    (tmp_path / "input").mkdir()
    engine = make_test_engine(moto, tmp_path, state_url=redis_url, node="rec-1")
    try:
        write_random(engine.input_dir / "a.mp4", 100_000)
        assert run_job(engine, "a.mp4") is Outcome.COMPLETED
        record = engine.store.find_by_relpath("a.mp4")
        assert record is not None and record.node == "rec-1"
        old = record.to_dict()
        del old["node"], old["shared"]  # as a chunkd without nodes wrote it
        engine.store.save_stream(StreamRecord.from_dict(old))
        sent = engine.requests["PutObject"]  # type: ignore[attr-defined]
        assert run_job(engine, "a.mp4") is Outcome.SKIPPED
        assert engine.requests["PutObject"] == sent  # type: ignore[attr-defined]
    finally:
        close_test_engine(engine)


def test_a_nodes_lookup_does_not_read_every_nodes_stream_of_the_name(redis_url: str) -> None:
    """Fifty boxes record cam1/<date>.mp4: a box looking for its own reads its own index, not 50 records."""
    from chunkd.store.redis import RedisStore

    store = RedisStore.from_url(redis_url)
    try:
        for index in range(50):
            store.save_stream(stream(f"s{index:02d}", node=f"rec-{index:02d}", discovered_at=NOW + index))
        hgets = _calls(store, "hget")
        found = store.find_by_relpath("cam1/2026-12-04.mp4", scope=Scope("rec-07"))
        assert found is not None and found.id == "s07"
        assert store.find_by_relpath("cam1/2026-12-04.mp4", scope=Scope("rec-99")) is None
        # One record read for the first; the store was checked once for records without a node: its
        # schema mark, then the 50 records (none without a node: marked, never read again).
        assert _calls(store, "hget") - hgets == 1 + 1 + 50
        hgets = _calls(store, "hget")
        assert store.find_by_relpath("cam1/2026-12-04.mp4", scope=Scope("rec-98")) is None
        assert _calls(store, "hget") == hgets, "a name no stream of this node has costs no record read"
        reopened = RedisStore.from_url(redis_url)
        try:
            assert reopened.find_by_relpath("cam1/2026-12-04.mp4", scope=Scope("rec-97")) is None
            assert _calls(store, "hget") == hgets + 1, "a marked store is not read through again"
        finally:
            reopened.close()
    finally:
        store.close()


def _calls(store: Any, command: str) -> int:
    stats: dict[str, Any] = store.client.info("commandstats")
    return int(stats.get(f"cmdstat_{command}", {}).get("calls", 0))
