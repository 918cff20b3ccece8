"""One bandwidth limit shared by every part body being uploaded.

The part body the HTTP client reads from (`partreader.RangeReader`) charges the bucket for every
block, so the uploader never sleeps on its own account and every concurrent part draws from the
same `TokenBucket`.
Time and sleep are injected so tests run on a fake clock.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class TokenBucket:
    """A token bucket refilled at `rate` bytes per second, holding at most `capacity` tokens.

    `consume(n)` reserves its tokens under the lock and sleeps outside it: a caller that finds
    the bucket short takes the tokens on credit and sleeps until the refill has paid them back.
    Reservations are therefore served in arrival order, no lock is held while sleeping, and
    over any stretch of time the callers together never get more than `rate` × time plus one
    bucketful. The bucket starts empty, so a fresh limiter does not begin with a burst.

    `rate` 0 means unlimited: `consume` returns at once, without touching the clock.
    """

    def __init__(
        self,
        rate: int,
        *,
        capacity: int | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if rate < 0:
            raise ValueError(f"rate must not be negative, got {rate}")
        if capacity is not None and capacity < 1:
            raise ValueError(f"capacity must be at least 1 byte, got {capacity}")
        self.rate = rate
        # One second's worth by default: enough to let reads of any usual block size through.
        self.capacity = capacity if capacity is not None else max(rate, 1)
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._tokens = 0.0
        self._updated = clock() if rate else 0.0

    @property
    def unlimited(self) -> bool:
        return self.rate == 0

    def consume(self, n: int) -> None:
        """Block until `n` bytes may pass; takes them a bucketful at a time when `n` > capacity."""
        if n < 0:
            raise ValueError(f"cannot consume a negative amount ({n})")
        if self.unlimited:
            return
        while n > 0:
            chunk = min(n, self.capacity)
            wait = self._reserve(chunk)
            if wait > 0:
                self._sleep(wait)
            n -= chunk

    def _reserve(self, amount: int) -> float:
        """Take `amount` tokens, on credit if need be; returns how long to sleep to repay it."""
        with self._lock:
            now = self._clock()
            elapsed = max(0.0, now - self._updated)
            self._updated = now
            self._tokens = min(float(self.capacity), self._tokens + elapsed * self.rate)
            self._tokens -= amount
            return -self._tokens / self.rate if self._tokens < 0 else 0.0
