"""Leases: a daemon works on a file only while it holds that file's lease in the state store.

Each acquisition gets a fencing token from a per-file counter that only grows. Checkpoint writes
carry the token and the store refuses them once a newer token was issued, so a daemon that was
paused (GC, SIGSTOP, a network partition) and wakes up late cannot overwrite the new owner's
progress. One keeper thread per daemon renews every held lease each third of its lifetime.
"""

from __future__ import annotations

import enum
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from chunkd.errors import LeaseLostError, StoreError, StoreResetError

if TYPE_CHECKING:
    from chunkd.store.protocol import LeaseStore

logger = logging.getLogger("chunkd.lease")


@dataclass(frozen=True)
class Lease:
    name: str  # the file's relpath: what two daemons on one folder would both reach for
    owner: str  # "<hostname>/<pid>/<random>": unique per daemon run
    token: int  # the fencing token


class Renewal(enum.Enum):
    HELD = "held"
    LOST = "lost"  # another owner holds a newer token
    FORGOTTEN = "forgotten"  # the store has no trace of the lease: it restarted empty


def new_owner() -> str:
    return f"{socket.gethostname()}/{os.getpid()}/{uuid.uuid4().hex[:8]}"


def owner_is_dead(owner: str, *, hostname: str | None = None) -> bool:
    """True only when the owner ran on this host and its process is gone (killed, crashed).

    Lets a restarted daemon take its own files back at once instead of waiting out the lease; an
    owner on another host, or a live process (perhaps paused), is never judged dead.
    """
    host, _, rest = owner.partition("/")
    pid_text = rest.partition("/")[0]
    if host != (hostname or socket.gethostname()) or not pid_text.isdigit():
        return False
    pid = int(pid_text)
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


@dataclass
class HeldLease:
    """A lease this daemon holds, as its stream job sees it."""

    lease: Lease
    ttl: float
    clock: Callable[[], float] = time.monotonic
    valid_until: float = 0.0
    lost: threading.Event = field(default_factory=threading.Event)
    forgotten: bool = False

    def __post_init__(self) -> None:
        self.valid_until = self.clock() + self.ttl

    @property
    def fresh(self) -> bool:
        """Renewed recently enough that no other daemon can have taken the file over."""
        return self.clock() < self.valid_until

    def check(self) -> None:
        if self.lost.is_set():
            if self.forgotten:
                raise StoreResetError(f"the state store forgot the lease on {self.lease.name!r}")
            raise LeaseLostError(f"another daemon took over {self.lease.name!r}")


class LeaseKeeper:
    """Acquires, renews and releases the leases of one daemon."""

    def __init__(
        self,
        store: LeaseStore,
        ttl: float,
        *,
        owner: str | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.ttl = ttl
        self.owner = owner or new_owner()
        self._clock = clock
        self._held: dict[str, HeldLease] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._closed = threading.Event()
        self._thread: threading.Thread | None = None

    def acquire(self, name: str) -> HeldLease | None:
        """The lease on `name`, or None while another live daemon holds it. Raises StoreError."""
        token = self.store.acquire_lease(name, self.owner, self.ttl)
        if token is None:
            holder = self.store.lease_owner(name)
            if holder is None or not owner_is_dead(holder):
                return None
            token = self.store.acquire_lease(name, self.owner, self.ttl, steal_from=holder)
            if token is None:
                return None
            logger.info("took over %r from a daemon on this host that is no longer running", name,
                        extra={"relpath": name})
        held = HeldLease(Lease(name, self.owner, token), self.ttl, clock=self._clock)
        with self._lock:
            self._held[name] = held
        self._ensure_thread()
        return held

    def reacquire(self, held: HeldLease) -> HeldLease | None:
        """After the store forgot a lease: take it again with a new token."""
        self.release(held, quiet=True)
        return self.acquire(held.lease.name)

    def release(self, held: HeldLease, *, quiet: bool = False) -> None:
        with self._lock:
            if self._held.get(held.lease.name) is held:
                del self._held[held.lease.name]
        if held.lost.is_set():
            return
        try:
            self.store.release_lease(held.lease)
        except StoreError as exc:
            if not quiet:  # it expires on its own
                logger.debug("could not release lease on %r: %s", held.lease.name, exc)

    def renew_all(self) -> None:
        with self._lock:
            held_now = list(self._held.values())
        for held in held_now:
            self._renew(held)

    def _renew(self, held: HeldLease) -> None:
        started = self._clock()
        try:
            result = self.store.renew_lease(held.lease, self.ttl)
        except StoreError:
            return  # unreachable store: `fresh` runs out, and the job stops starting parts
        if result is Renewal.HELD:
            held.valid_until = started + self.ttl
            return
        held.forgotten = result is Renewal.FORGOTTEN
        held.lost.set()
        with self._lock:
            self._held.pop(held.lease.name, None)

    def _ensure_thread(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._loop, name="chunkd-leases", daemon=True)
            self._thread.start()

    def _loop(self) -> None:
        while not self._closed.wait(self.ttl / 3):
            self.renew_all()

    def close(self) -> None:
        self._closed.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
