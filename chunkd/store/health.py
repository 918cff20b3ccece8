"""Whether the state store answers (one log line when it goes away and one when it is back), and
whether it still holds its data."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Protocol

from chunkd.errors import StoreFullError

logger = logging.getLogger("chunkd.store")


class StoreHealth:
    """Shared by every job, so a Redis outage is reported once, not once per retry per file.

    A store whose disk is full (StoreFullError: SQLite's, a Redis that cannot save, or one at its
    maxmemory) still answers reads: that outage ends only with a write that goes through
    (`ok(wrote=True)`), or every read in between would end it and the next write start it again,
    a pair of log lines per retry.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._down_since: float | None = None
        self._full: str | None = None  # why writes are refused, while they are
        self.outages = 0

    @property
    def down(self) -> bool:
        return self._down_since is not None

    @property
    def refusing_writes(self) -> str | None:
        """Why the store refuses writes (its disk is full), or None: what /readyz says meanwhile."""
        return self._full

    def failed(self, error: Exception) -> None:
        full = error if isinstance(error, StoreFullError) else None
        with self._lock:
            if full is not None and self._full is None:
                self._full = f"cannot write: {error}"
            if self._down_since is not None:
                return
            self._down_since = self._clock()
            self.outages += 1
        if full is not None:
            logger.warning(
                "state store cannot write, %s (%s); no new parts start until it can, parts in flight finish "
                "and are recorded then", full.why, full,
            )
            return
        logger.warning(
            "state store unreachable (%s); no new parts start until it is back, parts in flight finish "
            "and are recorded when it returns", error,
        )

    def ok(self, *, wrote: bool = False) -> None:
        """The store answered; `wrote`: with a write, which is what ends a full disk's outage."""
        with self._lock:
            if self._down_since is None or (self._full is not None and not wrote):
                return
            seconds = self._clock() - self._down_since
            full, self._down_since, self._full = self._full, None, None
        if full:
            logger.info("state store writable again after %.1fs; uploads carry on", seconds)
            return
        logger.info("state store reachable again after %.1fs; uploads carry on", seconds)


class Marked(Protocol):
    def data_mark(self) -> str: ...


class ResetWatch:
    """Notices the store losing its data while the daemon runs.

    A job holding a lease learns of it from its next fenced write (StoreResetError), but the records
    of files already done are lost too and no job is looking: the store's data mark, read once a
    second, is what tells. One call reads the mark (making it if missing); it is a new one exactly
    when the data it named is gone.
    """

    def __init__(self, store: Marked) -> None:
        self._store = store
        self._mark: str | None = None

    def lost_data(self) -> bool:
        """True once per loss seen since the last call (never on the first). Raises StoreError."""
        mark = self._store.data_mark()
        seen, self._mark = self._mark, mark
        return seen is not None and seen != mark
