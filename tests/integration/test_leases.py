"""Leases and fencing on both store backends (SQLite in-process, Redis on a real server)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from chunkd.errors import LeaseLostError, StoreError, StoreResetError
from chunkd.model.states import PartRecord, StreamRecord
from chunkd.store import CheckpointStore, open_store
from chunkd.store.lease import Lease, LeaseKeeper, Renewal, owner_is_dead
from chunkd.store.redis import RedisStore
from chunkd.store.sqlite import SqliteStore
from tests.support.daemon import wait_for


@pytest.fixture(params=["sqlite", "redis"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[CheckpointStore]:
    if request.param == "sqlite":
        opened: CheckpointStore = SqliteStore(str(tmp_path / "state.db"))
    else:
        opened = RedisStore.from_url(request.getfixturevalue("redis_url"))
    yield opened
    opened.close()


def record(relpath: str = "cam/a.mp4") -> StreamRecord:
    return StreamRecord(id="s1", relpath=relpath, source_path=f"/in/{relpath}", bucket="b", key=relpath, schedule={})


def part(number: int = 1) -> PartRecord:
    return PartRecord(number=number, offset=0, size=5, etag='"e"', sha256="0" * 64)


def test_one_owner_at_a_time_and_tokens_grow(store: CheckpointStore) -> None:
    first = store.acquire_lease("cam/a.mp4", "host/1/aa", 30)
    assert first is not None
    assert store.acquire_lease("cam/a.mp4", "host/2/bb", 30) is None
    assert store.lease_owner("cam/a.mp4") == "host/1/aa"
    store.release_lease(Lease("cam/a.mp4", "host/1/aa", first))
    second = store.acquire_lease("cam/a.mp4", "host/2/bb", 30)
    assert second is not None and second > first
    assert store.acquire_lease("cam/other.mp4", "host/1/aa", 30) is not None  # leases are per file
    # Not even its own holder gets a held lease twice: two jobs of one daemon never share a file.
    assert store.acquire_lease("cam/other.mp4", "host/1/aa", 30) is None


def test_expired_lease_is_taken_over_and_the_old_token_is_fenced(store: CheckpointStore) -> None:
    old = Lease("cam/a.mp4", "host/1/aa", store.acquire_lease("cam/a.mp4", "host/1/aa", 0.3) or 0)
    store.save_stream(record(), fence=old)  # accepted while current
    wait_for(lambda: store.lease_owner("cam/a.mp4") is None, timeout=5, what="the lease to expire")
    new_token = store.acquire_lease("cam/a.mp4", "host/2/bb", 30)
    assert new_token is not None and new_token > old.token
    new = Lease("cam/a.mp4", "host/2/bb", new_token)
    with pytest.raises(LeaseLostError):
        store.record_part("s1", part(1), fence=old)
    with pytest.raises(LeaseLostError):
        store.save_stream(record(), fence=old)
    with pytest.raises(LeaseLostError):
        store.drop_parts("s1", fence=old)
    assert store.list_parts("s1") == []
    store.record_part("s1", part(2), fence=new)
    assert [p.number for p in store.list_parts("s1")] == [2]
    assert store.renew_lease(old, 30) is Renewal.LOST
    assert store.renew_lease(new, 30) is Renewal.HELD


def test_renew_retakes_an_expired_lease_nobody_took(store: CheckpointStore) -> None:
    lease = Lease("cam/a.mp4", "host/1/aa", store.acquire_lease("cam/a.mp4", "host/1/aa", 0.2) or 0)
    wait_for(lambda: store.lease_owner("cam/a.mp4") is None, timeout=5, what="the lease to expire")
    assert store.renew_lease(lease, 30) is Renewal.HELD
    assert store.acquire_lease("cam/a.mp4", "host/2/bb", 30) is None


def test_steal_only_from_the_named_owner(store: CheckpointStore) -> None:
    assert store.acquire_lease("cam/a.mp4", "host/1/aa", 30) is not None
    assert store.acquire_lease("cam/a.mp4", "host/2/bb", 30, steal_from="host/9/zz") is None
    assert store.acquire_lease("cam/a.mp4", "host/2/bb", 30, steal_from="host/1/aa") is not None
    assert store.lease_owner("cam/a.mp4") == "host/2/bb"


def test_redis_that_restarted_empty_is_told_apart_from_a_takeover(redis_url: str) -> None:
    store = RedisStore.from_url(redis_url)
    lease = Lease("cam/a.mp4", "host/1/aa", store.acquire_lease("cam/a.mp4", "host/1/aa", 30) or 0)
    redis.Redis.from_url(redis_url).flushdb()
    with pytest.raises(StoreResetError):
        store.record_part("s1", part(1), fence=lease)
    assert store.renew_lease(lease, 30) is Renewal.FORGOTTEN
    assert store.list_parts("s1") == []
    store.close()


def test_fence_check_is_atomic_with_the_write(redis_url: str) -> None:
    """Many writers with the old token race a takeover: not one write lands after it."""
    store = RedisStore.from_url(redis_url)
    old = Lease("f", "host/1/aa", store.acquire_lease("f", "host/1/aa", 30) or 0)
    refused = 0
    for number in range(1, 200):
        if number == 100:
            store.acquire_lease("f", "host/2/bb", 30, steal_from="host/1/aa")
        try:
            store.record_part("s1", part(number), fence=old)
        except LeaseLostError:
            refused += 1
    assert refused == 100
    assert max(p.number for p in store.list_parts("s1")) == 99
    store.close()


def test_keeper_renews_and_notices_a_takeover(store: CheckpointStore) -> None:
    keeper = LeaseKeeper(store, ttl=0.6, owner="host/1/aa")
    held = keeper.acquire("cam/a.mp4")
    assert held is not None
    # Until a renewal that began two lifetimes after the acquisition has come back: only renewals
    # keep the lease that long, and a renewal is what would have found it lost.
    two_lifetimes_on = held.valid_until + 2 * keeper.ttl
    wait_for(lambda: held.valid_until >= two_lifetimes_on, timeout=10, what="renewals over two lifetimes")
    assert held.fresh and not held.lost.is_set()
    assert store.acquire_lease("cam/a.mp4", "host/2/bb", 30) is None
    store.acquire_lease("cam/a.mp4", "host/2/bb", 30, steal_from="host/1/aa")
    assert held.lost.wait(10), "the next renewal should notice the takeover"
    with pytest.raises(LeaseLostError):
        held.check()
    keeper.close()


def test_a_dead_owner_on_this_host_is_taken_over_at_once(store: CheckpointStore) -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    import socket

    dead_owner = f"{socket.gethostname()}/{child.pid}/dead"
    assert owner_is_dead(dead_owner)
    assert not owner_is_dead(f"{socket.gethostname()}/{os.getpid()}/me")
    assert not owner_is_dead(f"other-host/{child.pid}/x")
    assert store.acquire_lease("cam/a.mp4", dead_owner, 300) is not None
    keeper = LeaseKeeper(store, ttl=30, owner="h/1/new")
    held = keeper.acquire("cam/a.mp4")
    assert held is not None and store.lease_owner("cam/a.mp4") == "h/1/new"
    keeper.close()


def test_sqlite_refuses_a_second_daemon(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'state.db'}"
    first = open_store(url, exclusive=True)
    code = (
        "import sys\nfrom chunkd.store import open_store\nfrom chunkd.errors import StoreError\n"
        f"try:\n    open_store({url!r}, exclusive=True)\nexcept StoreError as e:\n    print(e); sys.exit(3)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 3, result.stderr
    assert "in use by another chunkd daemon" in result.stdout and str(os.getpid()) in result.stdout
    open_store(url).close()  # status/retry/cancel still read it
    first.close()
    open_store(url, exclusive=True).close()  # free again once the first daemon is gone


def test_sqlite_lock_error_is_a_store_error(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'state.db'}"
    first = open_store(url, exclusive=True)
    # flock is per open file description: a second open in this process conflicts as well.
    with pytest.raises(StoreError, match="use Redis|Redis"):
        open_store(url, exclusive=True)
    first.close()
