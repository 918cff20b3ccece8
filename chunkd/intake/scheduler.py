"""The per-file work queue: each path is queued or worked on at most once at a time.

Order: the highest priority first (rules like `urgent/**=10`). Within a priority, files are in
two size classes, small and large (`LARGE_FILE_BYTES`), and the classes share the workers: a
free worker takes the next file of the class with fewer files in progress, and when both have
as many it takes the class it served less recently. Within a class, the oldest file (by mtime)
goes first. Without the classes a backlog of thousands of small files, older than the large
ones dropped with them, would hold every worker until the last small file was done; with them
large files start at once and small ones keep flowing, and neither needs a setting.

A job that hit transient trouble (RETRY_LATER, or an unexpected exception: a bug, logged with its
traceback) is put back after a delay, so one bad endpoint minute never turns into a FAILED file.
The delay doubles with each consecutive RETRY_LATER of the same path, up to `MAX_RETRY_DELAY`, and
after `MAX_TRIES` of them the scheduler gives up on the path and tells its `give_up` hook, which
records the failure where an operator sees it; any other outcome starts the count again.

Workers are slots of the request budget (`file_concurrency × part_concurrency` in the daemon). A
file of several parts takes as many free slots as it can have parts in flight (`Weigher`, at most
`part_concurrency`; at least one, so it never waits behind a stream of small files), and at most
`multipart_limit` (`file_concurrency`) of them run at once, as before; a file of one part takes
one slot. So four large files fill the budget as they always did, while a backlog of one-part files
runs sixteen at a time: each is a couple of short requests, and with four in flight the connection
would sit idle between a reply and the next file. The part pool bounds the requests really in
flight (a recording queued while small may grow to many parts).

A submission may carry what the job needs beyond the path (`final`, `origin`: a finished download)
and an `on_done` callback, told the result once the scheduler is done with it.
"""

from __future__ import annotations

import enum
import fnmatch
import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chunkd.pipeline.job import Outcome

logger = logging.getLogger("chunkd.scheduler")

MAX_TRIES = 10  # consecutive RETRY_LATERs of one path before the scheduler gives up on it
MAX_RETRY_DELAY = 30 * 60.0  # the pause between tries doubles up to this (from 30 s: about 2 h in all)

# About where sending a file's bytes takes as long as its fixed costs (ffprobe, a handful of
# requests, checkpoint writes: a quarter of a second or so on a busy 2-core machine). Below it a
# file is quick whatever its size; above it the bytes dominate and it holds its worker many times
# longer than a small one. Four parts of the default size.
LARGE_FILE_BYTES = 32 * 1024 * 1024


@dataclass(frozen=True)
class JobResult:
    outcome: Outcome
    key: str | None = None  # the object's key, once the job got that far
    error: str | None = None  # what went wrong last: the reason given when the scheduler gives up


Done = Callable[[JobResult], None]


@dataclass(frozen=True)
class JobRequest:
    """One submission: a path to upload, and how."""

    path: Path
    relpath: str
    final: bool = False  # the file is complete (a finished download): no need to wait for it to go idle
    origin: dict[str, Any] | None = field(default=None, compare=False)  # a download's source, for the manifest
    on_done: Done | None = field(default=None, compare=False, repr=False)


JobRunner = Callable[[JobRequest], JobResult]
Weigher = Callable[[int], int]  # a file's size -> the slots it takes while it is worked on
GiveUp = Callable[[JobRequest, str], None]  # (request, reason) once the scheduler stopped retrying it


def retry_delay(tries: int, *, base: float, cap: float = MAX_RETRY_DELAY) -> float:
    """The pause after the `tries`-th consecutive RETRY_LATER: `base`, doubled each time, at most
    `cap` (or `base`, if that is longer)."""
    return min(base * 2.0 ** (tries - 1), max(base, cap))


class SizeClass(enum.Enum):
    SMALL = "small"
    LARGE = "large"


def size_class(size: int, large_file_bytes: int = LARGE_FILE_BYTES) -> SizeClass:
    return SizeClass.LARGE if size >= large_file_bytes else SizeClass.SMALL


def part_weigher(part_size: int, part_concurrency: int) -> Weigher:
    """Slots = the parts a file can have in flight at once: one for a file of one part."""

    def weigh(size: int) -> int:
        return max(1, min(part_concurrency, -(-size // part_size)))

    return weigh


def priority_rules(rules: Sequence[tuple[str, int]]) -> Callable[[str], int]:
    """relpath -> priority: the first glob that matches wins, 0 when none does."""

    def priority(relpath: str) -> int:
        for glob, value in rules:
            if fnmatch.fnmatchcase(relpath, glob):
                return value
        return 0

    return priority


@dataclass(frozen=True, order=True)
class Entry:
    """A queued path; entries order by (-priority, mtime, arrival)."""

    neg_priority: int
    mtime: float
    arrival: int
    request: JobRequest = field(compare=False)
    size_class: SizeClass = field(compare=False)
    weight: int = field(default=1, compare=False)  # slots it takes while running

    @property
    def relpath(self) -> str:
        return self.request.relpath


def pick_class(
    heads: Mapping[SizeClass, Entry], running: Mapping[SizeClass, int], last_served: Mapping[SizeClass, int]
) -> SizeClass:
    """Which class a free worker serves, given each non-empty class's first entry.

    The user's priority comes first; between classes of equal top priority, the one with fewer
    files in progress, then the one served less recently (`last_served`: higher = more recent).
    """
    top = min(head.neg_priority for head in heads.values())
    contenders = [cls for cls, head in heads.items() if head.neg_priority == top]
    return min(contenders, key=lambda cls: (running.get(cls, 0), last_served.get(cls, -1), heads[cls]))


class ReadyQueue:
    """The queued entries, one heap per size class, what each class has in progress, and the
    slots they hold out of `slots`.

    Not thread-safe on its own: the scheduler calls it under its lock.
    """

    def __init__(self, slots: int | None = None, multipart_limit: int | None = None) -> None:
        self._heaps: dict[SizeClass, list[Entry]] = {cls: [] for cls in SizeClass}
        self.running: dict[SizeClass, int] = {cls: 0 for cls in SizeClass}
        self._slots = slots
        self._multipart_limit = multipart_limit
        self.used = 0
        self.multipart = 0  # running entries of weight > 1
        self._charged: dict[int, int] = {}  # arrival -> slots a running entry holds
        self._last_served: dict[SizeClass, int] = {}
        self._served = itertools.count()

    def __len__(self) -> int:
        return sum(len(heap) for heap in self._heaps.values())

    def push(self, entry: Entry) -> None:
        heapq.heappush(self._heaps[entry.size_class], entry)

    def take(self) -> Entry | None:
        """The next entry to work on, counted as running until `done(entry)`; None when there is
        none, no slot is free, or only files of several parts wait and as many already run."""
        free = None if self._slots is None else self._slots - self.used
        if free is not None and free < 1:
            return None
        heads = {cls: heap[0] for cls, heap in self._heaps.items() if heap and self._may_start(heap[0])}
        if not heads:
            return None
        cls = pick_class(heads, self.running, self._last_served)
        entry = heapq.heappop(self._heaps[cls])
        charge = entry.weight if free is None else min(entry.weight, free)
        self._charged[entry.arrival] = charge
        self.used += charge
        self.multipart += entry.weight > 1
        self.running[cls] += 1
        self._last_served[cls] = next(self._served)
        return entry

    def done(self, entry: Entry) -> None:
        self.running[entry.size_class] -= 1
        self.used -= self._charged.pop(entry.arrival, 0)
        self.multipart -= entry.weight > 1

    def _may_start(self, entry: Entry) -> bool:
        return entry.weight <= 1 or self._multipart_limit is None or self.multipart < self._multipart_limit


@dataclass(order=True)
class _Delayed:
    due: float
    request: JobRequest = field(compare=False)


class Scheduler:
    """`workers` threads taking entries in the order the module docstring describes; each entry
    takes up to `weigh(size)` of the `workers` slots (one by default: `workers` files at a time),
    and at most `multipart_limit` entries of weight > 1 run at once."""

    def __init__(
        self,
        run_job: JobRunner,
        *,
        workers: int,
        retry_delay: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        priority: Callable[[str], int] | None = None,
        large_file_bytes: int = LARGE_FILE_BYTES,
        give_up: GiveUp | None = None,
        weigh: Weigher | None = None,
        multipart_limit: int | None = None,
        on_internal_error: Callable[[], None] | None = None,
        stop: threading.Event | None = None,
    ) -> None:
        """`stop`: the daemon's stop event, so no worker takes new work once a stop is asked for,
        even before `stop()` is called."""
        self._run_job = run_job
        self._workers = workers
        self._retry_delay = retry_delay
        self._clock = clock
        self._priority = priority or (lambda relpath: 0)
        self._large_file_bytes = large_file_bytes
        self._give_up = give_up
        self._on_internal_error = on_internal_error
        self._arrivals = itertools.count()
        self._weigh = weigh or (lambda size: 1)
        self._ready = ReadyQueue(slots=workers, multipart_limit=multipart_limit)
        self._known: set[str] = set()  # queued, active or delayed
        self._delayed: list[_Delayed] = []
        self._tries: dict[str, int] = {}  # consecutive RETRY_LATERs of a known path
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._stop = stop or threading.Event()
        self._threads: list[threading.Thread] = []
        self.outcomes: dict[str, Outcome] = {}

    def submit(
        self, path: Path, relpath: str, *, final: bool = False, origin: dict[str, Any] | None = None,
        on_done: Done | None = None,
    ) -> bool:
        """Queue a path unless it is already queued or being worked on; True if queued.

        `on_done` is told the result once, when the scheduler is done with the path: any outcome
        but a RETRY_LATER it will try again, or FAILED when it gave up. Not for work still queued
        at stop, which is never run: whoever submitted it finds it unfinished on the next start.
        """
        with self._lock:
            if relpath in self._known or self._stop.is_set():
                return False
            self._known.add(relpath)
        self._enqueue(JobRequest(path, relpath, final=final, origin=origin, on_done=on_done))
        return True

    def _entry(self, request: JobRequest) -> Entry:
        try:
            stat = request.path.stat()
            mtime, size = stat.st_mtime, stat.st_size
        except OSError:
            mtime, size = time.time(), 0  # gone or unreadable: the job itself will say what happened
        return Entry(
            -self._priority(request.relpath), mtime, next(self._arrivals), request,
            size_class(size, self._large_file_bytes), self._weigh(size),
        )

    def _enqueue(self, request: JobRequest) -> None:
        entry = self._entry(request)  # stat outside the lock: a slow disk must not stall workers
        with self._wake:
            self._ready.push(entry)
            self._wake.notify()

    def start(self) -> None:
        for index in range(self._workers):
            thread = threading.Thread(target=self._work, name=f"chunkd-file-{index}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self, timeout: float) -> None:
        """Stop taking new work and wait (bounded) for running jobs, which drain on their own."""
        self._stop.set()
        with self._wake:
            self._wake.notify_all()
        deadline = self._clock() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - self._clock()))

    @property
    def busy(self) -> bool:
        with self._lock:
            return bool(self._known)

    @property
    def queue_depth(self) -> int:
        with self._lock:
            return len(self._ready)

    def running(self) -> dict[SizeClass, int]:
        """Files in progress per size class."""
        with self._lock:
            return dict(self._ready.running)

    def tries(self, relpath: str) -> int:
        """Consecutive RETRY_LATERs of a path the scheduler still holds."""
        with self._lock:
            return self._tries.get(relpath, 0)

    def retry_due(self, relpath: str) -> float | None:
        """When (on the scheduler's clock) a path waiting for its next try gets it."""
        with self._lock:
            return next((item.due for item in self._delayed if item.request.relpath == relpath), None)

    def _work(self) -> None:
        while not self._stop.is_set():
            self._promote_due()
            entry = self._take(timeout=0.2)
            if entry is None:
                continue
            result = self._run_safely(entry.request)
            with self._wake:
                self._ready.done(entry)
                self._wake.notify_all()
            self._settle(entry.request, result)

    def _settle(self, request: JobRequest, result: JobResult) -> None:
        """Try again later, or be done with the path: tell whoever asked, then let it be submitted
        again (in that order, so a give-up is on record before the path can come back)."""
        relpath = request.relpath
        with self._lock:
            self.outcomes[relpath] = result.outcome
            if result.outcome is not Outcome.RETRY_LATER or self._stop.is_set():
                tries = 0
            else:
                tries = self._tries[relpath] = self._tries.get(relpath, 0) + 1
                if tries < MAX_TRIES:
                    due = self._clock() + retry_delay(tries, base=self._retry_delay)
                    heapq.heappush(self._delayed, _Delayed(due, request))
                    return
        if tries:
            result = self._gave_up(request, tries, result)
        if request.on_done is not None:
            self._call_safely("on_done", request.on_done, result, relpath=relpath)
        with self._lock:
            self._tries.pop(relpath, None)
            self._known.discard(relpath)

    def _gave_up(self, request: JobRequest, tries: int, result: JobResult) -> JobResult:
        reason = f"gave up after {tries} tries: {result.error or 'no error recorded'}"
        logger.error("%s; `chunkd retry` brings it back", reason, extra={"relpath": request.relpath})
        if self._give_up is not None:
            self._call_safely("give_up", self._give_up, request, reason, relpath=request.relpath)
        with self._lock:
            self.outcomes[request.relpath] = Outcome.FAILED
        return JobResult(Outcome.FAILED, result.key, reason)

    def _take(self, timeout: float) -> Entry | None:
        """The next entry to run, or None after `timeout` without one, or once stopping."""
        with self._wake:
            entry = None if self._stop.is_set() else self._ready.take()
            if entry is None and not self._stop.is_set():
                self._wake.wait(timeout)  # for a submission, or for slots a finished file frees
                entry = None if self._stop.is_set() else self._ready.take()
            return entry

    def _run_safely(self, request: JobRequest) -> JobResult:
        try:
            return self._run_job(request)
        except Exception as exc:  # one file's bug must not stop the others
            logger.exception("unexpected error; will try this file again later", extra={"relpath": request.relpath})
            self._internal_error()
            return JobResult(Outcome.RETRY_LATER, error=f"unexpected error: {type(exc).__name__}: {exc}")

    def _call_safely(self, what: str, hook: Callable[..., object], *args: object, relpath: str) -> None:
        try:
            hook(*args)
        except Exception:  # a bug in a callback must not stop the worker
            logger.exception("unexpected error in the scheduler's %s callback", what, extra={"relpath": relpath})
            self._internal_error()

    def _internal_error(self) -> None:
        if self._on_internal_error is not None:
            self._on_internal_error()

    def _promote_due(self) -> None:
        now = self._clock()
        with self._lock:
            due = []
            while self._delayed and self._delayed[0].due <= now:
                due.append(heapq.heappop(self._delayed))
        for item in due:
            self._enqueue(item.request)
