"""Liveness and readiness as the HTTP endpoint reports them.

Liveness: the main loop is still turning (a heartbeat younger than `stuck_after`) and the watcher
threads are alive. Readiness: the state store answers, the bucket answers, the watcher runs and we
are not shutting down. The S3 check is cached briefly so a scraper polling /readyz every second
does not turn into a HeadBucket per second.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from chunkd.errors import StoreError, TransferError
from chunkd.observe.http import Check
from chunkd.pipeline.engine import Engine
from chunkd.s3.retry import RetryPolicy


class Probes:
    def __init__(
        self,
        engine: Engine,
        watcher_alive: Callable[[], bool],
        *,
        stuck_after: float = 30.0,
        s3_cache_seconds: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._engine = engine
        self._watcher_alive = watcher_alive
        self._stuck_after = stuck_after
        self._s3_cache_seconds = s3_cache_seconds
        self._clock = clock
        self._last_beat = clock()
        self._s3: tuple[float, bool | str] | None = None
        self._quick = engine.uploader.with_policy(RetryPolicy(max_attempts=1))

    def beat(self) -> None:
        """Called by the main loop on every turn."""
        self._last_beat = self._clock()

    def health(self) -> Check:
        loop_ok = self._clock() - self._last_beat < self._stuck_after
        watcher_ok = self._watcher_alive()
        return Check(ok=loop_ok and watcher_ok, detail={"loop": loop_ok, "watcher": watcher_ok})

    def ready(self) -> Check:
        store = self._store_ok()
        s3 = self._s3_ok()
        watcher = self._watcher_alive()
        accepting = not self._engine.stop.is_set()
        ok = store is True and s3 is True and watcher and accepting
        return Check(ok=ok, detail={"store": store, "s3": s3, "watcher": watcher, "accepting": accepting})

    def _store_ok(self) -> bool | str:
        try:
            self._engine.store.ping()
        except StoreError as exc:
            return str(exc)
        return True

    def _s3_ok(self) -> bool | str:
        now = self._clock()
        if self._s3 is not None and now - self._s3[0] < self._s3_cache_seconds:
            return self._s3[1]
        try:
            self._quick.head_bucket(self._engine.settings.bucket)
            result: bool | str = True
        except TransferError as exc:
            result = str(exc)
        self._s3 = (now, result)
        return result
