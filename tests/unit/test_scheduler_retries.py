"""Bounded retries: a path that keeps coming back RETRY_LATER (or keeps raising) backs off and is
given up after `MAX_TRIES`; submissions carry `final`, `origin` and an `on_done` callback.

Retry delays run on a fake clock: the test reads when the next try is due, then moves time there.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from chunkd.intake.scheduler import (
    MAX_RETRY_DELAY,
    MAX_TRIES,
    JobRequest,
    JobResult,
    Scheduler,
    retry_delay,
)
from chunkd.observe.metrics import Metrics
from chunkd.pipeline.job import Outcome
from tests.unit.test_scheduler import WAIT, FakeClock, wait_until

# 30 s doubling, capped at 30 min: the pauses after tries 1..9; the 10th gives up.
DELAYS = [30.0, 60.0, 120.0, 240.0, 480.0, 960.0, 1800.0, 1800.0, 1800.0]


class Script:
    """A job runner that returns scripted results per relpath (COMPLETED once they run out)."""

    def __init__(self) -> None:
        self.results: dict[str, list[JobResult | Exception]] = {}
        self.requests: list[JobRequest] = []
        self._lock = threading.Lock()

    def count(self, relpath: str) -> int:
        with self._lock:
            return sum(request.relpath == relpath for request in self.requests)

    def __call__(self, request: JobRequest) -> JobResult:
        with self._lock:
            self.requests.append(request)
            scripted = self.results.get(request.relpath)
            result = scripted.pop(0) if scripted else JobResult(Outcome.COMPLETED)
        if isinstance(result, Exception):
            raise result
        return result


class GiveUps:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []
        self.called = threading.Event()

    def __call__(self, request: JobRequest, reason: str) -> None:
        self.calls.append((request.relpath, reason))
        self.called.set()


@pytest.fixture
def script() -> Script:
    return Script()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def make_scheduler(script: Script, clock: FakeClock) -> Iterator[Callable[..., Scheduler]]:
    made: list[Scheduler] = []

    def make(**kwargs: object) -> Scheduler:
        kwargs.setdefault("workers", 1)
        scheduler = Scheduler(script, retry_delay=30.0, clock=clock, **kwargs)  # type: ignore[arg-type]
        made.append(scheduler)
        scheduler.start()
        return scheduler

    yield make
    for scheduler in made:
        scheduler.stop(timeout=WAIT)
        assert not any(t.is_alive() for t in scheduler._threads), "scheduler leaked a worker thread"


def retry_through(scheduler: Scheduler, clock: FakeClock, relpath: str, delays: list[float], *, first: int = 1) -> None:
    """For each expected pause: wait for the try to be counted, check its due time, move time there."""
    for tries, delay in enumerate(delays, start=first):
        def counted(n: int = tries) -> bool:
            return scheduler.tries(relpath) == n

        assert wait_until(counted), f"try {tries} never counted"
        assert scheduler.retry_due(relpath) == clock() + delay, f"pause after try {tries}"
        clock.advance(delay)


def test_retry_delay_doubles_from_the_base_up_to_the_cap() -> None:
    assert [retry_delay(tries, base=30.0) for tries in range(1, MAX_TRIES)] == DELAYS
    assert retry_delay(1, base=5.0) == 5.0 and retry_delay(2, base=5.0) == 10.0
    assert retry_delay(40, base=5.0) == MAX_RETRY_DELAY
    assert retry_delay(3, base=3600.0) == 3600.0  # a base longer than the cap is kept, not shortened


def test_a_file_that_keeps_returning_retry_later_backs_off_and_is_given_up(
    make_scheduler: Callable[..., Scheduler], script: Script, clock: FakeClock
) -> None:
    script.results["a.mp4"] = [JobResult(Outcome.RETRY_LATER, "k/a.mp4", f"SlowDown #{n}") for n in range(1, 20)]
    give_up = GiveUps()
    done: list[JobResult] = []
    scheduler = make_scheduler(give_up=give_up)
    scheduler.submit(Path("/in/a.mp4"), "a.mp4", on_done=done.append)

    retry_through(scheduler, clock, "a.mp4", DELAYS)

    assert give_up.called.wait(WAIT)
    assert wait_until(lambda: not scheduler.busy)
    assert script.count("a.mp4") == MAX_TRIES
    assert give_up.calls == [("a.mp4", "gave up after 10 tries: SlowDown #10")]
    assert scheduler.outcomes["a.mp4"] is Outcome.FAILED
    assert done == [JobResult(Outcome.FAILED, "k/a.mp4", "gave up after 10 tries: SlowDown #10")]
    assert scheduler.tries("a.mp4") == 0 and scheduler.retry_due("a.mp4") is None


@pytest.mark.parametrize("other", [Outcome.COMPLETED, Outcome.BUSY])
def test_any_other_outcome_starts_the_count_again(
    make_scheduler: Callable[..., Scheduler], script: Script, clock: FakeClock, other: Outcome
) -> None:
    results: list[JobResult | Exception] = [JobResult(Outcome.RETRY_LATER)] * (MAX_TRIES - 1)
    script.results["a.mp4"] = [*results, JobResult(other)]
    give_up = GiveUps()
    scheduler = make_scheduler(give_up=give_up)
    scheduler.submit(Path("/in/a.mp4"), "a.mp4")
    retry_through(scheduler, clock, "a.mp4", DELAYS)
    assert wait_until(lambda: not scheduler.busy)
    assert scheduler.outcomes["a.mp4"] is other

    script.results["a.mp4"] = [JobResult(Outcome.RETRY_LATER)]
    assert scheduler.submit(Path("/in/a.mp4"), "a.mp4")
    assert wait_until(lambda: scheduler.tries("a.mp4") == 1)
    assert scheduler.retry_due("a.mp4") == clock() + DELAYS[0]  # the first pause again, not the tenth
    clock.advance(DELAYS[0])
    assert wait_until(lambda: not scheduler.busy)
    assert give_up.calls == []
    assert script.count("a.mp4") == MAX_TRIES + 2  # the ten, then one RETRY_LATER and the COMPLETED


def test_a_job_that_raises_is_logged_counted_retried_and_failed_after_the_cap(
    make_scheduler: Callable[..., Scheduler], script: Script, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    metrics = Metrics()
    script.results["bug.mp4"] = [KeyError("stream_id") for _ in range(MAX_TRIES)]
    give_up = GiveUps()
    scheduler = make_scheduler(give_up=give_up, on_internal_error=metrics.internal_error)
    caplog.set_level(logging.ERROR, logger="chunkd.scheduler")
    scheduler.submit(Path("/in/bug.mp4"), "bug.mp4")

    assert wait_until(lambda: scheduler.tries("bug.mp4") == 1)
    logged = [r for r in caplog.records if r.exc_info and r.name == "chunkd.scheduler"]
    assert len(logged) == 1 and logged[0].exc_info is not None
    assert logged[0].exc_info[0] is KeyError and getattr(logged[0], "relpath", None) == "bug.mp4"
    assert metrics.registry.get_sample_value("chunkd_internal_errors_total") == 1
    assert scheduler.retry_due("bug.mp4") == clock() + DELAYS[0]  # retried later, not dropped
    assert scheduler.outcomes.get("bug.mp4") is Outcome.RETRY_LATER

    clock.advance(DELAYS[0])
    retry_through(scheduler, clock, "bug.mp4", DELAYS[1:], first=2)

    assert give_up.called.wait(WAIT)
    assert wait_until(lambda: not scheduler.busy)
    assert give_up.calls == [("bug.mp4", "gave up after 10 tries: unexpected error: KeyError: 'stream_id'")]
    assert scheduler.outcomes["bug.mp4"] is Outcome.FAILED
    assert metrics.registry.get_sample_value("chunkd_internal_errors_total") == MAX_TRIES
    assert script.count("bug.mp4") == MAX_TRIES


def test_a_submission_carries_final_and_origin_and_hears_its_result_once(
    make_scheduler: Callable[..., Scheduler], script: Script, clock: FakeClock
) -> None:
    script.results["dl/clip-1a2b3c4d.mp4"] = [
        JobResult(Outcome.RETRY_LATER), JobResult(Outcome.COMPLETED, "bucket/dl/clip-1a2b3c4d.mp4"),
    ]
    heard: list[JobResult] = []
    told = threading.Event()

    def on_done(result: JobResult) -> None:
        heard.append(result)
        told.set()

    scheduler = make_scheduler()
    origin = {"url": "https://example.com/clip.mp4", "title": "clip"}
    assert scheduler.submit(Path("/staging/clip-1a2b3c4d.mp4"), "dl/clip-1a2b3c4d.mp4", final=True, origin=origin,
                            on_done=on_done)
    assert wait_until(lambda: scheduler.tries("dl/clip-1a2b3c4d.mp4") == 1)
    assert heard == []  # a RETRY_LATER the scheduler will try again is not the end
    clock.advance(DELAYS[0])

    assert told.wait(WAIT)
    assert wait_until(lambda: not scheduler.busy)
    assert heard == [JobResult(Outcome.COMPLETED, "bucket/dl/clip-1a2b3c4d.mp4")]
    assert [(r.path, r.final, r.origin) for r in script.requests] == [
        (Path("/staging/clip-1a2b3c4d.mp4"), True, origin)
    ] * 2


def test_a_retry_later_while_stopping_is_handed_back_not_given_up(
    make_scheduler: Callable[..., Scheduler], script: Script
) -> None:
    release = threading.Event()
    started = threading.Event()

    def held(request: JobRequest) -> JobResult:
        started.set()
        assert release.wait(WAIT)
        return JobResult(Outcome.RETRY_LATER)

    give_up = GiveUps()
    heard: list[JobResult] = []
    scheduler = Scheduler(held, workers=1, give_up=give_up)
    scheduler.start()
    scheduler.submit(Path("/in/a.mp4"), "a.mp4", on_done=heard.append)
    assert started.wait(WAIT)
    scheduler.stop(timeout=0.01)
    release.set()
    scheduler.stop(timeout=WAIT)

    assert heard == [JobResult(Outcome.RETRY_LATER)]  # its owner resumes it on the next start
    assert give_up.calls == [] and not scheduler.busy


def test_a_bug_in_a_callback_is_logged_and_counted_and_the_worker_goes_on(
    make_scheduler: Callable[..., Scheduler], script: Script
) -> None:
    metrics = Metrics()

    def broken(result: JobResult) -> None:
        raise RuntimeError("callback bug")

    scheduler = make_scheduler(on_internal_error=metrics.internal_error)
    scheduler.submit(Path("/in/a.mp4"), "a.mp4", on_done=broken)
    scheduler.submit(Path("/in/b.mp4"), "b.mp4")
    assert wait_until(lambda: scheduler.outcomes.get("b.mp4") is Outcome.COMPLETED)
    assert wait_until(lambda: not scheduler.busy)
    assert metrics.registry.get_sample_value("chunkd_internal_errors_total") == 1
