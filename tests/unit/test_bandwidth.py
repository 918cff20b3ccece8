"""The shared token bucket, on a fake clock (plus one short real-time check)."""

from __future__ import annotations

import sys
import threading
import time

import pytest

from chunkd.s3.bandwidth import TokenBucket
from tests.support.sizes import MB


class FakeClock:
    """Time stands still until someone sleeps; sleeping moves it forward."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds > 0
        self.sleeps.append(seconds)
        self.now += seconds


def bucket(rate: int, clock: FakeClock, **kwargs: int) -> TokenBucket:
    return TokenBucket(rate, clock=clock, sleep=clock.sleep, **kwargs)


def test_10_mb_at_1_mb_per_second_takes_10_seconds() -> None:
    clock = FakeClock()
    limiter = bucket(1 * MB, clock)
    for _ in range(10 * MB // 65536 + 1):
        limiter.consume(65536)
    consumed = (10 * MB // 65536 + 1) * 65536
    assert clock.now - 1000.0 == pytest.approx(consumed / MB)
    assert 10.0 <= clock.now - 1000.0 < 10.1


def test_one_large_consume_is_paid_a_bucketful_at_a_time() -> None:
    clock = FakeClock()
    limiter = bucket(1 * MB, clock, capacity=256 * 1024)
    limiter.consume(10 * MB)
    assert clock.now - 1000.0 == pytest.approx(10.0)
    assert len(clock.sleeps) == -(-10 * MB // (256 * 1024))  # one sleep per chunk
    assert max(clock.sleeps) <= 256 * 1024 / MB + 1e-9


def test_idle_time_refills_only_up_to_capacity() -> None:
    clock = FakeClock()
    limiter = bucket(1 * MB, clock, capacity=2 * MB)
    clock.now += 60  # a minute idle earns at most one bucketful
    limiter.consume(2 * MB)
    assert clock.sleeps == []
    limiter.consume(1 * MB)
    assert clock.sleeps == [pytest.approx(1.0)]


def test_fresh_bucket_starts_empty() -> None:
    clock = FakeClock()
    limiter = bucket(1000, clock)
    limiter.consume(500)
    assert clock.sleeps == [pytest.approx(0.5)]


def test_rate_zero_is_unlimited_and_never_sleeps() -> None:
    def no_time() -> float:
        raise AssertionError("an unlimited bucket must not read the clock")

    def no_sleep(seconds: float) -> None:
        raise AssertionError("an unlimited bucket must not sleep")

    limiter = TokenBucket(0, clock=no_time, sleep=no_sleep)
    assert limiter.unlimited
    for _ in range(1000):
        limiter.consume(10 * MB)


def test_consume_zero_is_free() -> None:
    clock = FakeClock()
    bucket(1000, clock).consume(0)
    assert clock.sleeps == []


@pytest.mark.parametrize(("rate", "capacity"), [(-1, None), (1000, 0)])
def test_bad_arguments(rate: int, capacity: int | None) -> None:
    with pytest.raises(ValueError):
        TokenBucket(rate, capacity=capacity)


def test_negative_consume_is_refused() -> None:
    with pytest.raises(ValueError):
        TokenBucket(1000).consume(-1)


def test_threads_share_the_budget_without_losing_a_reservation() -> None:
    """With the clock frozen, every reservation queues behind the ones before it: the last
    sleeper waits for all bytes taken by all threads. A lost update under concurrency would make
    that wait shorter."""
    sleeps: list[float] = []
    lock = threading.Lock()

    def record(seconds: float) -> None:
        with lock:
            sleeps.append(seconds)

    rate, chunk, threads, per_thread = 1 * MB, 10_000, 8, 200
    limiter = TokenBucket(rate, capacity=50_000, clock=lambda: 0.0, sleep=record)
    barrier = threading.Barrier(threads)

    def worker() -> None:
        barrier.wait()
        for _ in range(per_thread):
            limiter.consume(chunk)

    pool = [threading.Thread(target=worker) for _ in range(threads)]
    previous = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads often, so a missing lock would show
    try:
        for thread in pool:
            thread.start()
        for thread in pool:
            thread.join(timeout=10)
    finally:
        sys.setswitchinterval(previous)
    assert not any(thread.is_alive() for thread in pool)
    total = threads * per_thread * chunk
    assert len(sleeps) == threads * per_thread
    assert max(sleeps) == pytest.approx(total / rate)
    # Waits are the distinct queue positions 1..N chunks: no two callers were given the same slot.
    assert sorted(round(s * rate / chunk) for s in sleeps) == list(range(1, threads * per_thread + 1))


def test_real_time_smoke_with_threads() -> None:
    """Four threads pushing 200 kB through 1 MB/s cannot finish in much under 0.2 s."""
    limiter = TokenBucket(1 * MB, capacity=16_384)

    def worker() -> None:
        for _ in range(50):
            limiter.consume(1000)

    pool = [threading.Thread(target=worker) for _ in range(4)]
    started = time.monotonic()
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join(timeout=10)
    elapsed = time.monotonic() - started
    assert 0.18 <= elapsed < 5.0
