"""A Redis failover under a running daemon, all real processes: a primary, one replica, three
sentinels (tests/support/redis_server.py SentinelGroup), a `chunkd run` on `redis+sentinel://`, and
an S3 server (`rclone serve s3`, and Ceph RGW, the strict one).

The primary is SIGKILLed while four files and two growing recordings are going up. Sentinel
promotes the replica, which replicated through a relay the test held shortly before the kill: the
last checkpoints the old primary acknowledged never reached it. The daemon finds the new primary,
and what it lost is found again (the job's own memory, or the bucket's ListParts). Every object must land byte-identical, no part
the old primary had recorded may be missing from its object, /readyz goes unready and ready again,
and the daemon says once that the primary changed.
"""

from __future__ import annotations

import json
import os
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any, Self

import pytest
import redis

from chunkd.model.states import StreamState
from chunkd.s3.devserver import free_port
from chunkd.store.redis import RedisStore
from tests.support.bucket import read_manifest, sha256_object
from tests.support.daemon import DaemonProcess, wait_for
from tests.support.files import sha256_file, write_random
from tests.support.redis_server import SentinelGroup
from tests.support.sizes import MiB

FILES = {f"cam{i}.mp4": 12 * MiB + i * 300_000 for i in range(4)}  # three 5 MiB parts each
GROWING = {"rec0.ts": 22 * MiB, "rec1.ts": 21 * MiB}  # appended 1 MiB at a time, across the failover
# Dropped once the replica stopped following: the short one completes before the kill, the long one
# is still going; either way its lease and records live on the old primary alone.
LATE_DONE, LATE_GOING = {"late-short.mp4": 6 * MiB}, {"late-long.mp4": 40 * MiB}
LATE = {**LATE_DONE, **LATE_GOING}
SETTINGS = {
    "part_size": "5MiB", "part_concurrency": 2, "bandwidth_limit": "10MB",
    "lease_seconds": 3, "rescan_seconds": 1, "idle_seconds": 3,
}


@pytest.fixture
def sentinels() -> Iterator[SentinelGroup]:
    with SentinelGroup(down_after_ms=1000, failover_timeout_ms=5000) as group:
        yield group


class ReadyWatch:
    """Polls /readyz on a thread and keeps every change of its status, with when it happened."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.changes: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, name="readyz-watch", daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def status_since(self, moment: float) -> list[int]:
        """The statuses seen from `moment` on: the one in force then, and each change after."""
        before = [status for at, status in self.changes if at <= moment][-1:]
        return before + [status for at, status in self.changes if at > moment]

    def first(self, status: int, *, after: float) -> float | None:
        return next((at for at, seen in self.changes if at > after and seen == status), None)

    def _poll(self) -> None:
        while not self._stop.wait(0.05):
            status = _status(self.url)
            if not self.changes or self.changes[-1][1] != status:
                self.changes.append((time.monotonic(), status))


def _status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0


class Recorder(threading.Thread):
    """Appends 1 MiB to a file every 0.7 s until it has `size` bytes, as a recorder does."""

    def __init__(self, path: Path, size: int) -> None:
        super().__init__(name=f"recorder-{path.name}", daemon=True)
        self.path = path
        self.size = size

    def run(self) -> None:
        with open(self.path, "ab") as handle:
            while handle.tell() < self.size:
                handle.write(os.urandom(min(MiB, self.size - handle.tell())))
                handle.flush()
                time.sleep(0.7)


def recorded_parts(primary_url: str) -> dict[str, dict[int, str]]:
    """relpath -> {part number: ETag} as one Redis server holds the checkpoints right now."""
    client = redis.Redis.from_url(primary_url, decode_responses=True)
    try:
        found: dict[str, dict[int, str]] = {}
        for key in client.scan_iter("chunkd:stream:*:parts"):
            relpath = client.hget(key.removesuffix(":parts"), "relpath")
            parts = client.hgetall(key)
            if relpath:
                found[relpath] = {int(n): _etag(raw) for n, raw in parts.items()}
        return found
    finally:
        client.close()


def completed_on(url: str) -> set[str]:
    """The relpaths one Redis server holds COMPLETED records of."""
    client = redis.Redis.from_url(url, decode_responses=True)
    try:
        ids = client.zrange(f"chunkd:streams:{StreamState.COMPLETED.value}", 0, -1)
        return {client.hget(f"chunkd:stream:{stream_id}", "relpath") or "" for stream_id in ids} - {""}
    finally:
        client.close()


def _count(parts: dict[str, dict[int, str]]) -> int:
    return sum(map(len, parts.values()))


def _etag(raw: str) -> str:
    return str(json.loads(raw)["etag"]).strip('"')


@pytest.mark.parametrize("server", ["rclone", "rgw"], indirect=True)
def test_primary_killed_mid_upload_sentinel_fails_over_and_no_object_or_part_is_lost(
    chunkd_daemon: Any, server: Any, client: Any, sentinels: SentinelGroup, input_dir: Path
) -> None:
    port = free_port()
    old_primary, new_primary = sentinels.primary, sentinels.replica
    daemon: DaemonProcess = chunkd_daemon(server, state_url=sentinels.url, http_addr=f"127.0.0.1:{port}", **SETTINGS)
    with ReadyWatch(f"http://127.0.0.1:{port}/readyz") as ready:
        wait_for(lambda: ready.changes and ready.changes[-1][1] == 200, timeout=30, what="/readyz 200")
        recorders = [Recorder(input_dir / name, size) for name, size in GROWING.items()]
        for recorder in recorders:
            recorder.start()
        for name, size in FILES.items():
            write_random(input_dir / name, size)

        def enough_recorded() -> dict[str, dict[int, str]] | None:
            found = recorded_parts(old_primary.url)
            some_growing = any(found.get(name) for name in GROWING)
            return found if some_growing and _count(found) >= 4 else None

        wait_for(enough_recorded, timeout=60, what="4 parts recorded, one of a growing file")
        sentinels.relay.hold()  # from here on the replica falls behind: the primary's writes stay its own
        replicated = recorded_parts(new_primary.url)
        for name, size in LATE.items():
            write_random(input_dir / name, size)

        def unreplicated() -> bool:
            found, completed = recorded_parts(old_primary.url), completed_on(old_primary.url)
            more = _count(found) >= _count(replicated) + 2 and all(found.get(name) for name in LATE_GOING)
            return more and set(LATE_DONE) <= completed and bool(completed & set(FILES))

        what = "on the primary alone: 2 more parts, one of late-long.mp4, late-short.mp4 and a cam completed"
        wait_for(unreplicated, timeout=60, what=what)
        acknowledged = recorded_parts(old_primary.url)  # the last look: what the old primary holds
        replicated = recorded_parts(new_primary.url)
        completed_unreplicated = completed_on(old_primary.url) - completed_on(new_primary.url)
        assert not set(LATE_GOING) & completed_unreplicated, "late-long.mp4 finished before the kill"
        sentinels.kill_primary()
        killed_at = time.monotonic()
        assert all(recorder.is_alive() for recorder in recorders), "the recordings grow across the failover"

        wait_for(lambda: sentinels.primary_port() == new_primary.port, timeout=30, what="Sentinel to promote")
        promoted_after = time.monotonic() - killed_at
        sources = {**FILES, **GROWING, **LATE}
        manifests = {
            name: wait_for(partial(read_manifest, client, name), timeout=180, what=f"manifest of {name}")
            for name in sources
        }
        unready_at = ready.first(503, after=killed_at)
        ready_again_at = ready.first(200, after=unready_at or killed_at)
        statuses = ready.status_since(killed_at)

    for name, size in sources.items():
        source = input_dir / name
        assert os.path.getsize(source) == size
        assert sha256_object(client, name) == sha256_file(source) == manifests[name]["sha256"]
        in_object = {part["number"]: str(part["etag"]).strip('"') for part in manifests[name]["parts"]}
        lost = {n: etag for n, etag in acknowledged.get(name, {}).items() if in_object.get(n) != etag}
        assert not lost, f"{name}: parts the old primary acknowledged are not in the object: {lost}"
    store = RedisStore.from_url(sentinels.url)
    try:
        for name in sources:
            found = store.find_by_relpath(name)
            assert found is not None and found.state is StreamState.COMPLETED, name
    finally:
        store.close()

    assert _count(replicated) < _count(acknowledged), "the failover lost acknowledged checkpoints"
    assert not any(replicated.get(name) for name in LATE)
    for name in LATE_GOING:  # its lease, record and upload id were lost: rebuilt from the bucket's ListParts
        assert daemon.events("adopted an unfinished upload found in the bucket", relpath=name)
    for name in LATE_DONE:  # no record at all on the new primary: the failover makes the daemon look again
        assert daemon.events("record restored", relpath=name)
    for name in completed_unreplicated:  # not COMPLETED on the new primary: its manifest or object says done
        assert daemon.events("record restored", relpath=name) or len(daemon.events("completed", relpath=name)) >= 2
    assert not daemon.events("starting a fresh upload"), "a file was sent again from its first byte"
    assert statuses[0] == 200 and 503 in statuses and statuses[-1] == 200, statuses
    assert unready_at is not None and ready_again_at is not None
    changed = f"state store primary changed from 127.0.0.1:{sentinels.relay.port} to 127.0.0.1:{new_primary.port}"
    assert len(daemon.events("state store primary changed")) == 1
    assert daemon.logged(changed)
    back = daemon.events("state store reachable again")
    print(
        f"failover: Sentinel promoted the replica {promoted_after:.1f}s after SIGKILL; /readyz 503 "
        f"{unready_at - killed_at:.1f}s after it, 200 again {ready_again_at - killed_at:.1f}s after it; "
        f"jobs' first store call back: {[line['event'] for line in back]}; "
        f"parts the old primary held: {_count(acknowledged)}, of which the replica had {_count(replicated)}; "
        f"completed on the old primary only: {sorted(completed_unreplicated)}"
    )
