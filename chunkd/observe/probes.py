"""Liveness and readiness as the HTTP endpoint reports them.

Liveness: the main loop is still turning (a heartbeat younger than `stuck_after`) and the watcher
threads are alive. Readiness: the state store answers and takes writes (not so on a full disk),
the bucket answers, the watcher runs and we are not shutting down.

The store and S3 checks run in the background, each on its own thread with its own short timeout,
and a probe answers from their last results: a frozen S3 server (or Redis) must never hold an
orchestrator's probe for the client's two-minute read timeout. A check that gets no answer within
its timeout counts as failing at once, and a new one starts only when the stuck call returns.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from chunkd.errors import ChunkdError
from chunkd.observe.http import Check
from chunkd.pipeline.engine import Engine
from chunkd.s3.retry import RetryPolicy

logger = logging.getLogger("chunkd.probes")

Verdict = bool | str  # True, or why not
NOT_YET = "not checked yet"


class BackgroundCheck:
    """`check` every `every` seconds on a thread of its own; the latest verdict and its age on demand."""

    def __init__(self, name: str, check: Callable[[], Verdict], *, every: float, timeout: float) -> None:
        self.name = name
        self._check = check
        self._every = every
        self._timeout = timeout
        self._lock = threading.Lock()
        self._result: tuple[float, Verdict] | None = None
        self._stop = threading.Event()
        self._loop_thread: threading.Thread | None = None
        self._call: threading.Thread | None = None

    def start(self) -> None:
        self._loop_thread = threading.Thread(target=self._loop, name=f"chunkd-check-{self.name}", daemon=True)
        self._loop_thread.start()

    def stop(self) -> None:
        """Stop checking; a call stuck on a frozen server is left to its daemon thread."""
        self._stop.set()
        if self._loop_thread is not None:
            self._loop_thread.join(timeout=self._timeout + 1)

    def latest(self) -> tuple[Verdict, float | None]:
        """(verdict, seconds since it was reached); a result older than a few rounds is stale, hence failing."""
        with self._lock:
            result = self._result
        if result is None:
            return NOT_YET, None
        age = time.monotonic() - result[0]
        if age > 3 * (self._every + self._timeout):
            return f"last checked {age:.0f}s ago", age
        return result[1], age

    def run_once(self) -> None:
        """Start a call unless one is still stuck, and wait for it at most `timeout` seconds."""
        call = self._call
        if call is None or not call.is_alive():
            call = self._call = threading.Thread(target=self._call_check, name=f"chunkd-{self.name}-call", daemon=True)
            call.start()
        call.join(self._timeout)
        if call.is_alive():
            self._record(f"no answer within {self._timeout:g}s")

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.run_once()
            self._stop.wait(self._every)

    def _call_check(self) -> None:
        try:
            verdict = self._check()
        except ChunkdError as exc:
            verdict = str(exc)
        except Exception as exc:  # a probe must keep probing whatever one call raised
            logger.debug("%s check failed", self.name, exc_info=True)
            verdict = f"{type(exc).__name__}: {exc}"
        self._record(verdict)

    def _record(self, verdict: Verdict) -> None:
        with self._lock:
            self._result = (time.monotonic(), verdict)


class Probes:
    def __init__(
        self,
        engine: Engine,
        watcher_alive: Callable[[], bool],
        *,
        stuck_after: float = 30.0,
        s3_cache_seconds: float = 5.0,
        store_every: float = 1.0,  # a Sentinel failover is over in about two seconds: a check a second sees it
        check_timeout: float = 3.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._engine = engine
        self._watcher_alive = watcher_alive
        self._stuck_after = stuck_after
        self._clock = clock
        self._last_beat = clock()
        self._quick = engine.uploader.with_policy(RetryPolicy(max_attempts=1))
        self.store = BackgroundCheck("store", self._store_ok, every=store_every, timeout=check_timeout)
        self.s3 = BackgroundCheck("s3", self._s3_ok, every=s3_cache_seconds, timeout=check_timeout)

    def start(self) -> None:
        self.store.start()
        self.s3.start()

    def stop(self) -> None:
        self.store.stop()
        self.s3.stop()

    def beat(self) -> None:
        """Called by the main loop on every turn."""
        self._last_beat = self._clock()

    def health(self) -> Check:
        loop_ok = self._clock() - self._last_beat < self._stuck_after
        watcher_ok = self._watcher_alive()
        return Check(ok=loop_ok and watcher_ok, detail={"loop": loop_ok, "watcher": watcher_ok})

    def ready(self) -> Check:
        (store, store_age), (s3, s3_age) = self.store.latest(), self.s3.latest()
        watcher = self._watcher_alive()
        accepting = not self._engine.stop.is_set()
        ok = store is True and s3 is True and watcher and accepting
        ages = {name: round(age, 1) for name, age in (("store", store_age), ("s3", s3_age)) if age is not None}
        detail: dict[str, object] = {"store": store, "s3": s3, "watcher": watcher, "accepting": accepting}
        return Check(ok=ok, detail=detail, ages=ages)

    def _store_ok(self) -> Verdict:
        self._engine.store.ping()  # a StoreError is a ChunkdError: its message is the verdict
        # A full disk answers the ping (a read) and refuses every write: not ready until one goes through.
        return self._engine.store_health.refusing_writes or True

    def _s3_ok(self) -> Verdict:
        self._quick.head_bucket(self._engine.settings.bucket)  # a TransferError: likewise
        return True
