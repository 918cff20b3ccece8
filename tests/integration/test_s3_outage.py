"""A real `chunkd run` through a 20 s S3 outage: the endpoint's circuit breaker keeps the request
rate bounded while the server is gone, and every object completes, byte-identical, once it is back.

The outage stops the S3 endpoint and keeps its data: moto stopped and started again, or Ceph RGW's
radosgw killed and started again while its monitor and OSD keep every object and upload.

A stopped server receives nothing, so the requests are counted on the client's side of the wire:
while the server is stopped, a listener on its port accepts every connection and closes it at once
(as a load balancer with no healthy backend does). A connection closed that way is never reused, so
each request chunkd sends during the outage is one connection counted.
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import pytest

from tests.support.bucket import BUCKET, read_manifest, sha256_object
from tests.support.ceph_rgw import CephRGW
from tests.support.daemon import DaemonProcess, wait_for
from tests.support.files import drop, sha256_file, write_random
from tests.support.pause import PausableServer, start_endpoint, stop_endpoint
from tests.support.s3_servers import MotoServer
from tests.support.sizes import MiB

OUTAGE_SECONDS = 20.0
FILES = 4
FILE_SIZE = 20 * MiB
PARTS_PER_FILE = 4  # of 5 MiB
PART_CONCURRENCY = 4
BREAKER_FAILURES = 5
# The breaker probes 0.7, 2.1, 4.9 and 10.5 s after it opens (the cooldown doubles), and next at
# 21.7 s: just after the 20 s outage, so the test does not wait long for the recovery.
BREAKER_COOLDOWN = 0.7
# 80 MiB at 20 MB/s take 4 s: the outage surely hits unfinished uploads, even on a server (RGW)
# that stores parts faster than the test can look.
BANDWIDTH_LIMIT = "20MB"


@dataclass
class DroppingListener:
    """Accepts every connection on (host, port) and closes it unanswered, counting them."""

    host: str
    port: int
    connections: int = 0
    _sock: socket.socket | None = None
    _thread: threading.Thread | None = None
    _done: threading.Event = field(default_factory=threading.Event)

    def start(self) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        sock.listen(128)
        sock.settimeout(0.05)
        self._sock = sock
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        assert self._sock is not None
        while not self._done.is_set():
            try:
                connection, _ = self._sock.accept()
            except TimeoutError:
                continue
            self.connections += 1
            connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            connection.close()  # reset at once, unanswered

    def stop(self) -> None:
        self._done.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._sock is not None:
            self._sock.close()


@contextmanager
def outage(server: PausableServer) -> Iterator[DroppingListener]:
    """The endpoint really stopped (its data kept); the listener stands on its port until it is back."""
    stop_endpoint(server)
    listener = DroppingListener(server.host, server.port)
    listener.start()
    try:
        yield listener
    finally:
        listener.stop()
        start_endpoint(server)


def keys_sending(server: PausableServer) -> set[str]:
    """Keys with parts on the wire: seen arriving by moto; on RGW, keys with an open upload."""
    if isinstance(server, MotoServer):
        return {key for key, _ in server.uploaded_parts()}
    uploads = server.client().list_multipart_uploads(Bucket=BUCKET).get("Uploads", [])
    return {upload["Key"] for upload in uploads}


def parts_stored(server: PausableServer) -> int:
    """Parts the server has acknowledged (moto's log) or holds in open uploads (RGW's ListParts)."""
    if isinstance(server, MotoServer):
        return len(server.uploaded_parts(ok_only=True))
    client = server.client()
    stored = 0
    for upload in client.list_multipart_uploads(Bucket=BUCKET).get("Uploads", []):
        try:
            stored += len(client.list_parts(Bucket=BUCKET, Key=upload["Key"], UploadId=upload["UploadId"]).get("Parts", []))
        except client.exceptions.NoSuchKey:  # RGW's answer for an upload completed meanwhile
            stored += PARTS_PER_FILE
    return stored


def probes_within(seconds: float, cooldown: float, cap: float = 60.0) -> int:
    """Half-open probes an open breaker makes in `seconds`, its cooldown doubling after each."""
    elapsed, probes = 0.0, 0
    while elapsed + cooldown <= seconds:
        elapsed += cooldown
        probes += 1
        cooldown = min(cooldown * 2, cap)
    return probes


@dataclass
class OutageRun:
    sent_during_outage: int
    sources: dict[str, Path]
    daemon: DaemonProcess


def run_through_outage(
    chunkd_daemon: Callable[..., DaemonProcess], server: PausableServer, folder: Path, **settings: object
) -> OutageRun:
    """Drop the files into folder/input, stop S3 for OUTAGE_SECONDS as soon as parts are on the
    wire, then bring it back."""
    input_dir = folder / "input"
    input_dir.mkdir(parents=True, exist_ok=True)
    daemon = chunkd_daemon(
        server, state_url=f"sqlite:///{folder / 'state.db'}", extra_env={"CHUNKD_INPUT_DIR": str(input_dir)},
        log_name=f"{folder.name}.log", part_size="5MiB", file_concurrency=FILES,
        part_concurrency=PART_CONCURRENCY, bandwidth_limit=BANDWIDTH_LIMIT, **settings,
    )
    wait_for(lambda: daemon.logged("watching"), timeout=30, what="the daemon watching")
    sources = {}
    for number in range(FILES):
        name = f"cam{number}.mp4"
        sources[name] = drop(write_random(folder / name, FILE_SIZE), input_dir, name)
    def every_file_sending() -> bool:
        return len(keys_sending(server)) == FILES

    wait_for(every_file_sending, timeout=60, interval=0.02, what="parts of every file on the wire")
    assert parts_stored(server) < FILES * PARTS_PER_FILE, "the outage must hit unfinished uploads"

    with outage(server) as listener:
        time.sleep(OUTAGE_SECONDS)  # the outage itself: nothing to poll for
        sent = listener.connections
    return OutageRun(sent, sources, daemon)


def assert_all_completed(server: PausableServer, sources: dict[str, Path], timeout: float) -> None:
    client = server.client()
    for name, source in sources.items():
        manifest = wait_for(partial(read_manifest, client, name), timeout=timeout, what=f"manifest of {name}")
        assert manifest["size"] == FILE_SIZE
        assert manifest["sha256"] == sha256_file(source) == sha256_object(client, name)
        assert sum(part["size"] for part in manifest["parts"]) == FILE_SIZE
    if not isinstance(server, MotoServer):
        return  # the requests below are moto's count
    # One successful CompleteMultipartUpload per object. A Complete whose answer the outage cut
    # is sent again and gets NoSuchUpload; the object is then adopted only if it matches.
    completed = [r.key for r in server.requests() if r.operation == "CompleteMultipartUpload" and r.status == 200]
    assert sorted(completed) == sorted(sources)


def test_breaker_bounds_requests_during_an_outage_and_every_object_completes(
    chunkd_daemon: Callable[..., DaemonProcess], pausable: PausableServer, tmp_path: Path
) -> None:
    run = run_through_outage(
        chunkd_daemon, pausable, tmp_path / "breaker",
        breaker_failures=BREAKER_FAILURES, breaker_cooldown=BREAKER_COOLDOWN,
    )

    # Each call under way when S3 went away may go out once more (it was let through while the
    # breaker was still closed), a few retries may, until the breaker has counted its failures;
    # after that only the half-open probes do.
    in_flight = FILES * PART_CONCURRENCY + FILES  # parts, plus one other call per file
    bound = in_flight + BREAKER_FAILURES + probes_within(OUTAGE_SECONDS, BREAKER_COOLDOWN)
    print(f"with the breaker: {run.sent_during_outage} requests during the {OUTAGE_SECONDS:.0f}s outage (bound {bound})")
    assert 1 <= run.sent_during_outage <= bound

    assert_all_completed(pausable, run.sources, timeout=90)
    log = run.daemon.log_path.read_text()
    assert log.count("unreachable after") == 1  # one line when it opened, none per refused call
    assert "half-open: probing" in log
    assert log.count("closed: requests resume") == 1
    assert "giving up for now" not in log  # callers waited for the breaker, never bounced to RETRY_LATER


def test_sigterm_while_callers_wait_for_the_breaker_stops_promptly(
    chunkd_daemon: Callable[..., DaemonProcess], pausable: PausableServer, tmp_path: Path
) -> None:
    server = pausable
    folder = tmp_path / "sigterm"
    settings = {"part_size": "5MiB", "breaker_cooldown": 60}  # open for a minute: only the stop can end the wait
    first = chunkd_daemon(
        server, state_url=f"sqlite:///{folder / 'state.db'}", extra_env={"CHUNKD_INPUT_DIR": str(folder / "input")},
        log_name="first.log", **settings,
    )
    wait_for(lambda: first.logged("watching"), timeout=30, what="the daemon watching")
    source = drop(write_random(tmp_path / "long.mp4", 40 * MiB), folder / "input", "long.mp4")
    wait_for(lambda: keys_sending(server), timeout=60, interval=0.02, what="parts on the wire")
    stop_endpoint(server)
    try:
        wait_for(lambda: first.logged("circuit open for 60s"), timeout=60, what="the breaker opening")
        started = time.monotonic()
        assert first.terminate(timeout=30) == 0
        assert time.monotonic() - started < 10, "the stop must release callers waiting for the breaker"
    finally:
        start_endpoint(server)

    second = chunkd_daemon(
        server, state_url=f"sqlite:///{folder / 'state.db'}", extra_env={"CHUNKD_INPUT_DIR": str(folder / "input")},
        log_name="second.log", **settings,
    )
    client = server.client()
    manifest = wait_for(lambda: read_manifest(client, "long.mp4"), timeout=90, what="manifest of long.mp4")
    assert manifest["sha256"] == sha256_file(source) == sha256_object(client, "long.mp4")
    assert second.process is not None and second.process.poll() is None


@pytest.fixture
def slow_only(request: pytest.FixtureRequest) -> None:
    """Runs only when a -m expression selected it (`-m slow`), never in the default run."""
    if "slow" not in (request.config.getoption("-m") or ""):
        pytest.skip("the same outage with and without the breaker, side by side: run with `-m slow`")


@pytest.mark.slow
def test_without_the_breaker_the_same_outage_is_a_retry_storm(
    slow_only: None, chunkd_daemon: Callable[..., DaemonProcess], pausable: PausableServer, tmp_path: Path
) -> None:
    server = pausable
    guarded = run_through_outage(
        chunkd_daemon, server, tmp_path / "breaker",
        breaker_failures=BREAKER_FAILURES, breaker_cooldown=BREAKER_COOLDOWN,
    )
    assert_all_completed(server, guarded.sources, timeout=90)
    guarded.daemon.terminate()
    if isinstance(server, CephRGW):
        server.empty_bucket(BUCKET)
    else:
        server.reset()
        server.create_bucket(BUCKET)
        server.reset_counts()

    unguarded = run_through_outage(chunkd_daemon, server, tmp_path / "no-breaker", breaker_failures=1_000_000)

    print(f"requests during a {OUTAGE_SECONDS:.0f}s outage: {guarded.sent_during_outage} with the breaker, "
          f"{unguarded.sent_during_outage} without")
    assert unguarded.sent_during_outage >= 3 * guarded.sent_during_outage
    # Without it the files gave up (RETRY_LATER) and come back after the scheduler's 30 s delay.
    assert_all_completed(server, unguarded.sources, timeout=150)
