"""Fencing across a Redis failover: the promoted replica may lack the last writes the old primary
acknowledged (the fence key's INCR, the lease key, checkpoints), and tokens must still never go
backwards. The rollback is played by setting the keys back, as the replica would hold them."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from chunkd.errors import LeaseLostError, StoreResetError
from chunkd.model.states import PartRecord, StreamRecord
from chunkd.store.lease import Lease, Renewal
from chunkd.store.redis import RedisStore

NAME = "cam/a.mp4"


@pytest.fixture
def store(redis_url: str) -> Iterator[RedisStore]:
    opened = RedisStore.from_url(redis_url)
    yield opened
    opened.close()


@pytest.fixture
def raw(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    yield client
    client.close()


def record() -> StreamRecord:
    return StreamRecord(id="s1", relpath=NAME, source_path=f"/in/{NAME}", bucket="b", key=NAME, schedule={})


def part(number: int) -> PartRecord:
    return PartRecord(number=number, offset=0, size=5, etag='"e"', sha256="0" * 64)


def take(store: RedisStore, owner: str) -> Lease:
    token = store.acquire_lease(NAME, owner, 30)
    assert token is not None
    return Lease(NAME, owner, token)


def roll_back(raw: redis.Redis, store: RedisStore, *, counter: int | None, holder: Lease | None = None) -> None:
    """The store as a replica that missed the latest lease writes would hold it."""
    fence_key, lease_key = store.leases.fence_key(NAME), store.leases.lease_key(NAME)
    raw.delete(fence_key, lease_key)
    if counter is not None:
        raw.set(fence_key, counter)
    if holder is not None:
        raw.set(lease_key, f"{holder.owner}|{holder.token}", px=30_000)


def test_a_rolled_back_counter_cannot_hand_out_a_token_a_record_has_seen(store: RedisStore, raw: redis.Redis) -> None:
    first = take(store, "host/1/aa")
    store.release_lease(first)
    second = take(store, "host/1/bb")
    store.save_stream(record(), fence=second)
    store.record_part("s1", part(1), fence=second)
    roll_back(raw, store, counter=first.token)  # the counter lost the second acquisition, the record did not
    third = take(store, "host/2/cc")
    assert third.token > second.token
    store.record_part("s1", part(2), fence=third)
    assert [p.number for p in store.list_parts("s1")] == [1, 2]


def test_a_write_below_the_token_the_record_holds_is_refused(store: RedisStore, raw: redis.Redis) -> None:
    stale = take(store, "host/1/aa")
    store.release_lease(stale)
    newer = take(store, "host/2/bb")
    store.save_stream(record(), fence=newer)
    # The counter and the lease key went back to the old lease, the record kept the newer token.
    roll_back(raw, store, counter=stale.token, holder=stale)
    with pytest.raises(LeaseLostError, match="already wrote"):
        store.record_part("s1", part(7), fence=stale)
    with pytest.raises(LeaseLostError):
        store.save_stream(record(), fence=stale)
    with pytest.raises(LeaseLostError):
        store.drop_parts("s1", fence=stale)
    assert store.list_parts("s1") == []


def test_a_lease_the_failover_lost_is_forgotten_not_taken_over(store: RedisStore, raw: redis.Redis) -> None:
    """Its token is above the counter: the job rebuilds from the bucket instead of giving the file up."""
    earlier = take(store, "host/1/aa")
    store.release_lease(earlier)
    lost = take(store, "host/1/bb")
    roll_back(raw, store, counter=earlier.token)
    with pytest.raises(StoreResetError, match="failover"):
        store.record_part("s1", part(1), fence=lost)
    assert store.renew_lease(lost, 30) is Renewal.FORGOTTEN
    assert store.list_parts("s1") == []


def test_a_token_handed_out_twice_across_a_failover_writes_for_one_holder_only(
    store: RedisStore, raw: redis.Redis
) -> None:
    before = take(store, "host/1/aa")
    store.release_lease(before)
    lost = take(store, "host/1/bb")  # acknowledged by the old primary, never replicated
    roll_back(raw, store, counter=before.token)
    again = take(store, "host/2/cc")  # on the new primary: the same number
    assert again.token == lost.token
    store.record_part("s1", part(1), fence=again)
    with pytest.raises(LeaseLostError, match="handed out again"):
        store.record_part("s1", part(2), fence=lost)
    assert store.renew_lease(lost, 30) is Renewal.LOST
    assert store.renew_lease(again, 30) is Renewal.HELD
    assert [p.number for p in store.list_parts("s1")] == [1]


def test_a_node_scoped_lease_starts_above_its_records_tokens(store: RedisStore, raw: redis.Redis) -> None:
    """A node's local folder names its leases `@node/relpath` (chunkd.model.node) and indexes its
    records per node: the floor is read from that index, not from the plain relpath's."""
    scoped = f"@box1/{NAME}"
    first = store.acquire_lease(scoped, "host/1/aa", 30)
    assert first is not None
    store.release_lease(Lease(scoped, "host/1/aa", first))
    second = store.acquire_lease(scoped, "host/1/bb", 30)
    assert second is not None
    held = Lease(scoped, "host/1/bb", second)
    mine = StreamRecord(id="s9", relpath=NAME, source_path=f"/in/{NAME}", bucket="b", key=f"box1/{NAME}",
                        schedule={}, node="box1")
    store.save_stream(mine, fence=held)
    raw.delete(store.leases.fence_key(scoped), store.leases.lease_key(scoped))
    raw.set(store.leases.fence_key(scoped), first)  # the replica missed the second acquisition
    third = store.acquire_lease(scoped, "host/2/cc", 30)
    assert third is not None and third > second
