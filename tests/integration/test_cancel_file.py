"""A cancel holds for the file (chunkd.pipeline.discovery): made while no daemon runs it is applied
at start, it stops a finalize before the object is committed, and only a replaced or rewritten file
(or `chunkd retry`) is uploaded again. Also: a stream's time spent sending, which status divides by.
On Ceph RGW (strict), in-process: the engine as the daemon builds it."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from chunkd.model.states import StreamState
from chunkd.ops.cancel import Canceller
from chunkd.pipeline.engine import Engine
from chunkd.pipeline.job import Outcome
from tests.support.bucket import open_uploads
from tests.support.ceph_rgw import CephRGW
from tests.support.engine import close_test_engine, make_test_engine, run_job
from tests.support.files import write_random
from tests.support.s3_servers import make_client
from tests.support.sizes import MiB


@pytest.fixture
def engines(rgw: CephRGW, tmp_path: Path) -> Iterator[Callable[..., Engine]]:
    built: list[Engine] = []
    (tmp_path / "input").mkdir()

    def make(**settings: Any) -> Engine:
        built.append(make_test_engine(rgw, tmp_path, **settings))
        return built[-1]

    yield make
    for engine in built:
        close_test_engine(engine)


@pytest.fixture
def client(rgw: CephRGW) -> Any:
    return make_client(rgw.endpoint_url, rgw.access_key, rgw.secret_key)


def objects(client: Any) -> list[str]:
    return [item["Key"] for item in client.list_objects_v2(Bucket="chunkd").get("Contents", [])]


def cancel(engine: Engine, name: str) -> str:
    """What `chunkd cancel ID` does, for the file's newest stream."""
    record = engine.store.find_by_relpath(name)
    assert record is not None
    canceller = Canceller(engine.store, lambda: engine.uploader)
    canceller.abort_upload(canceller.fail(record.id))
    return record.id


def test_a_cancel_made_while_the_daemon_was_down_holds_as_the_file_grows(
    engines: Callable[..., Engine], client: Any
) -> None:
    engine = engines()
    path = engine.input_dir / "grow.mp4"
    write_random(path, 6 * MiB)
    engine.stop.set()  # the daemon stops with the file under way: a stream and its upload remain
    assert run_job(engine, "grow.mp4", final=False) is Outcome.INTERRUPTED
    close_test_engine(engine)

    engine = engines()
    stream_id = cancel(engine, "grow.mp4")
    with open(path, "ab") as handle:  # the recording went on
        handle.write(os.urandom(MiB))
    assert run_job(engine, "grow.mp4") is Outcome.SKIPPED
    record = engine.store.find_by_relpath("grow.mp4")
    assert record is not None and record.id == stream_id and record.size == 7 * MiB
    assert objects(client) == [] and open_uploads(client, "grow.mp4") == []

    with open(path, "r+b") as handle:  # rewritten from the start: new content
        handle.truncate(MiB)
    assert run_job(engine, "grow.mp4") is Outcome.COMPLETED
    assert "grow.mp4" in objects(client)


def test_a_cancelled_file_replaced_by_another_is_uploaded(engines: Callable[..., Engine], client: Any) -> None:
    engine = engines()
    path = engine.input_dir / "clip.mp4"
    write_random(path, MiB)
    engine.stop.set()
    run_job(engine, "clip.mp4", final=False)
    engine.stop.clear()
    cancel(engine, "clip.mp4")
    assert run_job(engine, "clip.mp4") is Outcome.SKIPPED
    write_random(engine.input_dir / "new.tmp", 2 * MiB)
    os.replace(engine.input_dir / "new.tmp", path)  # another inode under the name
    assert run_job(engine, "clip.mp4") is Outcome.COMPLETED
    assert "clip.mp4" in objects(client)


def test_a_cancel_during_finalize_stops_it_before_the_object_is_committed(
    engines: Callable[..., Engine], client: Any
) -> None:
    engine = engines(part_concurrency=1)  # the cancel lands between parts, not beside one in flight
    write_random(engine.input_dir / "fin.mp4", 11 * MiB)
    uploader = engine.uploader
    send_part = uploader.upload_part

    def cancel_on_the_last_part(*args: Any, **kwargs: Any) -> Any:
        part = send_part(*args, **kwargs)
        if part.number == 3:  # the tail, sent by finalize
            cancel(engine, "fin.mp4")
        return part

    uploader.upload_part = cancel_on_the_last_part  # type: ignore[method-assign]
    assert run_job(engine, "fin.mp4") is Outcome.FAILED
    record = engine.store.find_by_relpath("fin.mp4")
    assert record is not None and (record.state, record.last_error) == (StreamState.FAILED, "cancelled by operator")
    assert objects(client) == [] and open_uploads(client, "fin.mp4") == []
    assert engine.requests["CompleteMultipartUpload"] == 0  # type: ignore[attr-defined]


def test_time_spent_sending_leaves_out_the_idle_wait(engines: Callable[..., Engine]) -> None:
    engine = engines(idle_seconds=2)
    write_random(engine.input_dir / "idle.mp4", 11 * MiB)
    assert run_job(engine, "idle.mp4", final=False) is Outcome.COMPLETED
    record = engine.store.find_by_relpath("idle.mp4")
    assert record is not None and record.first_byte_at is not None and record.completed_at is not None
    assert 0 < record.send_seconds < record.completed_at - record.first_byte_at - 1.5
