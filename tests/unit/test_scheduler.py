"""The per-path work queue: one job per path at a time, delayed retries, and a worker that survives bugs.

Synchronisation is by threading.Event with bounded waits; retry delays run on a fake clock.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from chunkd.intake.scheduler import (
    LARGE_FILE_BYTES,
    Entry,
    JobRequest,
    JobResult,
    ReadyQueue,
    Scheduler,
    SizeClass,
    part_weigher,
    pick_class,
    priority_rules,
    size_class,
)
from chunkd.pipeline.job import Outcome

WAIT = 5.0  # generous upper bound for anything that should happen "soon"


class FakeClock:
    """Time that moves only when told, and counts its reads since the last move.

    A worker reads the clock each time round its loop, before it takes the next entry: one that
    has read it twice since a move has acted on that move (promoted what came due, and taken it).
    """

    def __init__(self) -> None:
        self.now = 100.0
        self.reads_since_advance = 0
        self._lock = threading.Lock()

    def __call__(self) -> float:
        with self._lock:
            self.reads_since_advance += 1
            return self.now

    def advance(self, seconds: float) -> None:
        with self._lock:
            self.now += seconds
            self.reads_since_advance = 0


def wait_until(condition: Callable[[], bool], timeout: float = WAIT) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return condition()


class Jobs:
    """A job runner that records calls and can hold a path until the test releases it."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.threads: list[threading.Thread] = []  # the thread each call ran on
        self.outcomes: dict[str, list[Outcome]] = {}  # scripted outcomes per relpath, consumed in order
        self.hold: set[str] = set()
        self.release = threading.Event()
        self.started: dict[str, threading.Event] = {}
        self.finished: dict[str, threading.Event] = {}
        self.raise_for: set[str] = set()
        self._lock = threading.Lock()

    def event(self, table: dict[str, threading.Event], relpath: str) -> threading.Event:
        with self._lock:
            return table.setdefault(relpath, threading.Event())

    def count(self, relpath: str) -> int:
        with self._lock:
            return self.calls.count(relpath)

    def __call__(self, request: JobRequest) -> JobResult:
        relpath = request.relpath
        with self._lock:
            self.calls.append(relpath)
            self.threads.append(threading.current_thread())
            scripted = self.outcomes.get(relpath)
            outcome = scripted.pop(0) if scripted else Outcome.COMPLETED
        self.event(self.started, relpath).set()
        try:
            if relpath in self.hold:
                assert self.release.wait(WAIT), "test never released the job"
            if relpath in self.raise_for:
                raise RuntimeError(f"bug while handling {relpath}")
            return JobResult(outcome)
        finally:
            self.event(self.finished, relpath).set()


@pytest.fixture
def jobs() -> Iterator[Jobs]:
    runner = Jobs()
    yield runner
    runner.release.set()


@pytest.fixture
def make_scheduler(jobs: Jobs) -> Iterator[Callable[..., Scheduler]]:
    made: list[Scheduler] = []

    def make(**kwargs: object) -> Scheduler:
        kwargs.setdefault("workers", 1)
        scheduler = Scheduler(jobs, **kwargs)  # type: ignore[arg-type]
        made.append(scheduler)
        return scheduler

    yield make
    jobs.release.set()
    for scheduler in made:
        scheduler.stop(timeout=WAIT)
        assert not any(t.is_alive() for t in scheduler._threads), "scheduler leaked a worker thread"


def test_path_submitted_twice_while_queued_runs_once(make_scheduler: Callable[..., Scheduler], jobs: Jobs) -> None:
    scheduler = make_scheduler()
    assert scheduler.submit(Path("/in/a.mp4"), "a.mp4")
    assert not scheduler.submit(Path("/in/a.mp4"), "a.mp4")
    assert scheduler.queue_depth == 1

    scheduler.start()

    assert wait_until(lambda: not scheduler.busy)
    assert jobs.calls == ["a.mp4"]
    assert scheduler.outcomes["a.mp4"] is Outcome.COMPLETED


def test_path_submitted_while_active_runs_once(make_scheduler: Callable[..., Scheduler], jobs: Jobs) -> None:
    jobs.hold.add("a.mp4")
    scheduler = make_scheduler(workers=2)
    scheduler.start()
    scheduler.submit(Path("/in/a.mp4"), "a.mp4")
    assert jobs.event(jobs.started, "a.mp4").wait(WAIT)

    assert not scheduler.submit(Path("/in/a.mp4"), "a.mp4")
    assert scheduler.busy

    jobs.release.set()
    assert wait_until(lambda: not scheduler.busy)
    assert jobs.calls == ["a.mp4"]


def test_path_can_be_submitted_again_after_it_finished(make_scheduler: Callable[..., Scheduler], jobs: Jobs) -> None:
    scheduler = make_scheduler()
    scheduler.start()
    scheduler.submit(Path("/in/a.mp4"), "a.mp4")
    assert wait_until(lambda: not scheduler.busy)

    assert scheduler.submit(Path("/in/a.mp4"), "a.mp4")
    assert wait_until(lambda: jobs.count("a.mp4") == 2)


def test_different_paths_run_concurrently(make_scheduler: Callable[..., Scheduler], jobs: Jobs) -> None:
    jobs.hold.update({"a.mp4", "b.mp4"})
    scheduler = make_scheduler(workers=2)
    scheduler.start()
    scheduler.submit(Path("/in/a.mp4"), "a.mp4")
    scheduler.submit(Path("/in/b.mp4"), "b.mp4")
    assert jobs.event(jobs.started, "a.mp4").wait(WAIT)
    assert jobs.event(jobs.started, "b.mp4").wait(WAIT)  # both started while neither has finished
    jobs.release.set()
    assert wait_until(lambda: not scheduler.busy)


def test_retry_later_puts_the_path_back_after_retry_delay(make_scheduler: Callable[..., Scheduler], jobs: Jobs) -> None:
    clock = FakeClock()
    jobs.outcomes["a.mp4"] = [Outcome.RETRY_LATER, Outcome.COMPLETED]
    scheduler = make_scheduler(retry_delay=30.0, clock=clock)
    scheduler.start()
    scheduler.submit(Path("/in/a.mp4"), "a.mp4")

    # The delayed entry is pushed when the outcome is recorded; only then move time.
    assert wait_until(lambda: scheduler.outcomes.get("a.mp4") is Outcome.RETRY_LATER)
    assert scheduler.busy  # still known while it waits: a new submit must not double it
    assert not scheduler.submit(Path("/in/a.mp4"), "a.mp4")

    clock.advance(29.0)
    assert wait_until(lambda: clock.reads_since_advance >= 2), "the worker never looked at the clock"
    assert jobs.count("a.mp4") == 1, "re-ran before retry_delay passed"

    clock.advance(1.0)
    assert wait_until(lambda: jobs.count("a.mp4") == 2)
    assert wait_until(lambda: not scheduler.busy)
    assert scheduler.outcomes["a.mp4"] is Outcome.COMPLETED
    assert jobs.calls == ["a.mp4", "a.mp4"]


def test_a_job_that_raises_does_not_kill_the_worker(
    make_scheduler: Callable[..., Scheduler], jobs: Jobs, caplog: pytest.LogCaptureFixture
) -> None:
    jobs.raise_for.add("bad.mp4")
    scheduler = make_scheduler(workers=1, retry_delay=3600.0, clock=FakeClock())
    scheduler.start()
    scheduler.submit(Path("/in/bad.mp4"), "bad.mp4")
    scheduler.submit(Path("/in/good.mp4"), "good.mp4")

    assert wait_until(lambda: scheduler.outcomes.get("good.mp4") is Outcome.COMPLETED)
    assert scheduler.outcomes["bad.mp4"] is Outcome.RETRY_LATER  # a bug is retried later, not fatal
    assert jobs.calls == ["bad.mp4", "good.mp4"]
    assert any(r.levelname == "ERROR" and "bad.mp4" in str(r.exc_info[1]) for r in caplog.records if r.exc_info)


def test_stop_returns_within_its_timeout_while_a_job_is_stuck(
    make_scheduler: Callable[..., Scheduler], jobs: Jobs
) -> None:
    jobs.hold.update({"a.mp4", "b.mp4"})
    scheduler = make_scheduler(workers=2)
    scheduler.start()
    scheduler.submit(Path("/in/a.mp4"), "a.mp4")
    scheduler.submit(Path("/in/b.mp4"), "b.mp4")
    assert jobs.event(jobs.started, "a.mp4").wait(WAIT)
    assert jobs.event(jobs.started, "b.mp4").wait(WAIT)

    began = time.monotonic()
    scheduler.stop(timeout=0.3)
    elapsed = time.monotonic() - began

    assert 0.25 <= elapsed < 1.5  # waited for the stuck jobs, but only as long as it was told
    assert not scheduler.submit(Path("/in/c.mp4"), "c.mp4")  # no new work after stop


def test_stop_with_idle_workers_is_quick_and_joins_them(make_scheduler: Callable[..., Scheduler]) -> None:
    scheduler = make_scheduler(workers=3)
    scheduler.start()
    began = time.monotonic()
    scheduler.stop(timeout=WAIT)
    assert time.monotonic() - began < 1.5
    assert not any(t.is_alive() for t in scheduler._threads)


def test_queued_work_is_not_started_after_stop(make_scheduler: Callable[..., Scheduler], jobs: Jobs) -> None:
    jobs.hold.add("a.mp4")
    scheduler = make_scheduler(workers=1)
    scheduler.start()
    scheduler.submit(Path("/in/a.mp4"), "a.mp4")
    assert jobs.event(jobs.started, "a.mp4").wait(WAIT)
    scheduler.submit(Path("/in/b.mp4"), "b.mp4")  # queued behind the held job

    scheduler.stop(timeout=0.05)  # stop is requested while a.mp4 is still held
    jobs.release.set()
    scheduler.stop(timeout=WAIT)  # now wait for the worker to drain

    assert not any(t.is_alive() for t in scheduler._threads)
    assert jobs.calls == ["a.mp4"]


def test_higher_priority_first_then_oldest_first(tmp_path: Path) -> None:
    order: list[str] = []
    finished = threading.Event()
    names = ["backlog/new.mp4", "backlog/old.mp4", "urgent/late.mp4", "urgent/early.mp4"]
    for age, name in zip([10, 1000, 5, 500], names, strict=True):
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
        os.utime(path, (time.time() - age, time.time() - age))

    def job(request: JobRequest) -> JobResult:
        order.append(request.relpath)
        if len(order) == len(names):
            finished.set()
        return JobResult(Outcome.COMPLETED)

    scheduler = Scheduler(job, workers=1, priority=priority_rules([("urgent/*", 10)]))
    for name in names:
        assert scheduler.submit(tmp_path / name, name)
    scheduler.start()
    try:
        assert finished.wait(5)
    finally:
        scheduler.stop(timeout=2)
    assert order == ["urgent/early.mp4", "urgent/late.mp4", "backlog/old.mp4", "backlog/new.mp4"]


def test_priority_rules_first_match_wins() -> None:
    rule = priority_rules([("urgent/**", 10), ("*.mov", 5), ("urgent/*.mov", 99)])
    assert rule("urgent/a/b.mov") == 10
    assert rule("x.mov") == 5
    assert rule("x.mp4") == 0


# -- size classes: large files are not starved by a backlog of small ones, nor the reverse ------

SMALL, LARGE = SizeClass.SMALL, SizeClass.LARGE


def entry(
    relpath: str, cls: SizeClass, *, mtime: float, priority: int = 0, arrival: int = 0, weight: int = 1
) -> Entry:
    return Entry(-priority, mtime, arrival, JobRequest(Path("/in") / relpath, relpath), cls, weight)


def make_file(folder: Path, name: str, size: int, *, age: float) -> Path:
    """A sparse file: the scheduler only looks at its size and mtime."""
    path = folder / name
    with open(path, "wb") as handle:
        handle.truncate(size)
    stamp = time.time() - age
    os.utime(path, (stamp, stamp))
    return path


def test_size_class_boundary() -> None:
    assert size_class(LARGE_FILE_BYTES - 1) is SMALL
    assert size_class(LARGE_FILE_BYTES) is LARGE
    assert size_class(0) is SMALL  # a file that vanished before it was queued
    assert size_class(10, large_file_bytes=10) is LARGE


def test_pick_class_prefers_the_class_with_fewer_files_in_progress() -> None:
    heads = {SMALL: entry("old-small", SMALL, mtime=1.0), LARGE: entry("new-large", LARGE, mtime=9.0)}
    assert pick_class(heads, {SMALL: 3, LARGE: 0}, {}) is LARGE
    assert pick_class(heads, {SMALL: 1, LARGE: 2}, {}) is SMALL


def test_pick_class_alternates_when_both_have_as_many_in_progress() -> None:
    heads = {SMALL: entry("old-small", SMALL, mtime=1.0), LARGE: entry("new-large", LARGE, mtime=9.0)}
    assert pick_class(heads, {}, {}) is SMALL  # neither served yet: the older file
    assert pick_class(heads, {SMALL: 2, LARGE: 2}, {SMALL: 5, LARGE: 4}) is LARGE  # large waited longer
    assert pick_class(heads, {SMALL: 2, LARGE: 2}, {SMALL: 4, LARGE: 5}) is SMALL


def test_pick_class_never_overrides_the_users_priority() -> None:
    heads = {SMALL: entry("urgent/a", SMALL, mtime=9.0, priority=10), LARGE: entry("b", LARGE, mtime=1.0)}
    assert pick_class(heads, {SMALL: 4, LARGE: 0}, {SMALL: 9}) is SMALL


def test_ready_queue_with_one_worker_interleaves_classes_then_drains_the_rest() -> None:
    ready = ReadyQueue()
    for number in range(5):
        ready.push(entry(f"small-{number}", SMALL, mtime=float(number), arrival=number))
    for number in range(2):
        ready.push(entry(f"large-{number}", LARGE, mtime=100.0 + number, arrival=10 + number))
    order = []
    while (taken := ready.take()) is not None:
        order.append(taken.relpath)
        ready.done(taken)  # one worker: each job finishes before the next is taken
    assert order == ["small-0", "large-0", "small-1", "large-1", "small-2", "small-3", "small-4"]
    assert ready.running == {SMALL: 0, LARGE: 0}


def test_a_large_file_dropped_after_a_small_backlog_starts_at_once(
    make_scheduler: Callable[..., Scheduler], jobs: Jobs, tmp_path: Path
) -> None:
    smalls = [f"clip-{n:02d}.mp4" for n in range(20)]
    for age, name in enumerate(reversed(smalls), start=10):  # older than the large file
        make_file(tmp_path, name, 100 * 1024, age=age)
    make_file(tmp_path, "big.mp4", LARGE_FILE_BYTES, age=1)
    jobs.hold.update([*smalls, "big.mp4"])
    scheduler = make_scheduler(workers=2)
    for name in [*smalls, "big.mp4"]:
        assert scheduler.submit(tmp_path / name, name)
    scheduler.start()

    assert wait_until(lambda: len(jobs.calls) == 2)
    # Each worker is inside a held job now: no third job can start until the test releases them.
    assert len(scheduler._threads) == 2 and set(jobs.threads) == set(scheduler._threads), "more jobs than workers"
    assert sorted(jobs.calls) == ["big.mp4", "clip-00.mp4"]  # the oldest small one, and the large one
    assert scheduler.running() == {SMALL: 1, LARGE: 1}
    assert scheduler.queue_depth == 19
    jobs.release.set()
    assert wait_until(lambda: not scheduler.busy)
    assert len(jobs.calls) == 21


def test_small_files_keep_flowing_while_older_large_files_run(
    make_scheduler: Callable[..., Scheduler], jobs: Jobs, tmp_path: Path
) -> None:
    larges = [f"big-{n}.mp4" for n in range(3)]
    for age, name in enumerate(larges, start=100):
        make_file(tmp_path, name, 2 * LARGE_FILE_BYTES, age=age)
    for name in ("a.mp4", "b.mp4"):
        make_file(tmp_path, name, 1024, age=1)
    jobs.hold.update(larges)  # large files that take long: they must not hold every worker
    scheduler = make_scheduler(workers=3)
    for name in [*larges, "a.mp4", "b.mp4"]:
        scheduler.submit(tmp_path / name, name)
    scheduler.start()

    # Two workers hold the two oldest large files; the third one serves the small files, and only
    # once they are done does it take the last large file.
    assert wait_until(lambda: len(jobs.calls) == 5)
    assert scheduler.outcomes.get("a.mp4") is Outcome.COMPLETED
    assert scheduler.outcomes.get("b.mp4") is Outcome.COMPLETED
    assert set(jobs.calls[:4]) == {"big-2.mp4", "big-1.mp4", "a.mp4", "b.mp4"}
    assert jobs.calls[4] == "big-0.mp4"
    assert scheduler.running() == {SMALL: 0, LARGE: 3}
    jobs.release.set()
    assert wait_until(lambda: not scheduler.busy)
    assert sorted(jobs.calls) == sorted([*larges, "a.mp4", "b.mp4"])


def test_a_retried_file_is_classed_by_its_size_when_it_comes_back(
    make_scheduler: Callable[..., Scheduler], jobs: Jobs, tmp_path: Path
) -> None:
    """A recording that started small and grew while it waited for its retry is large now."""
    clock = FakeClock()
    recording = make_file(tmp_path, "rec.ts", 1024, age=50)
    make_file(tmp_path, "other.ts", 1024, age=40)
    jobs.outcomes["rec.ts"] = [Outcome.RETRY_LATER, Outcome.COMPLETED]
    jobs.hold.add("other.ts")
    scheduler = make_scheduler(workers=2, retry_delay=30.0, clock=clock)
    scheduler.submit(recording, "rec.ts")
    scheduler.start()
    assert wait_until(lambda: scheduler.outcomes.get("rec.ts") is Outcome.RETRY_LATER)
    scheduler.submit(tmp_path / "other.ts", "other.ts")
    assert jobs.event(jobs.started, "other.ts").wait(WAIT)

    with open(recording, "ab") as handle:
        handle.truncate(LARGE_FILE_BYTES)
    jobs.hold.add("rec.ts")
    clock.advance(30.0)
    assert wait_until(lambda: jobs.count("rec.ts") == 2)
    assert wait_until(lambda: scheduler.running() == {SMALL: 1, LARGE: 1})
    jobs.release.set()
    assert wait_until(lambda: not scheduler.busy)
    assert scheduler.outcomes["rec.ts"] is Outcome.COMPLETED


PART = 8 * 1024 * 1024


def test_a_file_takes_as_many_slots_as_it_can_have_parts_in_flight() -> None:
    weigh = part_weigher(PART, 4)
    assert [weigh(size) for size in (0, 1, PART, PART + 1, 3 * PART, 4 * PART, 100 * PART)] == [1, 1, 1, 2, 3, 4, 4]
    assert part_weigher(PART, 1)(100 * PART) == 1


def test_one_part_files_fill_every_slot_and_a_larger_file_takes_what_is_free() -> None:
    ready = ReadyQueue(slots=4, multipart_limit=1)
    for number in range(6):
        ready.push(entry(f"small-{number}", SMALL, mtime=float(number), arrival=number))
    taken = [ready.take() for _ in range(4)]
    assert [t.relpath for t in taken if t] == ["small-0", "small-1", "small-2", "small-3"]
    assert ready.take() is None and ready.used == 4  # every slot held: the fifth waits
    ready.push(entry("large-a", LARGE, mtime=0.0, arrival=10, weight=4))
    ready.push(entry("large-b", LARGE, mtime=1.0, arrival=11, weight=4))
    assert taken[0] is not None
    ready.done(taken[0])
    large = ready.take()  # its class has none running: it starts on the one free slot
    assert large is not None and large.relpath == "large-a" and ready.used == 4 and ready.multipart == 1
    for done in taken[1:]:
        assert done is not None
        ready.done(done)
    # One file of several parts at a time (multipart_limit): the one-part files take the slots.
    assert [t.relpath for t in (ready.take(), ready.take(), ready.take()) if t] == ["small-4", "small-5"]
    ready.done(large)
    assert ready.multipart == 0
    second = ready.take()
    assert second is not None and second.relpath == "large-b" and ready.multipart == 1


def test_a_weight_above_all_slots_still_runs_alone() -> None:
    ready = ReadyQueue(slots=2)
    ready.push(entry("large", LARGE, mtime=0.0, weight=4))
    large = ready.take()
    assert large is not None and ready.used == 2
    ready.done(large)
    assert ready.used == 0


def test_one_part_files_run_on_every_slot_and_large_files_as_many_as_their_limit(
    make_scheduler: Callable[..., Scheduler], jobs: Jobs, tmp_path: Path
) -> None:
    smalls = [f"clip-{n}.mp4" for n in range(4)]
    for age, name in enumerate(reversed(smalls), start=10):
        make_file(tmp_path, name, 100 * 1024, age=age)
    larges = ["big-0.mp4", "big-1.mp4"]
    for age, name in enumerate(larges, start=1):
        make_file(tmp_path, name, 4 * PART, age=age)
    jobs.hold.update(smalls)
    scheduler = make_scheduler(workers=4, weigh=part_weigher(PART, 4), multipart_limit=1)
    for name in smalls:
        assert scheduler.submit(tmp_path / name, name)
    scheduler.start()
    # Four one-part files run at once on the four slots, one slot each.
    assert wait_until(lambda: len(jobs.calls) == 4)
    assert sorted(jobs.calls) == sorted(smalls) and scheduler.running() == {SMALL: 4, LARGE: 0}
    jobs.release.set()
    assert wait_until(lambda: not scheduler.busy)
    jobs.release.clear()
    jobs.hold.update(larges)
    for name in larges:
        assert scheduler.submit(tmp_path / name, name)
    # Two files of four parts, slots to spare, but one at a time (multipart_limit).
    assert wait_until(lambda: len(jobs.calls) == 5)
    assert scheduler.running() == {SMALL: 0, LARGE: 1} and scheduler.queue_depth == 1
    jobs.release.set()
    assert wait_until(lambda: not scheduler.busy)
    assert sorted(jobs.calls[4:]) == larges
