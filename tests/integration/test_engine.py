"""The upload engine in-process against both S3 servers (moto over HTTP and `rclone serve s3`):
single and multipart uploads, resume with adoption, and files that change under the upload."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from chunkd.model.planner import plan_schedule
from chunkd.model.states import StreamState
from chunkd.pipeline.discovery import Discovery
from chunkd.pipeline.engine import Engine
from chunkd.pipeline.job import Outcome
from tests.support.bucket import BUCKET, read_manifest, sha256_object
from tests.support.ceph_rgw import CephRGW
from tests.support.daemon import wait_for
from tests.support.engine import recorded_parts, run_in_thread, run_job
from tests.support.files import sha256_file, write_random
from tests.support.sizes import MiB


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
    assert engine.requests["PutObject"] == (2 if single else 1)  # type: ignore[attr-defined]  # object (if single) + manifest
    assert run_job(engine, "clip.mp4") is Outcome.SKIPPED  # unchanged: never sent twice


def test_resume_adopts_parts_the_checkpoint_missed(make_engine: Callable[..., Engine], client: Any) -> None:
    """Killed between the server's acknowledgement and the checkpoint: the part is on the server,
    not in the ledger. The restart must adopt it (its MD5 matches the local bytes), not resend it."""
    engine = make_engine()
    source = write_random(engine.input_dir / "movie.mkv", 18 * MiB)
    record = Discovery(engine, engine.store, source, "movie.mkv").find_or_create(fresh=False)
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
    assert engine.requests["UploadPart"] == 2  # type: ignore[attr-defined]  # parts 3 and 4 only
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
    # Timed from before the limiter exists: its bucket fills from its creation on, so tokens saved up
    # while the engine was still being built (a slow boto3 client on a loaded box) count in the time.
    started = time.monotonic()
    engine = make_engine(bandwidth_limit="8MB", part_concurrency=4)
    write_random(engine.input_dir / "slow.mp4", 20 * MiB)
    assert run_job(engine, "slow.mp4") is Outcome.COMPLETED
    elapsed = time.monotonic() - started
    assert elapsed >= 20 * MiB / 8e6 * 0.85, f"4 parallel parts beat an 8 MB/s limit: {elapsed:.1f}s"


# -- after-upload actions and lifecycle edge cases ----------------------------------------------


@pytest.mark.parametrize("action", ["delete", "move"])
def test_after_upload_acts_only_once_the_object_is_verified(
    make_engine: Callable[..., Engine], client: Any, action: str, tmp_path: Path
) -> None:
    engine = make_engine(after_upload=action, done_dir=str(tmp_path / "done"))
    (engine.input_dir / "day1").mkdir()
    source = write_random(engine.input_dir / "day1" / "a.mp4", 6 * MiB)
    digest = sha256_file(source)
    assert run_job(engine, "day1/a.mp4") is Outcome.COMPLETED
    assert not source.exists()
    assert sha256_object(client, "day1/a.mp4") == digest
    if action == "move":
        assert sha256_file(tmp_path / "done" / "day1" / "a.mp4") == digest


def test_after_upload_delete_keeps_the_file_when_verification_fails(
    make_engine: Callable[..., Engine], monkeypatch: pytest.MonkeyPatch
) -> None:
    from chunkd.s3.uploader import ObjectInfo

    engine = make_engine(after_upload="delete")
    source = write_random(engine.input_dir / "b.mp4", 6 * MiB)
    real_head, real_complete = engine.uploader.head, engine.uploader.complete
    # Fault injection: the server answers Complete without the ETag of our parts, and reports an
    # object one byte short when asked.
    monkeypatch.setattr(engine.uploader, "complete", lambda *args: real_complete(*args) and '"unexpected-2"')
    monkeypatch.setattr(engine.uploader, "head", lambda bucket, key: (
        ObjectInfo(info.size - 1, info.etag) if (info := real_head(bucket, key)) else None))
    assert run_job(engine, "b.mp4") is Outcome.FAILED
    assert source.exists(), "a file whose object did not verify must never be deleted"
    record = engine.store.find_by_relpath("b.mp4")
    assert record is not None and record.state is StreamState.FAILED
    assert "verification failed" in (record.last_error or "")


def test_a_complete_answered_with_our_parts_etag_needs_no_head(make_engine: Callable[..., Engine], server: Any) -> None:
    engine = make_engine()
    write_random(engine.input_dir / "b.mp4", 12 * MiB)
    assert run_job(engine, "b.mp4") is Outcome.COMPLETED
    requests = engine.requests  # type: ignore[attr-defined]
    assert requests["CompleteMultipartUpload"] == 1
    # Ceph RGW 16.2 answers CompleteMultipartUpload with an empty ETag: one HEAD verifies the object.
    assert requests["HeadObject"] == (1 if isinstance(server, CephRGW) else 0)


def test_file_renamed_during_upload_goes_up_under_its_new_name(
    make_engine: Callable[..., Engine], client: Any
) -> None:
    engine = make_engine(idle_seconds=30)
    old = write_random(engine.input_dir / "old.mp4", 11 * MiB)
    thread, outcome = run_in_thread(engine, "old.mp4")
    wait_for(lambda: len(recorded_parts(engine, "old.mp4")) >= 1, timeout=30, what="a part")
    new = engine.input_dir / "new.mp4"
    old.rename(new)
    thread.join(timeout=30)
    assert outcome == [Outcome.FAILED]
    record = engine.store.find_by_relpath("old.mp4")
    assert record is not None and record.last_error == "file deleted or renamed during upload"
    assert run_job(engine, "new.mp4") is Outcome.COMPLETED  # what the watcher does on the move event
    assert sha256_object(client, "new.mp4") == sha256_file(new)
    keys = {item["Key"] for item in client.list_objects_v2(Bucket=BUCKET)["Contents"]}
    assert keys == {"new.mp4", "new.mp4.manifest.json"}


def test_writer_appending_after_completion_replaces_the_object(make_engine: Callable[..., Engine], client: Any) -> None:
    engine = make_engine()
    path = write_random(engine.input_dir / "long.mp4", 6 * MiB)
    assert run_job(engine, "long.mp4") is Outcome.COMPLETED
    first = engine.store.find_by_relpath("long.mp4")
    with open(path, "ab") as handle:  # the writer comes back after a pause longer than idle_seconds
        handle.write(os.urandom(2 * MiB))
    assert run_job(engine, "long.mp4") is Outcome.COMPLETED
    second = engine.store.find_by_relpath("long.mp4")
    assert first is not None and second is not None and second.id != first.id
    assert sha256_object(client, "long.mp4") == sha256_file(path)
    manifest = read_manifest(client, "long.mp4")
    assert manifest is not None and manifest["size"] == 8 * MiB and manifest["stream_id"] == second.id


def test_unreadable_file_fails_with_a_clear_reason(
    make_engine: Callable[..., Engine], monkeypatch: pytest.MonkeyPatch
) -> None:
    import builtins

    engine = make_engine()
    path = write_random(engine.input_dir / "locked.mp4", 6 * MiB)
    real_open = builtins.open

    def deny(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        # Fault injection: tests run as root, which chmod 000 does not stop.
        if str(file) == str(path) and "r" in mode:
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", deny)
    assert run_job(engine, "locked.mp4") is Outcome.FAILED
    record = engine.store.find_by_relpath("locked.mp4")
    assert record is not None and record.state is StreamState.FAILED
    assert record.last_error is not None and record.last_error.startswith(f"permission denied reading {path}")


def test_growing_duplicate_is_aborted_and_copied_at_finalize(make_engine: Callable[..., Engine], client: Any) -> None:
    engine = make_engine()
    original = write_random(engine.input_dir / "orig.mp4", 11 * MiB)
    assert run_job(engine, "orig.mp4") is Outcome.COMPLETED
    copy = engine.input_dir / "copy.mp4"
    copy.write_bytes(b"")
    thread, outcome = run_in_thread(engine, "copy.mp4")  # not final: parts go up while it "grows"
    with open(original, "rb") as src, open(copy, "ab") as dst:
        for chunk in iter(lambda: src.read(MiB), b""):
            dst.write(chunk)
            dst.flush()
            time.sleep(0.05)
    thread.join(timeout=60)
    assert outcome == [Outcome.COMPLETED]
    manifest = read_manifest(client, "copy.mp4")
    assert manifest is not None and manifest["dedup_of"] == "orig.mp4"
    assert sha256_object(client, "copy.mp4") == sha256_file(original)
    assert engine.requests["UploadPart"] >= 4  # type: ignore[attr-defined]  # 2 for orig, some of copy's before it was done
    assert engine.requests["AbortMultipartUpload"] == 1 and engine.requests["CopyObject"] == 1  # type: ignore[attr-defined]


def test_cancel_from_the_store_stops_a_running_upload(make_engine: Callable[..., Engine], client: Any) -> None:
    engine = make_engine(idle_seconds=30)
    write_random(engine.input_dir / "cancel.mp4", 16 * MiB)
    thread, outcome = run_in_thread(engine, "cancel.mp4")
    wait_for(lambda: len(recorded_parts(engine, "cancel.mp4")) >= 1, timeout=30, what="a part")
    record = engine.store.find_by_relpath("cancel.mp4")
    assert record is not None
    record.move_to(StreamState.FAILED, error="cancelled by operator")  # what `chunkd cancel` writes
    engine.store.save_stream(record)
    thread.join(timeout=15)
    assert outcome == [Outcome.FAILED]
    stored = engine.store.get_stream(record.id)
    assert stored is not None and stored.last_error == "cancelled by operator"
    assert engine.requests["AbortMultipartUpload"] == 1  # type: ignore[attr-defined]
    assert read_manifest(client, "cancel.mp4") is None
