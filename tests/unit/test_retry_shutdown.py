"""Shutdown during a retry backoff: the wait ends at once and no further request starts.

A SIGTERM sets the shared stop event; a policy sleeping out a 30 s backoff and then trying once
more would keep systemd waiting and send a request the daemon no longer wants.
"""

from __future__ import annotations

import random
import threading
import time

import botocore.exceptions as bexc
import pytest

from chunkd.errors import RetryableError
from chunkd.s3.retry import RetryPolicy

BACKOFF = 30.0


def slow_down() -> bexc.ClientError:
    response = {"Error": {"Code": "SlowDown", "Message": "reduce your rate"}, "ResponseMetadata": {"HTTPStatusCode": 503}}
    return bexc.ClientError(response, "UploadPart")  # type: ignore[arg-type]


class AlwaysSlowDown:
    """An S3 call the endpoint keeps throttling; counts the attempts."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> None:
        self.calls += 1
        raise slow_down()


@pytest.mark.parametrize("delay", [0.0, 0.3], ids=["before-the-wait", "during-the-wait"])
def test_stop_during_a_long_backoff_ends_the_call_promptly(monkeypatch: pytest.MonkeyPatch, delay: float) -> None:
    # Full jitter draws uniform(0, envelope); pin the draw to the top so the backoff is the full 30 s.
    monkeypatch.setattr(random, "uniform", lambda low, high: high)
    stop = threading.Event()
    backing_off = threading.Event()
    fn = AlwaysSlowDown()
    policy = RetryPolicy(
        max_attempts=5, initial=BACKOFF, maximum=BACKOFF, stop_event=stop,
        on_retry=lambda error, attempt: backing_off.set(),
    )

    def shut_down() -> None:
        if backing_off.wait(timeout=10):  # the first attempt failed and the backoff begins
            stop.wait(delay)  # "during": the policy is, in all likelihood, asleep by now
            stop.set()

    stopper = threading.Thread(target=shut_down, name="test-stopper", daemon=True)
    stopper.start()
    started = time.monotonic()
    with pytest.raises(RetryableError) as info:
        policy.call(fn, key="raw/clip.mp4", part=4)
    elapsed = time.monotonic() - started
    stopper.join(timeout=10)

    assert backing_off.is_set() and stop.is_set()
    assert fn.calls == 1
    assert elapsed < 5.0, f"call returned after {elapsed:.1f}s of a {BACKOFF:g}s backoff"
    assert (info.value.code, info.value.key, info.value.part) == ("SlowDown", "raw/clip.mp4", 4)
    assert isinstance(info.value.__cause__, bexc.ClientError)


def test_no_attempt_starts_once_stop_is_set_during_an_injected_sleep() -> None:
    stop = threading.Event()
    sleeps: list[float] = []

    def sleep(seconds: float) -> None:  # shutdown arrives while the policy waits
        sleeps.append(seconds)
        stop.set()

    fn = AlwaysSlowDown()
    with pytest.raises(RetryableError) as info:
        RetryPolicy(max_attempts=5, stop_event=stop, sleep=sleep).call(fn, key="k")

    assert fn.calls == 1
    assert len(sleeps) == 1
    assert info.value.code == "SlowDown"


def test_a_policy_without_a_stop_event_uses_the_injected_sleep() -> None:
    sleeps: list[float] = []
    fn = AlwaysSlowDown()
    with pytest.raises(RetryableError):
        RetryPolicy(max_attempts=3, initial=BACKOFF, maximum=BACKOFF, sleep=sleeps.append).call(fn)
    assert fn.calls == 3
    assert len(sleeps) == 2
