"""Several daemons on one Redis, and Redis itself going away: real processes, real servers.

Each test runs real `chunkd run` processes against the moto server (each S3 server in turn where the
bucket is what chunkd rebuilds its state from) and a real redis-server; faults
are real too (SIGKILL, SIGSTOP/SIGCONT, redis-server stopped and restarted, with or without its data).
"""

from __future__ import annotations

import json
import os
import random
import signal
import time
from collections import Counter
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import redis

from chunkd.model.states import StreamState
from chunkd.s3.devserver import free_port
from chunkd.store.redis import RedisStore
from tests.support.bucket import parts_on_server, read_manifest, sha256_object
from tests.support.cli import run_chunkd
from tests.support.daemon import DaemonProcess, wait_for, wait_logged, wait_scans
from tests.support.files import sha256_file, write_random
from tests.support.http_client import http_get
from tests.support.redis_server import RedisServer
from tests.support.s3_servers import MotoServer
from tests.support.sizes import MiB

LEASE = {"lease_seconds": 3, "rescan_seconds": 1, "part_size": "5MiB"}


def acked_parts(moto: MotoServer, key: str) -> set[int]:
    return {number for _, number in moto.uploaded_parts(key=key, ok_only=True)}



def stream_state(url: str, relpath: str) -> StreamState | None:
    store = RedisStore.from_url(url)
    try:
        found = store.find_by_relpath(relpath)
        return found.state if found else None
    finally:
        store.close()


@pytest.fixture
def own_redis() -> Iterator[Callable[..., RedisServer]]:
    """A redis-server of the test's own, which the test may stop, wipe and start again."""
    servers: list[RedisServer] = []

    def start(*, persistent: bool) -> RedisServer:
        server = RedisServer(persistent=persistent)
        server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.close()


def test_two_daemons_upload_each_file_exactly_once(
    chunkd_daemon: Callable[..., DaemonProcess], moto: MotoServer, redis_url: str, input_dir: Path, tmp_path: Path
) -> None:
    first = chunkd_daemon(moto, state_url=redis_url, log_name="a.log", **LEASE)
    second = chunkd_daemon(moto, state_url=redis_url, log_name="b.log", **LEASE)
    rng = random.Random(7)
    sources: dict[str, Path] = {}
    for index in range(40):
        size = 12 * MiB if index % 10 == 0 else rng.randint(10_000, 300_000)
        staged = write_random(tmp_path / f"f{index:02d}.mp4", size)
        sources[staged.name] = staged
    for name, staged in sources.items():
        os.replace(staged, input_dir / name)
    client = moto.client()
    wait_for(lambda: all(read_manifest(client, name) for name in sources), timeout=180, what="40 manifests")

    creations = Counter(
        request.key for request in moto.requests()
        if request.operation in ("CreateMultipartUpload", "PutObject") and not request.key.endswith(".manifest.json")
    )
    assert creations == Counter({name: 1 for name in sources}), "every object started exactly once"
    completes = Counter(request.key for request in moto.requests() if request.operation == "CompleteMultipartUpload")
    assert all(count == 1 for count in completes.values())
    for name in sources:
        assert sha256_object(client, name) == sha256_file(input_dir / name)
    logs = first.log_path.read_text() + second.log_path.read_text()
    assert "uploaded" in logs or "completed" in logs
    worked = [sum('"completed"' in line for line in p.log_path.read_text().splitlines()) for p in (first, second)]
    assert sum(worked) == 40
    assert first.process and first.process.poll() is None and second.process and second.process.poll() is None


def test_sigkill_one_daemon_the_other_finishes_without_resending(
    chunkd_daemon: Callable[..., DaemonProcess], moto: MotoServer, redis_url: str, input_dir: Path, tmp_path: Path
) -> None:
    source = write_random(input_dir / "big.mp4", 60 * MiB)
    victim = chunkd_daemon(moto, state_url=redis_url, log_name="victim.log", bandwidth_limit="6MB",
                           part_concurrency=2, **LEASE)
    wait_for(lambda: len(acked_parts(moto, "big.mp4")) >= 3, timeout=60, what="3 acknowledged parts")
    survivor = chunkd_daemon(moto, state_url=redis_url, log_name="survivor.log", log_level="DEBUG", **LEASE)
    wait_logged(survivor, "another daemon holds this file's lease", relpath="big.mp4", timeout=30)
    assert stream_state(redis_url, "big.mp4") in (StreamState.UPLOADING, StreamState.FINALIZING)
    victim.kill()
    acknowledged = acked_parts(moto, "big.mp4")
    before = len(moto.requests())

    client = moto.client()
    manifest = wait_for(lambda: read_manifest(client, "big.mp4"), timeout=120, what="manifest")
    resent = {r.part_number for r in moto.requests()[before:] if r.operation == "UploadPart" and r.part_number} & acknowledged
    assert resent == set(), f"parts acknowledged before the kill were sent again: {sorted(resent)}"
    assert manifest["sha256"] == sha256_file(source) == sha256_object(client, "big.mp4")
    assert sum(r.operation == "CreateMultipartUpload" for r in moto.requests()) == 1
    assert survivor.logged("took over") or survivor.logged("resumed")


def test_paused_daemon_loses_its_lease_and_cannot_overwrite_the_new_owner(
    chunkd_daemon: Callable[..., DaemonProcess], moto: MotoServer, redis_url: str, input_dir: Path, tmp_path: Path
) -> None:
    source = write_random(input_dir / "long.mp4", 50 * MiB)
    paused = chunkd_daemon(moto, state_url=redis_url, log_name="paused.log", bandwidth_limit="5MB",
                           part_concurrency=2, log_level="DEBUG", **LEASE)
    wait_for(lambda: len(acked_parts(moto, "long.mp4")) >= 2, timeout=60, what="2 acknowledged parts")
    assert paused.process is not None
    os.kill(paused.process.pid, signal.SIGSTOP)
    try:
        successor = chunkd_daemon(moto, state_url=redis_url, log_name="successor.log", **LEASE)
        client = moto.client()
        manifest = wait_for(lambda: read_manifest(client, "long.mp4"), timeout=120, what="manifest by the successor")
        wait_for(lambda: successor.logged('"completed"'), timeout=30, what="the successor to log completion")
    finally:
        os.kill(paused.process.pid, signal.SIGCONT)
    wait_for(lambda: paused.logged("another daemon took over"), timeout=30, what="the paused daemon to stand down")
    wait_scans(paused, 2)  # a whole rescan since: what would hand the file to it again
    assert stream_state(redis_url, "long.mp4") is StreamState.COMPLETED, "a late write went through"
    assert manifest["sha256"] == sha256_file(source) == sha256_object(client, "long.mp4")
    assert sum(r.operation == "CompleteMultipartUpload" and r.key == "long.mp4" for r in moto.requests()) == 1
    assert paused.process.poll() is None, "standing down is not crashing"


def test_redis_down_for_20s_then_back_everything_completes(
    chunkd_daemon: Callable[..., DaemonProcess], moto: MotoServer, own_redis: Callable[..., RedisServer],
    input_dir: Path,
) -> None:
    server = own_redis(persistent=True)
    sources = [write_random(input_dir / f"cam{i}.mp4", 30 * MiB) for i in range(3)]
    port = free_port()
    daemon = chunkd_daemon(moto, state_url=server.url, bandwidth_limit="8MB", part_concurrency=2,
                           http_addr=f"127.0.0.1:{port}", **LEASE)
    ready = f"http://127.0.0.1:{port}/readyz"
    wait_for(lambda: sum(len(acked_parts(moto, s.name)) for s in sources) >= 3, timeout=60, what="3 parts")
    assert http_get(ready)[0] == 200
    server.stop()
    outage_started = time.monotonic()
    _, body = wait_for(lambda: (r := http_get(ready))[0] == 503 and r, timeout=15, what="/readyz 503")
    assert json.loads(body)["store"] is not True and json.loads(body)["s3"] is True
    time.sleep(max(0.0, 20 - (time.monotonic() - outage_started)))
    assert daemon.process is not None and daemon.process.poll() is None, "the daemon stays up"
    server.start()
    wait_for(lambda: http_get(ready)[0] == 200, timeout=30, what="/readyz 200 again")
    client = moto.client()
    for source in sources:
        manifest = wait_for(partial(read_manifest, client, source.name), timeout=120, what=f"{source.name}")
        assert manifest["sha256"] == sha256_file(source) == sha256_object(client, source.name)
        assert stream_state(server.url, source.name) is StreamState.COMPLETED
    lines = daemon.log_path.read_text().splitlines()
    assert sum("state store unreachable" in line for line in lines) == 1, "one line per state change"
    assert sum("state store reachable again" in line for line in lines) == 1


def test_redis_restarted_empty_mid_upload_is_rebuilt_from_the_bucket(
    chunkd_daemon: Callable[..., DaemonProcess], server: Any, client: Any, own_redis: Callable[..., RedisServer],
    input_dir: Path,
) -> None:
    """The upload is found again with ListMultipartUploads and ListParts, on every S3 server."""
    s3, server = server, own_redis(persistent=False)  # a restart loses everything, as without persistence
    source = write_random(input_dir / "rec.mp4", 60 * MiB)
    daemon = chunkd_daemon(s3, state_url=server.url, bandwidth_limit="8MB", part_concurrency=2, **LEASE)
    wait_for(lambda: len(parts_on_server(client, "rec.mp4")) >= 3, timeout=60, what="3 parts on the server")
    before = redis.Redis.from_url(server.url).keys("chunkd:stream:*")
    server.stop()
    server.start()
    assert before and not redis.Redis.from_url(server.url).exists(*before), "the restart lost the records"

    manifest = wait_for(lambda: read_manifest(client, "rec.mp4"), timeout=120, what="manifest")
    assert manifest["sha256"] == sha256_file(source) == sha256_object(client, "rec.mp4")
    if isinstance(s3, MotoServer):  # only moto counts requests
        sent = Counter(number for _, number in s3.uploaded_parts(key="rec.mp4", ok_only=True))
        assert [n for n, count in sent.items() if count > 1] == [], "a part already on the server was sent again"
        assert sum(r.operation == "CreateMultipartUpload" for r in s3.requests()) == 1
    assert daemon.logged("the state store lost its records")
    assert daemon.logged("adopted an unfinished upload found in the bucket")
    assert stream_state(server.url, "rec.mp4") is StreamState.COMPLETED


def test_sqlite_state_refuses_a_second_daemon(
    chunkd_daemon: Callable[..., DaemonProcess], moto: MotoServer, tmp_path: Path
) -> None:
    state_url = f"sqlite:///{tmp_path / 'state.db'}"
    first = chunkd_daemon(moto, state_url=state_url, log_name="first.log")
    wait_for(lambda: first.logged("watching"), timeout=30, what="the first daemon to start")
    second = chunkd_daemon(moto, state_url=state_url, log_name="second.log")
    assert second.process is not None
    assert second.process.wait(timeout=30) == 1
    assert second.logged("in use by another chunkd daemon")
    assert first.process is not None and first.process.poll() is None


def test_files_uploaded_before_redis_came_back_empty_are_not_uploaded_again(
    chunkd_daemon: Callable[..., DaemonProcess], server: Any, client: Any, own_redis: Callable[..., RedisServer],
    input_dir: Path,
) -> None:
    """The records come back from the objects and manifests in the bucket, on every S3 server."""
    s3, server = server, own_redis(persistent=False)
    small = write_random(input_dir / "small.mp4", 200_000)
    large = write_random(input_dir / "large.mp4", 12 * MiB)
    first = chunkd_daemon(s3, state_url=server.url, log_name="first.log", **LEASE)
    for source in (small, large):
        wait_for(partial(read_manifest, client, source.name), timeout=60, what=f"manifest of {source.name}")
    first.terminate()
    server.stop()
    server.start()  # empty: nothing says these files were uploaded, except the bucket
    if isinstance(s3, MotoServer):
        s3.reset_counts()
    again = chunkd_daemon(s3, state_url=server.url, log_name="again.log", log_level="DEBUG", **LEASE)
    wait_for(lambda: stream_state(server.url, "small.mp4") is StreamState.COMPLETED
             and stream_state(server.url, "large.mp4") is StreamState.COMPLETED, timeout=30, what="records restored")
    # Each job logs the restore last, then ends without sending; two rescans since would offer them again.
    wait_logged(again, "record restored", more_than=1, timeout=30)
    wait_scans(again, 2)
    if isinstance(s3, MotoServer):  # only moto counts requests
        counts = s3.counts()
        assert counts["PutObject"] == 0 and counts["CreateMultipartUpload"] == 0 and counts["UploadPart"] == 0
    assert again.log_path.read_text().count("record restored") == 2
    touched = write_random(input_dir / "new.mp4", 100_000)  # a new file still goes up
    wait_for(lambda: read_manifest(client, touched.name), timeout=30, what="manifest of a new file")


def completed_in_status(env: dict[str, str]) -> set[str]:
    """The relpaths `chunkd status` shows COMPLETED."""
    result = run_chunkd("status", "--json", env=env)
    assert result.returncode == 0, result.stderr
    return {row["relpath"] for row in json.loads(result.stdout) if row["state"] == "COMPLETED"}


@pytest.mark.parametrize("loss", ["flushall", "restart"])
def test_records_lost_under_a_running_daemon_come_back_without_restarting_it(
    chunkd_daemon: Callable[..., DaemonProcess], moto: MotoServer, own_redis: Callable[..., RedisServer],
    input_dir: Path, loss: str,
) -> None:
    """Redis loses its data (FLUSHALL, or a restart without persistence) under a running daemon: the
    same process restores the COMPLETED records from the manifests in the bucket, as a start does,
    for files older than the run and files dropped during it, and sends no byte again."""
    server = own_redis(persistent=False)
    write_random(input_dir / "before.mp4", 300_000)  # older than the run: start-up lists its folder
    daemon = chunkd_daemon(moto, state_url=server.url, log_level="DEBUG", **LEASE)
    wait_logged(daemon, "watching", timeout=30)
    write_random(input_dir / "small.mp4", 200_000)
    write_random(input_dir / "large.mp4", 12 * MiB)
    names = {"before.mp4", "small.mp4", "large.mp4"}
    wait_for(lambda: completed_in_status(daemon.env) == names, timeout=60, what="3 files COMPLETED in status")
    pid = daemon.pid
    moto.reset_counts()
    if loss == "flushall":
        redis.Redis.from_url(server.url).flushall()
    else:
        server.kill()
        server.start()
    lost_at = time.monotonic()

    wait_for(lambda: completed_in_status(daemon.env) == names, timeout=60, what="the records back in status")
    print(f"records back in chunkd status {time.monotonic() - lost_at:.1f}s after the {loss}")
    # Each job logs the restore last, then ends without sending; two rescans since would offer them again.
    wait_logged(daemon, "record restored", more_than=len(names) - 1, timeout=30)
    wait_scans(daemon, 2)
    counts = moto.counts()
    assert counts["PutObject"] == 0 and counts["CreateMultipartUpload"] == 0 and counts["UploadPart"] == 0
    assert len(daemon.events("record restored")) == len(names)
    assert daemon.running and daemon.pid == pid
