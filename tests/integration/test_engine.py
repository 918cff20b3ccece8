"""The upload engine in-process against both S3 servers (moto over HTTP and `rclone serve s3`):
single and multipart uploads, resume with adoption, and files that change under the upload."""

from __future__ import annotations

import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from chunkd.config import load_settings
from chunkd.daemon import build_engine
from chunkd.engine import Engine
from chunkd.planner import plan_schedule
from chunkd.s3 import S3Target
from chunkd.states import StreamState
from chunkd.stream import Outcome, StreamJob
from tests.integration.test_daemon import MiB, read_manifest, sha256_file, sha256_object, write_random
from tests.support.daemon import wait_for
from tests.support.s3_servers import make_client

BUCKET = "chunkd"


@pytest.fixture(params=["moto", "rclone"])
def server(request: pytest.FixtureRequest) -> Any:
    return request.getfixturevalue("moto" if request.param == "moto" else "rclone_s3")


@pytest.fixture
def client(server: Any) -> Any:
    return make_client(server.endpoint_url, server.access_key, server.secret_key)


@pytest.fixture
def make_engine(server: Any, tmp_path: Path) -> Iterator[Callable[..., Engine]]:
    engines: list[Engine] = []
    (tmp_path / "input").mkdir()

    def make(**settings: Any) -> Engine:
        values = {"input_dir": str(tmp_path / "input"), "state_url": f"sqlite:///{tmp_path / 'state.db'}",
                  "part_size": "5MiB", "idle_seconds": 1, "poll_seconds": 0.05, "invalid_media": "upload",
                  **settings}
        target = S3Target(server.endpoint_url, None, server.access_key, server.secret_key)
        engine = build_engine(load_settings(env={}, overrides=values), target)
        engine.requests = Counter()  # type: ignore[attr-defined]
        engine.uploader._on_request = lambda op: engine.requests.update([op])  # type: ignore[attr-defined]
        engines.append(engine)
        return engine

    yield make
    for engine in engines:
        engine.stop.set()
        engine.shutdown()
        engine.store.close()


def run_job(engine: Engine, name: str, *, final: bool = True) -> Outcome:
    return StreamJob(engine, engine.input_dir / name, name, final=final).run()


def run_in_thread(engine: Engine, name: str) -> tuple[threading.Thread, list[Outcome]]:
    outcome: list[Outcome] = []
    thread = threading.Thread(target=lambda: outcome.append(run_job(engine, name, final=False)))
    thread.start()
    return thread, outcome


def recorded_parts(engine: Engine, name: str) -> list[int]:
    record = engine.store.find_by_relpath(name)
    return [] if record is None else [p.number for p in engine.store.list_parts(record.id)]


@pytest.mark.parametrize("size", [0, 1024, 5 * MiB, 13 * MiB + 7])
def test_sizes_round_trip(make_engine: Callable[..., Engine], client: Any, size: int) -> None:
    engine = make_engine()
    source = write_random(engine.input_dir / "clip.mp4", size)
    assert run_job(engine, "clip.mp4") is Outcome.COMPLETED
    assert sha256_object(client, "clip.mp4") == sha256_file(source)
    manifest = read_manifest(client, "clip.mp4")
    assert manifest is not None and manifest["size"] == size and manifest["sha256"] == sha256_file(source)
    assert [p["size"] for p in manifest["parts"]] == [p.size for p in plan_schedule(5 * MiB).parts_for(size)] or (
        size == 0 and [p["size"] for p in manifest["parts"]] == [0]
    )
    single = size < 5 * MiB
    assert manifest["upload"] == ("single" if single else "multipart")
    assert engine.requests["PutObject"] == (2 if single else 1)  # object (if single) + manifest
    assert run_job(engine, "clip.mp4") is Outcome.SKIPPED  # unchanged: never sent twice


def test_resume_adopts_parts_the_checkpoint_missed(make_engine: Callable[..., Engine], client: Any) -> None:
    """Killed between the server's acknowledgement and the checkpoint: the part is on the server,
    not in the ledger. The restart must adopt it (its MD5 matches the local bytes), not resend it."""
    engine = make_engine()
    source = write_random(engine.input_dir / "movie.mkv", 18 * MiB)
    first = StreamJob(engine, source, "movie.mkv")
    record = first._load_or_create(fresh=False)
    assert record is not None
    schedule = plan_schedule(5 * MiB)
    record.upload_id = engine.uploader.create(BUCKET, "movie.mkv")
    record.move_to(StreamState.UPLOADING)
    engine.store.save_stream(record)
    parts = [engine.uploader.upload_part(BUCKET, "movie.mkv", record.upload_id, source, schedule.part(n), None)
             for n in (1, 2)]
    engine.store.record_part(record.id, parts[0])  # part 2 acknowledged, never checkpointed
    engine.requests.clear()  # type: ignore[attr-defined]

    assert run_job(engine, "movie.mkv") is Outcome.COMPLETED
    assert engine.requests["UploadPart"] == 2  # parts 3 and 4 only  # type: ignore[attr-defined]
    assert engine.requests["CreateMultipartUpload"] == 0  # type: ignore[attr-defined]
    assert sha256_object(client, "movie.mkv") == sha256_file(source)


def test_file_deleted_during_upload_fails_and_aborts(make_engine: Callable[..., Engine], client: Any) -> None:
    engine = make_engine(idle_seconds=30)
    path = write_random(engine.input_dir / "gone.mp4", 11 * MiB)
    thread, outcome = run_in_thread(engine, "gone.mp4")
    wait_for(lambda: len(recorded_parts(engine, "gone.mp4")) >= 2, timeout=30, what="2 parts")
    path.unlink()
    thread.join(timeout=30)
    assert outcome == [Outcome.FAILED]
    record = engine.store.find_by_relpath("gone.mp4")
    assert record is not None and record.state is StreamState.FAILED
    assert record.last_error == "file deleted or renamed during upload"
    assert engine.requests["AbortMultipartUpload"] == 1  # type: ignore[attr-defined]
    assert "Contents" not in client.list_objects_v2(Bucket=BUCKET)


@pytest.mark.parametrize("change", ["shrink", "replace"])
def test_changed_file_restarts_and_the_object_is_the_new_file(
    make_engine: Callable[..., Engine], client: Any, change: str, tmp_path: Path
) -> None:
    engine = make_engine(idle_seconds=1.5)
    path = write_random(engine.input_dir / "take.mov", 11 * MiB)
    thread, outcome = run_in_thread(engine, "take.mov")
    wait_for(lambda: len(recorded_parts(engine, "take.mov")) >= 2, timeout=30, what="2 parts")
    first = engine.store.find_by_relpath("take.mov")
    if change == "shrink":
        os.truncate(path, 3 * MiB)
    else:
        os.replace(write_random(tmp_path / "new.mov", 7 * MiB), path)
    thread.join(timeout=60)
    assert outcome == [Outcome.COMPLETED]
    assert sha256_object(client, "take.mov") == sha256_file(path)
    assert first is not None
    old = engine.store.get_stream(first.id)
    assert old is not None and old.state is StreamState.FAILED and (old.last_error or "").startswith("restarting")
    newest = engine.store.find_by_relpath("take.mov")
    assert newest is not None and newest.id != first.id and newest.state is StreamState.COMPLETED


def test_growing_file_sends_parts_before_it_goes_idle(make_engine: Callable[..., Engine], client: Any) -> None:
    engine = make_engine(idle_seconds=1.5)
    path = engine.input_dir / "live.ts"
    path.write_bytes(b"")
    thread, outcome = run_in_thread(engine, "live.ts")
    with open(path, "ab") as handle:
        for _ in range(4):
            handle.write(os.urandom(3 * MiB))
            handle.flush()
            time.sleep(0.6)
        sent_while_growing = len(recorded_parts(engine, "live.ts"))
    thread.join(timeout=60)
    assert outcome == [Outcome.COMPLETED]
    assert sent_while_growing >= 1
    assert sha256_object(client, "live.ts") == sha256_file(path)


def test_bandwidth_limit_is_shared_by_all_parts(make_engine: Callable[..., Engine], server: Any) -> None:
    engine = make_engine(bandwidth_limit="8MB", part_concurrency=4)
    write_random(engine.input_dir / "slow.mp4", 20 * MiB)
    started = time.monotonic()
    assert run_job(engine, "slow.mp4") is Outcome.COMPLETED
    elapsed = time.monotonic() - started
    assert elapsed >= 20 * MiB / 8e6 * 0.85, f"4 parallel parts beat an 8 MB/s limit: {elapsed:.1f}s"
