"""The per-file work queue: each path is queued or worked on at most once at a time.

Workers take the highest priority first (rules like `urgent/**=10`), and within a priority the
oldest file (by mtime) first. A job that hit transient trouble is put back after a delay, so one
bad endpoint minute never turns into a FAILED file.
"""

from __future__ import annotations

import fnmatch
import heapq
import itertools
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from chunkd.stream import Outcome

logger = logging.getLogger("chunkd.scheduler")

JobRunner = Callable[[Path, str], Outcome]
_Entry = tuple[int, float, int, str, Path]  # (-priority, mtime, arrival, relpath, path)


def priority_rules(rules: Sequence[tuple[str, int]]) -> Callable[[str], int]:
    """relpath -> priority: the first glob that matches wins, 0 when none does."""

    def priority(relpath: str) -> int:
        for glob, value in rules:
            if fnmatch.fnmatchcase(relpath, glob):
                return value
        return 0

    return priority


@dataclass(order=True)
class _Delayed:
    due: float
    relpath: str = field(compare=False)
    path: Path = field(compare=False)


class Scheduler:
    def __init__(
        self,
        run_job: JobRunner,
        *,
        workers: int,
        retry_delay: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        priority: Callable[[str], int] | None = None,
    ) -> None:
        self._run_job = run_job
        self._workers = workers
        self._retry_delay = retry_delay
        self._clock = clock
        self._priority = priority or (lambda relpath: 0)
        self._arrivals = itertools.count()
        self._queue: queue.PriorityQueue[_Entry] = queue.PriorityQueue()
        self._known: set[str] = set()  # queued, active or delayed
        self._active = 0
        self._delayed: list[_Delayed] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.outcomes: dict[str, Outcome] = {}

    def submit(self, path: Path, relpath: str) -> bool:
        """Queue a path unless it is already queued or being worked on; True if queued."""
        with self._lock:
            if relpath in self._known or self._stop.is_set():
                return False
            self._known.add(relpath)
        self._enqueue(path, relpath)
        return True

    def _enqueue(self, path: Path, relpath: str) -> None:
        try:
            mtime = path.stat().st_mtime
        except OSError:
            mtime = time.time()  # gone or unreadable: the job itself will say what happened
        self._queue.put((-self._priority(relpath), mtime, next(self._arrivals), relpath, path))

    def start(self) -> None:
        for index in range(self._workers):
            thread = threading.Thread(target=self._work, name=f"chunkd-file-{index}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self, timeout: float) -> None:
        """Stop taking new work and wait (bounded) for running jobs, which drain on their own."""
        self._stop.set()
        deadline = self._clock() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - self._clock()))

    @property
    def busy(self) -> bool:
        with self._lock:
            return bool(self._known)

    @property
    def queue_depth(self) -> int:
        return self._queue.qsize()

    def _work(self) -> None:
        while not self._stop.is_set():
            self._promote_due()
            try:
                _, _, _, relpath, path = self._queue.get(timeout=0.2)
            except queue.Empty:
                continue
            if self._stop.is_set():
                return
            with self._lock:
                self._active += 1
            outcome = self._run_safely(path, relpath)
            with self._lock:
                self._active -= 1
                self.outcomes[relpath] = outcome
                if outcome is Outcome.RETRY_LATER and not self._stop.is_set():
                    heapq.heappush(self._delayed, _Delayed(self._clock() + self._retry_delay, relpath, path))
                else:
                    self._known.discard(relpath)

    def _run_safely(self, path: Path, relpath: str) -> Outcome:
        try:
            return self._run_job(path, relpath)
        except Exception:  # noqa: BLE001 - one file's bug must not stop the others
            logger.exception("unexpected error; will try this file again later", extra={"relpath": relpath})
            return Outcome.RETRY_LATER

    def _promote_due(self) -> None:
        now = self._clock()
        with self._lock:
            while self._delayed and self._delayed[0].due <= now:
                item = heapq.heappop(self._delayed)
                self._enqueue(item.path, item.relpath)
