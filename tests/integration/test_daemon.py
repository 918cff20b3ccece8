"""`chunkd run` as a real process against a real redis-server / SQLite file and a real S3 server:
each S3 server in turn where the server's part matters (multipart uploads, resume, a warm stop);
moto where what is checked is a request count only moto keeps."""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from chunkd.store import open_store
from tests.support.bucket import BUCKET, parts_on_server, read_manifest, sha256_object
from tests.support.daemon import SCAN_LINE, DaemonProcess, wait_for, wait_logged
from tests.support.files import drop, sha256_file, write_random
from tests.support.s3_servers import MotoServer
from tests.support.sizes import MiB


def manifests(client: Any) -> set[str]:
    return {item["Key"] for item in client.list_objects_v2(Bucket=BUCKET).get("Contents", [])
            if item["Key"].endswith(".manifest.json")}


def state_url_for(kind: str, tmp_path: Path, redis_url: Callable[[], str]) -> str:
    return redis_url() if kind == "redis" else f"sqlite:///{tmp_path / 'state.db'}"


@pytest.fixture
def start_daemon(chunkd_daemon: Callable[..., DaemonProcess], request: pytest.FixtureRequest) -> Callable[..., DaemonProcess]:
    """Starts daemons on the test's `server` (each S3 server in turn) if it takes one, else on moto."""
    s3 = request.getfixturevalue("server" if "server" in request.fixturenames else "moto")
    return lambda state_url, **settings: chunkd_daemon(s3, state_url=state_url, **settings)


@pytest.fixture
def lazy_redis(request: pytest.FixtureRequest) -> Callable[[], str]:
    return lambda: request.getfixturevalue("redis_url")


def test_three_files_land_byte_identical_with_manifests(
    start_daemon: Callable[..., DaemonProcess], server: Any, client: Any, input_dir: Path, redis_url: str,
    tmp_path: Path,
) -> None:
    daemon = start_daemon(redis_url)
    sizes = {"small.mp4": 1024, "medium.mp4": 30 * MiB, "sub/large.mkv": 100 * MiB}
    (input_dir / "sub").mkdir()
    for name, size in sizes.items():
        write_random(input_dir / name, size)  # written in place, like `cp` into the folder
    for name, size in sizes.items():
        manifest = wait_for(partial(read_manifest, client, name), timeout=120, what=f"manifest of {name}")
        source = input_dir / name
        assert sha256_object(client, name) == sha256_file(source)
        assert manifest["size"] == size
        assert manifest["sha256"] == sha256_file(source)
        assert sum(part["size"] for part in manifest["parts"]) == size
        assert manifest["source"]["relpath"] == name
    if isinstance(server, MotoServer):  # only moto counts requests
        counts = server.counts()
        assert counts["PutObject"] == 1 + 3  # the 1 KiB file, plus three manifests
        assert counts["CompleteMultipartUpload"] == 2
    assert daemon.process is not None and daemon.process.poll() is None
    about_files = [line for line in daemon.log_lines() if line.get("relpath") in sizes]
    assert {line["event"] for line in about_files} >= {"discovered", "completed"}
    assert all(line.get("stream_id") for line in about_files), "every line about a file names its stream"


def test_growing_file_is_uploaded_while_it_grows(
    start_daemon: Callable[..., DaemonProcess], moto: MotoServer, input_dir: Path, redis_url: str
) -> None:
    start_daemon(redis_url, part_size="5MiB", idle_seconds=3)
    path = input_dir / "recording.ts"
    parts_before_writer_stopped = 0
    with open(path, "ab") as handle:
        for burst in range(8):  # 8 bursts of 3 MiB, 2.5 s apart: ~20 s of recording
            handle.write(os.urandom(3 * MiB))
            handle.flush()
            if burst < 7:
                time.sleep(2.5)
        parts_before_writer_stopped = len(moto.uploaded_parts(key="recording.ts", ok_only=True))
    client = moto.client()
    manifest = wait_for(lambda: read_manifest(client, "recording.ts"), timeout=60, what="manifest")
    assert parts_before_writer_stopped >= 3, "parts should be sent while the file is still growing"
    assert sha256_object(client, "recording.ts") == sha256_file(path)
    assert manifest["size"] == 24 * MiB
    assert [p["size"] for p in manifest["parts"]] == [5 * MiB] * 4 + [4 * MiB]


def _recorded_parts(state_url: str, relpath: str) -> set[int]:
    store = open_store(state_url)
    try:
        record = store.find_by_relpath(relpath)
        return set() if record is None else {part.number for part in store.list_parts(record.id)}
    finally:
        store.close()


@pytest.mark.parametrize(
    ("store_kind", "server"),
    [("redis", "moto"), ("sqlite", "moto"), ("sqlite", "rclone"), ("sqlite", "rgw")],
    indirect=["server"],  # every server once; the store's part does not depend on the server
)
def test_kill_9_mid_upload_resumes_without_resending_acknowledged_parts(
    store_kind: str, start_daemon: Callable[..., DaemonProcess], server: Any, client: Any, input_dir: Path,
    tmp_path: Path, lazy_redis: Callable[[], str],
) -> None:
    state_url = state_url_for(store_kind, tmp_path, lazy_redis)
    settings: dict[str, Any] = {"part_size": "8MiB", "part_concurrency": 4, "bandwidth_limit": "40MB"}
    total_parts = 25  # 200 MiB in 8 MiB parts
    source = drop(write_random(tmp_path / "big.mp4", 200 * MiB), input_dir, "big.mp4")
    first = start_daemon(state_url, **settings)
    wait_for(lambda: len(_recorded_parts(state_url, "big.mp4")) >= 6, timeout=60, what="6 checkpointed parts")
    first.kill()
    acknowledged = _recorded_parts(state_url, "big.mp4")
    assert 6 <= len(acknowledged) < total_parts, "the kill should land in the middle of the upload"
    assert acknowledged <= parts_on_server(client, "big.mp4")
    if not isinstance(server, MotoServer):
        second = start_daemon(state_url, **settings)
        wait_for(lambda: read_manifest(client, "big.mp4"), timeout=120, what="manifest after restart")
        assert sha256_object(client, "big.mp4") == sha256_file(source)
        assert second.logged("resumed") and not second.logged("starting a fresh upload")
        return  # what was sent again only moto counts
    server.reset_counts()

    start_daemon(state_url, **settings)
    wait_for(lambda: read_manifest(client, "big.mp4"), timeout=120, what="manifest after restart")
    assert sha256_object(client, "big.mp4") == sha256_file(source)
    resent = server.uploaded_parts(key="big.mp4")
    assert not {number for _, number in resent} & acknowledged, "an acknowledged part was sent again"
    in_flight = settings["part_concurrency"]
    assert len(resent) <= total_parts - len(acknowledged) + in_flight
    assert server.counts()["CreateMultipartUpload"] == 0, "the upload should be resumed, not restarted"


def test_upload_deleted_on_server_between_runs_starts_fresh(
    start_daemon: Callable[..., DaemonProcess], server: Any, client: Any, input_dir: Path, tmp_path: Path
) -> None:
    state_url = f"sqlite:///{tmp_path / 'state.db'}"
    settings = {"part_size": "5MiB", "bandwidth_limit": "20MB"}
    source = drop(write_random(tmp_path / "clip.mov", 60 * MiB), input_dir, "clip.mov")
    first = start_daemon(state_url, **settings)
    wait_for(lambda: len(_recorded_parts(state_url, "clip.mov")) >= 2, timeout=60, what="2 checkpointed parts")
    first.kill()
    uploads = client.list_multipart_uploads(Bucket=BUCKET).get("Uploads", [])
    assert len(uploads) == 1
    client.abort_multipart_upload(Bucket=BUCKET, Key="clip.mov", UploadId=uploads[0]["UploadId"])
    if isinstance(server, MotoServer):
        server.reset_counts()

    second = start_daemon(state_url, **settings)
    manifest = wait_for(lambda: read_manifest(client, "clip.mov"), timeout=120, what="manifest")
    assert sha256_object(client, "clip.mov") == sha256_file(source)
    assert manifest["sha256"] == sha256_file(source)
    if isinstance(server, MotoServer):  # only moto counts requests
        assert server.counts()["CreateMultipartUpload"] == 1
        assert len(server.uploaded_parts(key="clip.mov", ok_only=True)) == 12  # every part, sent again
    assert second.logged("no longer exists on the server")


def test_sigterm_stops_cleanly_and_the_next_run_finishes(
    start_daemon: Callable[..., DaemonProcess], server: Any, client: Any, input_dir: Path, tmp_path: Path
) -> None:
    state_url = f"sqlite:///{tmp_path / 'state.db'}"
    settings = {"part_size": "5MiB", "bandwidth_limit": "20MB", "part_concurrency": 2}
    source = drop(write_random(tmp_path / "talk.mp4", 50 * MiB), input_dir, "talk.mp4")
    first = start_daemon(state_url, **settings)
    wait_for(lambda: len(_recorded_parts(state_url, "talk.mp4")) >= 2, timeout=60, what="2 checkpointed parts")
    assert first.terminate(timeout=30) == 0
    recorded = _recorded_parts(state_url, "talk.mp4")
    if isinstance(server, MotoServer):
        sent = {number for _, number in server.uploaded_parts(key="talk.mp4", ok_only=True)}
        assert sent == recorded, "every part the server acknowledged is checkpointed after a warm stop"
        server.reset_counts()
    assert parts_on_server(client, "talk.mp4") == recorded, "every part the server holds is checkpointed"
    start_daemon(state_url, **settings)
    wait_for(lambda: read_manifest(client, "talk.mp4"), timeout=120, what="manifest")
    assert sha256_object(client, "talk.mp4") == sha256_file(source)
    if isinstance(server, MotoServer):  # only moto counts requests
        assert not {n for _, n in server.uploaded_parts(key="talk.mp4")} & recorded


def test_startup_scan_picks_up_files_dropped_while_down(
    start_daemon: Callable[..., DaemonProcess], moto: MotoServer, input_dir: Path, tmp_path: Path
) -> None:
    write_random(input_dir / "early.webm", 2 * MiB)
    (input_dir / "notes.txt").write_text("not a video")
    (input_dir / ".hidden.mp4").write_bytes(b"x" * 10)
    (input_dir / "partial.mp4.part").write_bytes(b"x" * 10)
    outside = write_random(tmp_path / "secret.mp4", 1024)
    (input_dir / "link.mp4").symlink_to(outside)
    daemon = start_daemon(f"sqlite:///{tmp_path / 'state.db'}", log_level="DEBUG")
    client = moto.client()
    wait_for(lambda: read_manifest(client, "early.webm"), timeout=30, what="manifest of early.webm")
    # The startup scan says how many files it handed over; a wrongly accepted one is among them,
    # and its manifest is what to wait for before the bucket can say it is not there.
    startup_scan = wait_logged(daemon, SCAN_LINE, timeout=30)[0]
    offered = int(startup_scan["event"].split()[2])
    wait_for(lambda: len(manifests(client)) >= offered, timeout=30, what=f"a manifest for each of {offered} file(s)")
    keys = {item["Key"] for item in client.list_objects_v2(Bucket=BUCKET).get("Contents", [])}
    assert keys == {"early.webm", "early.webm.manifest.json"}


def test_restart_does_not_upload_a_completed_file_again(
    start_daemon: Callable[..., DaemonProcess], moto: MotoServer, input_dir: Path, tmp_path: Path
) -> None:
    state_url = f"sqlite:///{tmp_path / 'state.db'}"
    # One slot (files × parts in flight): files are looked at one after another.
    settings = {"file_concurrency": 1, "part_concurrency": 1, "log_level": "DEBUG"}
    write_random(input_dir / "done.mp4", 6 * MiB)
    first = start_daemon(state_url, **settings)
    client = moto.client()
    wait_for(lambda: read_manifest(client, "done.mp4"), timeout=30, what="manifest")
    assert first.terminate() == 0
    moto.reset_counts()
    second = start_daemon(state_url, log_name="second.log", **settings)
    startup_scan = wait_logged(second, SCAN_LINE, timeout=30)[0]
    assert startup_scan["event"] == "scan offered 1 files", "the startup scan should hand done.mp4 over"
    # Nothing logs a file found already uploaded; a newer file dropped after it is queued behind it
    # for the one worker, so once that one is up, done.mp4 has been looked at.
    after = drop(write_random(tmp_path / "after.mp4", 1024), input_dir, "after.mp4")
    wait_for(lambda: read_manifest(client, "after.mp4"), timeout=30, what="manifest of a file dropped later")
    assert sha256_object(client, "after.mp4") == sha256_file(after)
    counts = Counter(r.operation for r in moto.requests() if r.key.startswith("done.mp4"))
    assert counts["UploadPart"] + counts["PutObject"] == 0
