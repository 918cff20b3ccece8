"""How often one host sees a download start.

Kept apart from the downloader so it stays pure: it only counts starts against an injected clock,
so its sliding window is tested without waiting, and the downloader decides what to do meanwhile
(give its slot back and pause).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable


class HostRateLimiter:
    """At most `limit` starts per `window` seconds for each host, over a sliding window."""

    def __init__(self, limit: int, window: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit}")
        self.limit = limit
        self.window = window
        self._clock = clock
        self._starts: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def try_acquire(self, host: str) -> float:
        """0.0 when a start was recorded for `host`; otherwise the seconds until one is free."""
        if self.window <= 0:
            return 0.0
        with self._lock:
            now = self._clock()
            starts = self._starts.setdefault(host.lower(), deque())
            while starts and starts[0] <= now - self.window:
                starts.popleft()
            if len(starts) < self.limit:
                starts.append(now)
                return 0.0
            return starts[0] + self.window - now
