"""Leases on Redis: which daemon works on which file, and the fencing tokens its writes carry.

Each script reads and writes the lease and fence keys in one atomic step. The fence key never
expires, so a lease that expired can still be told from one the store forgot (a restart empty,
a flush): the first is LOST to a newer token, the second FORGOTTEN.

A Sentinel failover may roll the fence key back: replication is asynchronous, and the last
INCRs the old primary acknowledged can be gone on the replica it promoted. Tokens still never go
backwards: every fenced write leaves its token in the stream's record (the `fence` field, see
RedisStore) and is refused below the one there, and an acquisition starts above the highest token
the file's records hold. A lease whose token is above the fence key was issued on a history the
store no longer has: FORGOTTEN, like a lease on a store that restarted empty.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager

import redis

from chunkd.errors import LeaseLostError, StoreResetError
from chunkd.store.lease import Lease, Renewal
from chunkd.store.redis_replies import text

# KEYS: lease, fence. ARGV: owner, ttl ms, an owner we may take the lease from ("" for none), the
# highest token the file's records hold. A lease held by anyone else — this daemon's own other job
# included — is not handed out. The counter first rises to that highest token: a counter a failover
# rolled back must not hand out a token some record has already seen.
_ACQUIRE = """
local current = redis.call('GET', KEYS[1])
if current then
  local holder = string.match(current, '^(.*)|%d+$')
  if holder ~= ARGV[3] then return 0 end
end
local floor = tonumber(ARGV[4])
if floor > tonumber(redis.call('GET', KEYS[2]) or '0') then redis.call('SET', KEYS[2], floor) end
local token = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], ARGV[1] .. '|' .. token, 'PX', ARGV[2])
return token
"""

# KEYS: lease, fence. ARGV: "owner|token", ttl ms, token. 1 held, 0 lost, -1 forgotten (also when
# the counter is below the token: a failover lost the acquisition). The same token held by another
# owner was handed out twice across a failover: lost too, so only one of them goes on.
_RENEW = """
local fence = redis.call('GET', KEYS[2])
if not fence or tonumber(fence) < tonumber(ARGV[3]) then return -1 end
if tonumber(fence) > tonumber(ARGV[3]) then return 0 end
local current = redis.call('GET', KEYS[1])
if current and current ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""

# KEYS: lease. ARGV: "owner|token".
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


# KEYS: lease, fence. The counter goes only while nobody holds the lease.
_FORGET = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('DEL', KEYS[2])
return 1
"""


class RedisLeases:
    """LeaseStore on Redis; RedisStore hands its lease calls here, and checks fences with `check_fence`."""

    def __init__(
        self, client: redis.Redis, prefix: str, *, errors: Callable[[str], AbstractContextManager[None]]
    ) -> None:
        self.client = client
        self.prefix = prefix
        self._errors = errors  # RedisStore's: a RedisError becomes a StoreError without secrets
        self._acquire = client.register_script(_ACQUIRE)
        self._renew = client.register_script(_RENEW)
        self._release = client.register_script(_RELEASE)
        self._forget = client.register_script(_FORGET)

    def lease_key(self, name: str) -> str:
        return f"{self.prefix}lease:{name}"

    def fence_key(self, name: str) -> str:
        return f"{self.prefix}fence:{name}"

    def acquire_lease(
        self, name: str, owner: str, ttl: float, *, steal_from: str | None = None, floor: int = 0
    ) -> int | None:
        """A new token above both the counter and `floor` (the highest token the file's records
        hold), or None while someone else holds the lease."""
        keys = [self.lease_key(name), self.fence_key(name)]
        with self._errors(f"acquire lease on {name!r}"):
            token = int(self._acquire(keys=keys, args=[owner, _ms(ttl), steal_from or "", floor]))
        return token or None

    def lease_owner(self, name: str) -> str | None:
        with self._errors(f"read lease on {name!r}"):
            value = text(self.client.get(self.lease_key(name)))
        return value.rpartition("|")[0] if value else None

    def renew_lease(self, lease: Lease, ttl: float) -> Renewal:
        keys = [self.lease_key(lease.name), self.fence_key(lease.name)]
        with self._errors(f"renew lease on {lease.name!r}"):
            result = int(self._renew(keys=keys, args=[_lease_value(lease), _ms(ttl), lease.token]))
        return {1: Renewal.HELD, 0: Renewal.LOST}.get(result, Renewal.FORGOTTEN)

    def release_lease(self, lease: Lease) -> None:
        with self._errors(f"release lease on {lease.name!r}"):
            self._release(keys=[self.lease_key(lease.name)], args=[_lease_value(lease)])

    def forget_lease(self, name: str) -> bool:
        with self._errors(f"forget lease on {name!r}"):
            return bool(self._forget(keys=[self.lease_key(name), self.fence_key(name)]))


def check_fence(fence: Lease, current: str | None, *, holder: str | None = None, persisted: int | None = None) -> None:
    """Raise unless `fence` may still write: its token is the fence key's value (`current`), no
    record saw a higher one (`persisted`), and the lease key (`holder`, if it has not expired)
    names this very lease."""
    if persisted is not None and fence.token < persisted:
        raise LeaseLostError(f"a newer lease on {fence.name!r} already wrote its record (token {persisted} > {fence.token})")
    if current is None:
        raise StoreResetError(f"the state store has no lease on {fence.name!r}: it restarted empty or was flushed")
    if int(current) > fence.token:
        raise LeaseLostError(f"another daemon took over {fence.name!r} (token {current} > {fence.token})")
    if int(current) < fence.token:
        raise StoreResetError(
            f"the state store's fencing counter for {fence.name!r} is behind this lease ({current} < {fence.token}): "
            "a failover lost its last writes"
        )
    if holder is not None and holder != _lease_value(fence):
        raise LeaseLostError(f"the lease on {fence.name!r} was handed out again with token {fence.token} after a failover")


def _lease_value(lease: Lease) -> str:
    return f"{lease.owner}|{lease.token}"


def _ms(seconds: float) -> int:
    return max(1, int(seconds * 1000))
