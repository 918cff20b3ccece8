"""The endpoint circuit breaker: transitions on an injected clock, one probe at a time, waiting
callers released by the probe's success or by shutdown, cooldown doubling, the gauge and the log."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest
from prometheus_client.parser import text_string_to_metric_families

from chunkd.config import load_settings
from chunkd.errors import CircuitOpenError
from chunkd.observe.metrics import Metrics
from chunkd.s3.breaker import (
    BreakerState,
    CircuitBreaker,
    Verdict,
    endpoint_breaker,
)
from tests.support.daemon import wait_for

ENDPOINT = "http://s3.test:9000"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Down(Exception):
    """Stands for a failed connection."""


class Denied(Exception):
    """Stands for a 4xx answer."""


class Local(Exception):
    """Stands for a local error (the file changed under us)."""


def judge(exc: BaseException) -> Verdict:
    if isinstance(exc, Down):
        return Verdict.UNAVAILABLE
    if isinstance(exc, Denied):
        return Verdict.ANSWERED
    return Verdict.UNKNOWN


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def states() -> list[BreakerState]:
    return []


@pytest.fixture
def breaker(clock: FakeClock, states: list[BreakerState]) -> CircuitBreaker:
    return CircuitBreaker(ENDPOINT, failures=3, cooldown=5.0, clock=clock, on_change=states.append)


def ok() -> str:
    return "ok"


def down() -> str:
    raise Down("connection refused")


def fail(breaker: CircuitBreaker, times: int) -> None:
    for _ in range(times):
        with pytest.raises(Down):
            breaker.call(down, judge, wait=False)


def open_breaker(breaker: CircuitBreaker) -> None:
    fail(breaker, 3)
    assert breaker.state is BreakerState.OPEN


@dataclass
class Caller:
    """A thread making one call through the breaker; records whether its request went out."""

    breaker: CircuitBreaker
    fn: Callable[[], str] = ok
    stop: threading.Event | None = None
    sent: threading.Event = field(default_factory=threading.Event)
    result: str | BaseException | None = None
    thread: threading.Thread | None = None

    def start(self) -> Caller:
        def request() -> str:
            self.sent.set()
            return self.fn()

        def run() -> None:
            try:
                self.result = self.breaker.call(request, judge, stop=self.stop)
            except BaseException as exc:  # noqa: BLE001 - the test looks at it
                self.result = exc

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        return self

    def join(self) -> str | BaseException | None:
        assert self.thread is not None
        self.thread.join(timeout=10)
        assert not self.thread.is_alive(), "caller still blocked"
        return self.result


@pytest.fixture
def callers() -> Iterator[list[Caller]]:
    started: list[Caller] = []
    yield started
    for caller in started:  # never leave a thread blocked behind a failed test
        if caller.stop is not None:
            caller.stop.set()


# --- closed -> open ------------------------------------------------------------------------------


def test_opens_after_consecutive_failures(breaker: CircuitBreaker, states: list[BreakerState]) -> None:
    fail(breaker, 2)
    assert breaker.state is BreakerState.CLOSED
    fail(breaker, 1)
    assert breaker.state is BreakerState.OPEN
    assert states == [BreakerState.CLOSED, BreakerState.OPEN]


def test_any_answer_resets_the_count(breaker: CircuitBreaker) -> None:
    fail(breaker, 2)
    assert breaker.call(ok, judge) == "ok"
    fail(breaker, 2)
    with pytest.raises(Denied):
        breaker.call(lambda: (_ for _ in ()).throw(Denied("AccessDenied")), judge)
    fail(breaker, 2)
    assert breaker.state is BreakerState.CLOSED


def test_permanent_errors_never_open_it(breaker: CircuitBreaker) -> None:
    def denied() -> str:
        raise Denied("403 AccessDenied")

    for _ in range(20):
        with pytest.raises(Denied):
            breaker.call(denied, judge)
    assert breaker.state is BreakerState.CLOSED


def test_local_errors_neither_count_nor_reset(breaker: CircuitBreaker) -> None:
    def local() -> str:
        raise Local("file changed")

    fail(breaker, 2)
    for _ in range(5):
        with pytest.raises(Local):
            breaker.call(local, judge)
    assert breaker.state is BreakerState.CLOSED
    fail(breaker, 1)
    assert breaker.state is BreakerState.OPEN


# --- open ----------------------------------------------------------------------------------------


def test_open_keeps_requests_off_the_network(breaker: CircuitBreaker, clock: FakeClock) -> None:
    open_breaker(breaker)
    calls = []
    clock.advance(4.9)
    for _ in range(10):
        with pytest.raises(CircuitOpenError, match=r"\(circuit open, next probe in 0s\): connection refused") as info:
            breaker.call(lambda: calls.append(1) or "ok", judge, wait=False)
    assert calls == []
    assert info.value.retryable
    assert info.value.code == "CircuitOpen"


def test_after_the_cooldown_one_probe_closes_it(
    breaker: CircuitBreaker, clock: FakeClock, states: list[BreakerState]
) -> None:
    open_breaker(breaker)
    clock.advance(5.0)
    assert breaker.call(ok, judge, wait=False) == "ok"
    assert breaker.state is BreakerState.CLOSED
    assert states == [BreakerState.CLOSED, BreakerState.OPEN, BreakerState.HALF_OPEN, BreakerState.CLOSED]


def test_an_answer_to_the_probe_closes_it_even_a_4xx(breaker: CircuitBreaker, clock: FakeClock) -> None:
    open_breaker(breaker)
    clock.advance(5.0)

    def not_found() -> str:
        raise Denied("404")

    with pytest.raises(Denied):
        breaker.call(not_found, judge, wait=False)
    assert breaker.state is BreakerState.CLOSED


def test_half_open_lets_exactly_one_probe_through(breaker: CircuitBreaker, clock: FakeClock) -> None:
    open_breaker(breaker)
    clock.advance(5.0)
    assert breaker.admit(wait=False) is True  # the probe, still in flight
    assert breaker.state is BreakerState.HALF_OPEN
    with pytest.raises(CircuitOpenError, match="a probe is under way"):
        breaker.admit(wait=False)
    breaker.settle(Verdict.ANSWERED, probe=True)
    assert breaker.admit(wait=False) is False  # closed: an ordinary call


def test_a_probe_that_learns_nothing_frees_the_slot(breaker: CircuitBreaker, clock: FakeClock) -> None:
    open_breaker(breaker)
    clock.advance(5.0)
    with pytest.raises(Local):
        breaker.call(lambda: (_ for _ in ()).throw(Local("file changed")), judge, wait=False)
    assert breaker.state is BreakerState.HALF_OPEN
    assert breaker.admit(wait=False) is True  # the next caller probes


def test_cooldown_doubles_on_each_failed_probe_and_is_capped(breaker: CircuitBreaker, clock: FakeClock) -> None:
    open_breaker(breaker)
    seen = [breaker.cooldown]
    for _ in range(6):
        clock.advance(seen[-1] - 0.01)
        with pytest.raises(CircuitOpenError):
            breaker.admit(wait=False)  # not a moment early
        clock.advance(0.01)
        fail(breaker, 1)  # the probe fails
        assert breaker.state is BreakerState.OPEN
        seen.append(breaker.cooldown)
    assert seen == [5, 10, 20, 40, 60, 60, 60]

    clock.advance(60)
    assert breaker.call(ok, judge, wait=False) == "ok"
    fail(breaker, 3)
    assert breaker.cooldown == 5  # a fresh outage starts from the configured cooldown


def test_late_failures_of_calls_sent_before_it_opened_change_nothing(breaker: CircuitBreaker, clock: FakeClock) -> None:
    admitted = [breaker.admit() for _ in range(5)]  # five requests in flight when the server dies
    assert admitted == [False] * 5
    for _ in range(5):
        breaker.settle(Verdict.UNAVAILABLE, probe=False)
    assert breaker.state is BreakerState.OPEN
    assert breaker.cooldown == 5  # not doubled by the two stragglers
    clock.advance(5.0)
    assert breaker.admit(wait=False) is True


def test_a_success_from_a_call_sent_before_it_opened_closes_it(breaker: CircuitBreaker) -> None:
    assert breaker.admit() is False  # a long upload, started while all was well
    open_breaker(breaker)
    breaker.settle(Verdict.ANSWERED, probe=False)
    assert breaker.state is BreakerState.CLOSED


# --- waiting callers -------------------------------------------------------------------------------


def test_waiting_callers_hold_back_until_the_probe_succeeds(
    breaker: CircuitBreaker, clock: FakeClock, callers: list[Caller]
) -> None:
    open_breaker(breaker)
    clock.advance(5.0)
    release = threading.Event()
    probe = Caller(breaker, fn=lambda: "probe" if release.wait(10) else "timeout", stop=threading.Event()).start()
    callers.append(probe)
    assert probe.sent.wait(10)
    assert breaker.state is BreakerState.HALF_OPEN

    # While the probe is out, the others stay behind it instead of rushing in.
    waiters = [Caller(breaker, stop=threading.Event()).start() for _ in range(4)]
    callers.extend(waiters)
    wait_for(lambda: breaker.waiting == 4, timeout=10, what="four callers waiting on the probe")
    assert [w.sent.is_set() for w in waiters] == [False] * 4

    release.set()
    assert probe.join() == "probe"
    assert [w.join() for w in waiters] == ["ok"] * 4
    assert breaker.state is BreakerState.CLOSED


def test_a_failed_probe_sends_waiters_back_to_waiting(
    breaker: CircuitBreaker, clock: FakeClock, callers: list[Caller]
) -> None:
    open_breaker(breaker)
    stop = threading.Event()
    waiters = [Caller(breaker, stop=stop).start() for _ in range(3)]
    callers.extend(waiters)
    wait_for(lambda: breaker.waiting == 3, timeout=10, what="three callers waiting")
    clock.advance(5.0)
    with pytest.raises(Down):
        breaker.call(down, judge, wait=False)  # this caller wins the probe, and it fails

    assert breaker.state is BreakerState.OPEN
    assert breaker.cooldown == 10
    assert breaker.waiting == 3
    assert not any(w.sent.is_set() for w in waiters)

    clock.advance(10.0)  # the next probe is one of the waiters; its success releases the rest
    assert [w.join() for w in waiters] == ["ok"] * 3
    assert breaker.state is BreakerState.CLOSED


def test_a_waiting_caller_times_its_wake_up_to_the_cooldown(callers: list[Caller]) -> None:
    real = CircuitBreaker(ENDPOINT, failures=1, cooldown=0.3)  # the real clock
    fail(real, 1)
    caller = Caller(real, stop=threading.Event()).start()
    callers.append(caller)
    assert caller.join() == "ok"  # nobody poked it: it woke when the cooldown ended
    assert real.state is BreakerState.CLOSED


def test_stop_releases_waiting_callers(breaker: CircuitBreaker, callers: list[Caller]) -> None:
    open_breaker(breaker)
    stop = threading.Event()
    waiters = [Caller(breaker, stop=stop).start() for _ in range(3)]
    callers.extend(waiters)
    wait_for(lambda: breaker.waiting == 3, timeout=10, what="three callers waiting")

    stop.set()

    for waiter in waiters:
        result = waiter.join()
        assert isinstance(result, CircuitOpenError)
        assert "(circuit open, stopping): connection refused" in str(result)
        assert not waiter.sent.is_set()
    assert breaker.waiting == 0


def test_a_stop_set_before_the_call_never_blocks(breaker: CircuitBreaker) -> None:
    open_breaker(breaker)
    stop = threading.Event()
    stop.set()
    with pytest.raises(CircuitOpenError):
        breaker.call(ok, judge, stop=stop)


# --- what operators see ------------------------------------------------------------------------------


def gauge(metrics: Metrics, endpoint: str) -> float | None:
    body, _ = metrics.render()
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            if sample.name == "chunkd_circuit_breaker_state" and sample.labels == {"endpoint": endpoint}:
                return sample.value
    return None


def test_gauge_follows_the_state(clock: FakeClock) -> None:
    metrics = Metrics()
    settings = load_settings(env={}, overrides={"breaker_failures": 2, "breaker_cooldown": 1.5})
    breaker = endpoint_breaker(settings, ENDPOINT, metrics=metrics, clock=clock)
    assert gauge(metrics, ENDPOINT) == 0  # exported from the start

    fail(breaker, 2)
    assert gauge(metrics, ENDPOINT) == 2
    clock.advance(1.5)
    assert breaker.admit(wait=False) is True
    assert gauge(metrics, ENDPOINT) == 1
    breaker.settle(Verdict.ANSWERED, probe=True)
    assert gauge(metrics, ENDPOINT) == 0


def test_endpoint_label_and_log_never_carry_credentials() -> None:
    metrics = Metrics()
    settings = load_settings(env={}, overrides={"breaker_failures": 1})
    breaker = endpoint_breaker(settings, "http://user:hunter2@minio:9000", metrics=metrics)
    assert "hunter2" not in breaker.endpoint
    assert "hunter2" not in metrics.render()[0].decode()
    assert gauge(metrics, "http://***@minio:9000") == 0
    assert endpoint_breaker(settings, None).endpoint == "AWS S3"


def test_one_log_line_per_state_change(
    breaker: CircuitBreaker, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="chunkd.breaker")
    open_breaker(breaker)
    for _ in range(50):
        with pytest.raises(CircuitOpenError):
            breaker.call(ok, judge, wait=False)
    clock.advance(5.0)
    fail(breaker, 1)  # failed probe
    clock.advance(10.0)
    breaker.call(ok, judge, wait=False)  # probe succeeds

    lines = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert lines == [
        ("WARNING", f"S3 endpoint {ENDPOINT} unreachable after 3 failures (connection refused): circuit open for 5s"),
        ("INFO", f"S3 endpoint {ENDPOINT} half-open: probing"),
        ("WARNING", f"S3 endpoint {ENDPOINT} still unreachable (connection refused): circuit open for 10s"),
        ("INFO", f"S3 endpoint {ENDPOINT} half-open: probing"),
        ("INFO", f"S3 endpoint {ENDPOINT} closed: requests resume"),
    ]


def test_failures_must_be_positive() -> None:
    with pytest.raises(ValueError):
        CircuitBreaker(ENDPOINT, failures=0)
