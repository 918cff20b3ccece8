"""Classifying S3 failures, and the retry policy that acts on the classification (no real sleeping)."""

from __future__ import annotations

import random
import threading
from collections.abc import Callable

import botocore.exceptions as bexc
import pytest

from chunkd.errors import (
    PermanentError,
    RetryableError,
    SourceChangedError,
    SourceGoneError,
    TransferError,
    UploadGoneError,
)
from chunkd.s3.breaker import Verdict
from chunkd.s3.retry import RetryPolicy, breaker_verdict, classify


def client_error(code: str, status: int, operation: str = "UploadPart", message: str = "boom") -> bexc.ClientError:
    response = {"Error": {"Code": code, "Message": message}, "ResponseMetadata": {"HTTPStatusCode": status}}
    return bexc.ClientError(response, operation)  # type: ignore[arg-type]


# --- classify ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "status", "expected"),
    [
        ("NoSuchUpload", 404, UploadGoneError),
        ("AccessDenied", 403, PermanentError),
        ("NoSuchBucket", 404, PermanentError),
        ("InvalidAccessKeyId", 403, PermanentError),
        ("SignatureDoesNotMatch", 403, PermanentError),
        ("SlowDown", 503, RetryableError),
        ("InternalError", 500, RetryableError),
        ("ServiceUnavailable", 503, RetryableError),
        ("503", 503, RetryableError),
        ("", 503, RetryableError),  # a bare status, as HEAD responses have no error body
        ("429", 429, RetryableError),
        ("", 429, RetryableError),
        ("TooManyRequests", 429, RetryableError),
        ("RequestTimeout", 400, RetryableError),
        ("BadDigest", 400, RetryableError),
        ("SomethingNew", 502, RetryableError),  # unknown code, but a 5xx is always worth another try
        ("SomethingNew", 400, PermanentError),
    ],
)
def test_classify_client_errors(code: str, status: int, expected: type[TransferError]) -> None:
    error = classify(client_error(code, status), key="a.mp4", part=3)
    assert type(error) is expected
    assert error.key == "a.mp4"
    assert error.part == 3
    assert error.retryable is (expected is RetryableError)
    assert "UploadPart" in str(error)
    assert "key=a.mp4, part=3" in str(error)


def known(exc: BaseException) -> TransferError:
    error = classify(exc)
    assert error is not None, f"{exc!r} was not classified"
    return error


def test_classify_keeps_the_error_code() -> None:
    assert known(client_error("AccessDenied", 403)).code == "AccessDenied"
    assert known(client_error("", 404)).code == "404"


def test_upload_gone_is_not_retryable() -> None:
    assert not known(client_error("NoSuchUpload", 404)).retryable


def test_endpoint_connection_error_is_retryable() -> None:
    error = classify(bexc.EndpointConnectionError(endpoint_url="http://s3.local:9000"), key="k")
    assert type(error) is RetryableError
    assert error.code == "ConnectionError"


@pytest.mark.parametrize(
    "exc",
    [
        bexc.ConnectTimeoutError(endpoint_url="http://s3.local"),
        bexc.ReadTimeoutError(endpoint_url="http://s3.local"),
        ConnectionResetError("reset by peer"),
        TimeoutError("slow"),
    ],
    ids=["connect-timeout", "read-timeout", "reset", "timeout"],
)
def test_network_failures_are_retryable(exc: BaseException) -> None:
    assert type(classify(exc)) is RetryableError


def test_no_credentials_is_permanent() -> None:
    error = classify(bexc.NoCredentialsError())
    assert type(error) is PermanentError
    assert error.code == "NoCredentials"


def test_other_botocore_errors_are_permanent() -> None:
    error = classify(bexc.ParamValidationError(report="Invalid bucket name"), key="k")
    assert type(error) is PermanentError
    assert error.code == "ParamValidationError"


def test_unknown_exceptions_are_not_classified() -> None:
    # A KeyError in chunkd is a bug to report, not an S3 failure that marks the user's file FAILED.
    assert classify(ValueError("bug")) is None
    assert classify(KeyError("part")) is None


def test_transfer_errors_pass_through_unchanged() -> None:
    original = UploadGoneError("gone", key="k")
    assert classify(original) is original


# --- RetryPolicy ---------------------------------------------------------------------------------


class Flaky:
    """Raises the given exceptions in turn, then returns 'ok'; counts its calls."""

    def __init__(self, *failures: BaseException, hook: Callable[[int], None] | None = None) -> None:
        self.failures = list(failures)
        self.calls = 0
        self.hook = hook

    def __call__(self) -> str:
        self.calls += 1
        if self.hook:
            self.hook(self.calls)
        if self.failures:
            raise self.failures.pop(0)
        return "ok"


def policy(sleeps: list[float], **kwargs: object) -> RetryPolicy:
    def no_sleep(seconds: float) -> None:
        sleeps.append(seconds)

    return RetryPolicy(sleep=no_sleep, **kwargs)  # type: ignore[arg-type]


def test_retries_retryable_errors_until_success() -> None:
    sleeps: list[float] = []
    fn = Flaky(client_error("SlowDown", 503), bexc.EndpointConnectionError(endpoint_url="http://x"))

    assert policy(sleeps, max_attempts=5, initial=0.5, maximum=30.0).call(fn) == "ok"

    assert fn.calls == 3
    assert len(sleeps) == 2
    assert all(0 <= s <= 30.0 for s in sleeps)


def test_backoff_envelope_grows_and_is_capped(monkeypatch: pytest.MonkeyPatch) -> None:
    # Full jitter draws uniform(0, envelope); pin the draw to the top to see the envelope itself.
    monkeypatch.setattr(random, "uniform", lambda low, high: high)
    sleeps: list[float] = []
    fn = Flaky(*[client_error("InternalError", 500) for _ in range(6)])

    assert policy(sleeps, max_attempts=10, initial=0.5, maximum=4.0).call(fn) == "ok"

    assert sleeps == pytest.approx([0.5, 1.0, 2.0, 4.0, 4.0, 4.0])


def test_jittered_sleeps_stay_within_the_envelope() -> None:
    rng_state = random.getstate()
    try:
        random.seed(1234)
        sleeps: list[float] = []
        fn = Flaky(*[client_error("InternalError", 500) for _ in range(7)])
        policy(sleeps, max_attempts=8, initial=0.5, maximum=3.0).call(fn)
    finally:
        random.setstate(rng_state)
    assert len(sleeps) == 7
    for attempt, seconds in enumerate(sleeps):
        assert 0 <= seconds <= min(3.0, 0.5 * 2**attempt)


def test_gives_up_after_max_attempts_with_the_classified_error() -> None:
    sleeps: list[float] = []
    fn = Flaky(*[client_error("SlowDown", 503) for _ in range(10)])

    with pytest.raises(RetryableError) as info:
        policy(sleeps, max_attempts=4).call(fn, key="v.mp4", part=7)

    assert fn.calls == 4
    assert len(sleeps) == 3
    assert info.value.code == "SlowDown"
    assert info.value.key == "v.mp4"
    assert info.value.part == 7
    assert isinstance(info.value.__cause__, bexc.ClientError)


@pytest.mark.parametrize(
    ("failure", "expected"),
    [
        (client_error("AccessDenied", 403), PermanentError),
        (client_error("NoSuchUpload", 404), UploadGoneError),
        (bexc.NoCredentialsError(), PermanentError),
    ],
)
def test_non_retryable_errors_are_not_retried(failure: BaseException, expected: type[TransferError]) -> None:
    sleeps: list[float] = []
    fn = Flaky(failure)

    with pytest.raises(expected):
        policy(sleeps, max_attempts=8).call(fn)

    assert fn.calls == 1
    assert sleeps == []


@pytest.mark.parametrize(
    "bug", [KeyError("part"), TypeError("unsupported operand"), ValueError("bug")], ids=["key", "type", "value"]
)
def test_unknown_exceptions_propagate_unchanged_after_one_attempt(bug: Exception) -> None:
    sleeps: list[float] = []
    fn = Flaky(bug, client_error("SlowDown", 503))
    with pytest.raises(type(bug)) as info:
        policy(sleeps, max_attempts=8, stop_event=threading.Event()).call(fn, key="k", part=2)
    assert info.value is bug
    assert not isinstance(info.value, TransferError)
    assert fn.calls == 1
    assert sleeps == []


def test_stop_event_set_before_the_call_allows_one_attempt() -> None:
    sleeps: list[float] = []
    stop = threading.Event()
    stop.set()
    fn = Flaky(*[client_error("SlowDown", 503) for _ in range(10)])

    with pytest.raises(RetryableError):
        policy(sleeps, max_attempts=8, stop_event=stop).call(fn)

    assert fn.calls == 1
    assert sleeps == []


def test_stop_event_set_during_retries_stops_early() -> None:
    sleeps: list[float] = []
    stop = threading.Event()

    def stop_at_the_second_call(calls: int) -> None:
        if calls == 2:
            stop.set()

    fn = Flaky(*[client_error("SlowDown", 503) for _ in range(10)], hook=stop_at_the_second_call)

    with pytest.raises(RetryableError):
        policy(sleeps, max_attempts=8, stop_event=stop).call(fn)

    assert fn.calls == 2
    assert len(sleeps) == 1


def test_unset_stop_event_does_not_stop() -> None:
    sleeps: list[float] = []
    fn = Flaky(client_error("SlowDown", 503), client_error("SlowDown", 503))
    assert policy(sleeps, max_attempts=8, stop_event=threading.Event()).call(fn) == "ok"
    assert fn.calls == 3


def test_on_retry_is_called_with_error_and_attempt_number() -> None:
    sleeps: list[float] = []
    seen: list[tuple[TransferError, int]] = []
    fn = Flaky(client_error("SlowDown", 503), client_error("InternalError", 500))

    policy(sleeps, max_attempts=5, on_retry=lambda error, attempt: seen.append((error, attempt))).call(fn, key="k")

    assert [attempt for _, attempt in seen] == [1, 2]
    assert [type(error) for error, _ in seen] == [RetryableError, RetryableError]
    assert [error.code for error, _ in seen] == ["SlowDown", "InternalError"]
    assert all(error.key == "k" for error, _ in seen)


def test_on_retry_is_not_called_after_the_last_attempt() -> None:
    seen: list[int] = []
    fn = Flaky(*[client_error("SlowDown", 503) for _ in range(5)])
    with pytest.raises(RetryableError):
        policy([], max_attempts=3, on_retry=lambda error, attempt: seen.append(attempt)).call(fn)
    assert seen == [1, 2]


def test_success_on_first_try_never_sleeps() -> None:
    sleeps: list[float] = []
    fn = Flaky()
    assert policy(sleeps).call(fn) == "ok"
    assert fn.calls == 1
    assert sleeps == []


@pytest.mark.parametrize(
    "failure", [SourceChangedError("file shrank"), SourceGoneError("a.mp4 no longer exists")], ids=["changed", "gone"]
)
def test_local_file_errors_pass_through_unretried(failure: BaseException) -> None:
    # The stream restarts on SourceChangedError and stops on SourceGoneError; as S3 errors they
    # would become PermanentError and the file would be marked FAILED instead.
    sleeps: list[float] = []
    fn = Flaky(failure)
    with pytest.raises(type(failure)) as info:
        policy(sleeps, max_attempts=8).call(fn, key="k", part=1)
    assert info.value is failure
    assert fn.calls == 1
    assert sleeps == []


# --- what a failure says about the endpoint (for its circuit breaker) ------------------------------


@pytest.mark.parametrize(
    ("failure", "expected"),
    [
        (bexc.EndpointConnectionError(endpoint_url="http://s3.local"), Verdict.UNAVAILABLE),
        (bexc.ConnectTimeoutError(endpoint_url="http://s3.local"), Verdict.UNAVAILABLE),
        (bexc.ReadTimeoutError(endpoint_url="http://s3.local"), Verdict.UNAVAILABLE),
        (bexc.ConnectionClosedError(endpoint_url="http://s3.local"), Verdict.UNAVAILABLE),
        (ConnectionResetError("reset by peer"), Verdict.UNAVAILABLE),
        (client_error("SlowDown", 503), Verdict.UNAVAILABLE),
        (client_error("", 503, "HeadObject"), Verdict.UNAVAILABLE),
        (client_error("InternalError", 500), Verdict.UNAVAILABLE),
        (client_error("SomethingNew", 502), Verdict.UNAVAILABLE),
        (client_error("TooManyRequests", 429), Verdict.UNAVAILABLE),
        (client_error("Throttling", 400), Verdict.UNAVAILABLE),
        (client_error("AccessDenied", 403), Verdict.ANSWERED),
        (client_error("NoSuchUpload", 404), Verdict.ANSWERED),
        (client_error("404", 404, "HeadObject"), Verdict.ANSWERED),
        (client_error("BadDigest", 400), Verdict.ANSWERED),
        (client_error("RequestTimeout", 400), Verdict.ANSWERED),
        (RetryableError("server ETag != local MD5", code="BadDigest"), Verdict.ANSWERED),
        (bexc.NoCredentialsError(), Verdict.UNKNOWN),
        (PermissionError("denied"), Verdict.UNKNOWN),
        (SourceChangedError("file shrank"), Verdict.UNKNOWN),
        (SourceGoneError("gone"), Verdict.UNKNOWN),
        (ValueError("bug"), Verdict.UNKNOWN),
    ],
)
def test_breaker_verdict(failure: BaseException, expected: Verdict) -> None:
    # Retryable is not the same as "the endpoint is down": a BadDigest is retried, but the server
    # that answered it is up; only connection failures, 5xx and throttling may open the breaker.
    assert breaker_verdict(failure) is expected
