"""A circuit breaker per S3 endpoint: when the endpoint is down or shedding load, callers wait
instead of hammering it, and one probe at a time finds out when it is back.

CLOSED: calls go through; consecutive transient failures (connection errors, 5xx, throttling) are
counted across every caller, and any answer from the server resets the count. After `failures` of
them the breaker OPENS for `cooldown` seconds: callers wait without touching the network. Then it
is HALF_OPEN: exactly one caller's request goes through as the probe while the others keep
waiting. The probe's success CLOSES it and releases everyone; its failure OPENS it again for twice
as long (capped at `max_cooldown`).

Waiting happens inside one attempt of the retry policy, so it never uses up retry attempts: only
requests that reached the network count. Quick checks (start-up preflight, /readyz) pass
`wait=False` and get a CircuitOpenError at once instead.

Written here rather than taken from PyPI: `circuitbreaker` keeps no lock, lets every caller through
once the timeout has passed (no single probe) and never lets a caller wait; `aiobreaker` is for
asyncio. Neither doubles its cooldown.
"""

from __future__ import annotations

import enum
import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, TypeVar

from chunkd.errors import CircuitOpenError
from chunkd.observe.logs import redact

if TYPE_CHECKING:
    from chunkd.config import Settings
    from chunkd.observe.metrics import Metrics

logger = logging.getLogger("chunkd.breaker")

T = TypeVar("T")

MAX_COOLDOWN = 60.0
# How often a waiting caller re-checks the stop event; the cooldown's end wakes it on time anyway.
STOP_POLL_SECONDS = 0.2


class BreakerState(enum.IntEnum):
    """Values as the `chunkd_circuit_breaker_state` gauge exports them."""

    CLOSED = 0
    HALF_OPEN = 1
    OPEN = 2


class Verdict(enum.Enum):
    """What one call's outcome says about the endpoint."""

    ANSWERED = "answered"  # it responded: a success, or an error about the request (4xx)
    UNAVAILABLE = "unavailable"  # connection failed, 5xx, throttled: counts towards opening
    UNKNOWN = "unknown"  # nothing learned (a local error, shutdown): changes nothing


class CircuitBreaker:
    """Thread-safe; every decision is taken under one Condition, which waiting callers sleep on."""

    def __init__(
        self,
        endpoint: str,
        *,
        failures: int = 5,
        cooldown: float = 5.0,
        max_cooldown: float = MAX_COOLDOWN,
        clock: Callable[[], float] = time.monotonic,
        on_change: Callable[[BreakerState], None] | None = None,
    ) -> None:
        if failures < 1:
            raise ValueError("failures must be at least 1")
        self.endpoint = redact(endpoint)
        self._threshold = failures
        self._base_cooldown = max(0.0, cooldown)
        self._max_cooldown = max(max_cooldown, self._base_cooldown)
        self._clock = clock
        self._on_change = on_change or (lambda state: None)
        self._cond = threading.Condition()
        self._state = BreakerState.CLOSED
        self._failures = 0
        self._cooldown = self._base_cooldown
        self._open_until = 0.0
        self._probing = False
        self._waiting = 0
        self._last_error = ""
        self._on_change(self._state)

    @property
    def state(self) -> BreakerState:
        with self._cond:
            return self._state

    @property
    def waiting(self) -> int:
        """Callers held back right now."""
        with self._cond:
            return self._waiting

    @property
    def cooldown(self) -> float:
        """The current (or, when closed, the next) open period in seconds."""
        with self._cond:
            return self._cooldown

    def call(
        self, fn: Callable[[], T], judge: Callable[[BaseException], Verdict], *, wait: bool = True,
        stop: threading.Event | None = None,
    ) -> T:
        """Run `fn` once the breaker lets it through; `judge` says what its exception means."""
        with self.guard(judge, wait=wait, stop=stop):
            return fn()

    @contextmanager
    def guard(
        self, judge: Callable[[BaseException], Verdict], *, wait: bool = True, stop: threading.Event | None = None
    ) -> Iterator[None]:
        probe = self.admit(wait=wait, stop=stop)
        verdict = Verdict.UNKNOWN
        error: BaseException | None = None
        try:
            yield
            verdict = Verdict.ANSWERED
        except BaseException as exc:
            verdict, error = judge(exc), exc
            raise
        finally:
            self.settle(verdict, probe=probe, error=error)

    def admit(self, *, wait: bool = True, stop: threading.Event | None = None) -> bool:
        """Block until a request may go out; True when it is the half-open probe.

        Raises CircuitOpenError instead of waiting when `wait` is False, or once `stop` is set.
        """
        with self._cond:
            while True:
                if self._state is BreakerState.CLOSED:
                    return False
                if self._state is BreakerState.OPEN and self._clock() >= self._open_until:
                    self._move(BreakerState.HALF_OPEN)
                    logger.info("S3 endpoint %s half-open: probing", self.endpoint)
                if self._state is BreakerState.HALF_OPEN and not self._probing:
                    self._probing = True
                    return True
                if not wait or (stop is not None and stop.is_set()):
                    raise CircuitOpenError(self._refusal(stopping=wait))
                self._waiting += 1
                try:
                    self._cond.wait(self._nap())
                finally:
                    self._waiting -= 1

    def settle(self, verdict: Verdict, *, probe: bool, error: BaseException | None = None) -> None:
        """Record one admitted call's outcome."""
        with self._cond:
            if probe:
                self._probing = False
            if verdict is Verdict.ANSWERED:
                self._failures = 0
                if self._state is not BreakerState.CLOSED:
                    self._cooldown = self._base_cooldown
                    self._move(BreakerState.CLOSED)
                    logger.info("S3 endpoint %s closed: requests resume", self.endpoint)
            elif verdict is Verdict.UNAVAILABLE:
                self._failed(probe, error)
            self._cond.notify_all()  # a freed probe slot or a new state: let the waiters look

    def _failed(self, probe: bool, error: BaseException | None) -> None:
        self._last_error = str(error) if error is not None else "no answer"
        if self._state is BreakerState.CLOSED:
            self._failures += 1
            if self._failures >= self._threshold:
                self._open()
                logger.warning(
                    "S3 endpoint %s unreachable after %d failure%s (%s): circuit open for %gs",
                    self.endpoint, self._failures, "" if self._failures == 1 else "s", error, self._cooldown,
                )
        elif probe and self._state is BreakerState.HALF_OPEN:
            self._cooldown = min(self._cooldown * 2, self._max_cooldown)
            self._open()
            logger.warning("S3 endpoint %s still unreachable (%s): circuit open for %gs", self.endpoint, error, self._cooldown)
        # Otherwise a call let through before the breaker opened: the probe alone decides now.

    def _open(self) -> None:
        self._open_until = self._clock() + self._cooldown
        self._move(BreakerState.OPEN)

    def _move(self, state: BreakerState) -> None:
        self._state = state
        self._on_change(state)

    def _nap(self) -> float:
        if self._state is BreakerState.OPEN:
            return max(0.0, min(STOP_POLL_SECONDS, self._open_until - self._clock()))
        return STOP_POLL_SECONDS

    def _refusal(self, *, stopping: bool) -> str:
        if stopping:
            circuit = f"circuit {self._state.name.lower().replace('_', '-')}, stopping"
        elif self._state is BreakerState.OPEN:
            circuit = f"circuit open, next probe in {max(0.0, self._open_until - self._clock()):.0f}s"
        else:
            circuit = "circuit half-open, a probe is under way"
        return f"S3 endpoint {self.endpoint} unreachable ({circuit}): {self._last_error}"


def endpoint_breaker(
    settings: Settings, endpoint: str | None, *, metrics: Metrics | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> CircuitBreaker:
    """The breaker for the configured endpoint (None: AWS), exporting its state to `metrics`."""
    name = redact(endpoint or "AWS S3")
    on_change = None if metrics is None else (lambda state: metrics.set_breaker_state(name, state))
    return CircuitBreaker(
        name, failures=settings.breaker_failures, cooldown=settings.breaker_cooldown, clock=clock, on_change=on_change
    )
