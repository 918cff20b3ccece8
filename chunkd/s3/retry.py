"""Turning botocore failures into retryable or permanent errors, and the retry policy for them."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import botocore.exceptions as bexc
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    sleep_using_event,
    stop_after_attempt,
    stop_when_event_set,
    wait_random_exponential,
)
from tenacity.stop import stop_base

from chunkd.errors import (
    PermanentError,
    RetryableError,
    SourceChangedError,
    SourceGoneError,
    TransferError,
    UploadGoneError,
)
from chunkd.s3.breaker import Verdict

T = TypeVar("T")

_PERMANENT_CODES = frozenset(
    {
        "AccessDenied", "AllAccessDisabled", "InvalidAccessKeyId", "SignatureDoesNotMatch",
        "NoSuchBucket", "InvalidBucketName", "AccountProblem", "InvalidArgument", "EntityTooLarge",
        "EntityTooSmall", "InvalidPart", "InvalidPartOrder", "NotImplemented", "MethodNotAllowed",
        "InvalidRequest", "KeyTooLongError", "403", "404", "405",
    }
)
_RETRYABLE_CODES = frozenset(
    {
        "SlowDown", "Throttling", "ThrottlingException", "RequestTimeout", "RequestTimeTooSkewed",
        "InternalError", "ServiceUnavailable", "BadDigest", "TooManyRequests", "OperationAborted",
        "RequestLimitExceeded", "IncompleteBody", "XAmzContentSHA256Mismatch",
        "500", "502", "503", "504", "429",
    }
)


# Answers that say the endpoint itself is overloaded or failing, whatever the request was.
_UNAVAILABLE_CODES = frozenset(
    {
        "SlowDown", "Throttling", "ThrottlingException", "ServiceUnavailable", "InternalError",
        "TooManyRequests", "RequestLimitExceeded", "ConnectionError",
    }
)
_CONNECTION_FAILURES = (
    bexc.EndpointConnectionError, bexc.ConnectionError, bexc.HTTPClientError, ConnectionError, TimeoutError,
)


def breaker_verdict(exc: BaseException) -> Verdict:
    """What an S3 call's exception says about the endpoint, for its circuit breaker.

    Only a failed connection, a 5xx or throttling counts against the endpoint. Any other answer
    (AccessDenied, NoSuchUpload, a part whose ETag disagrees) shows the server is up. A local
    error (the file changed, no credentials, a bug) says nothing either way.
    """
    if isinstance(exc, bexc.ClientError):
        code = str(exc.response.get("Error", {}).get("Code", ""))
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        if code in _UNAVAILABLE_CODES or status >= 500 or status == 429:
            return Verdict.UNAVAILABLE
        return Verdict.ANSWERED
    if isinstance(exc, _CONNECTION_FAILURES):
        return Verdict.UNAVAILABLE
    if isinstance(exc, TransferError):  # raised by our own check of a response the server gave
        return Verdict.UNAVAILABLE if exc.code in _UNAVAILABLE_CODES else Verdict.ANSWERED
    return Verdict.UNKNOWN


def classify(exc: BaseException, *, key: str = "", part: int | None = None) -> TransferError | None:
    """The TransferError subclass that says what to do next about an S3 call's exception.

    None for anything that is not an S3, network or permission failure: that is a bug in chunkd,
    and dressing it up as a PermanentError would mark the user's file FAILED for it.
    """
    if isinstance(exc, TransferError):
        return exc
    if isinstance(exc, bexc.ClientError):
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        message = f"{exc.operation_name}: {code or status} {error.get('Message', '')}".strip()
        if code == "NoSuchUpload":
            return UploadGoneError(message, code=code, key=key, part=part)
        if code in _PERMANENT_CODES:  # before the status test: NotImplemented is a 501
            return PermanentError(message, code=code, key=key, part=part)
        if code in _RETRYABLE_CODES or status >= 500 or status == 429:
            return RetryableError(message, code=code, key=key, part=part)
        return PermanentError(message, code=code or str(status), key=key, part=part)
    if isinstance(exc, (bexc.NoCredentialsError, bexc.PartialCredentialsError)):
        return PermanentError(f"no S3 credentials: {exc}", code="NoCredentials", key=key, part=part)
    if isinstance(exc, (bexc.EndpointConnectionError, bexc.ConnectionError, bexc.HTTPClientError)):
        return RetryableError(f"connection failed: {exc}", code="ConnectionError", key=key, part=part)
    if isinstance(exc, PermissionError):
        return PermanentError(f"permission denied reading {exc.filename}", code="PermissionDenied", key=key, part=part)
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return RetryableError(f"connection failed: {exc}", code="ConnectionError", key=key, part=part)
    if isinstance(exc, bexc.BotoCoreError):  # the request could not be built or sent as asked
        return PermanentError(f"{type(exc).__name__}: {exc}", code=type(exc).__name__, key=key, part=part)
    return None


@dataclass
class RetryPolicy:
    """Exponential backoff with full jitter, bounded attempts; sleep and stop are injectable.

    With a `stop_event`, shutdown cuts a backoff short and no attempt starts after it: the call
    raises the last classified error at once. `sleep` replaces the wait (tests record it instead).
    """

    max_attempts: int = 8
    initial: float = 0.5
    maximum: float = 30.0
    stop_event: threading.Event | None = None
    sleep: Callable[[float], None] | None = None  # None: wait on stop_event if given, else time.sleep
    on_retry: Callable[[TransferError, int], None] | None = None

    @classmethod
    def quick(cls, *, max_attempts: int = 3) -> RetryPolicy:
        """A few attempts within about a second: start-up checks and operator commands fail fast."""
        return cls(max_attempts=max_attempts, initial=0.2, maximum=1.0)

    def call(self, fn: Callable[[], T], *, key: str = "", part: int | None = None) -> T:
        """Run `fn`, retrying RetryableError; raise the classified error when attempts run out.

        Exceptions that `classify` does not know (bugs) leave at once, unchanged.
        """
        stop: stop_base = stop_after_attempt(self.max_attempts)
        if self.stop_event is not None:
            stop = stop | stop_when_event_set(self.stop_event)
        retrying = Retrying(
            stop=stop,
            wait=wait_random_exponential(multiplier=self.initial, max=self.maximum),
            retry=retry_if_exception(lambda e: isinstance(e, TransferError) and e.retryable),
            sleep=self._sleeper(),
            reraise=True,
            before_sleep=self._before_sleep,
        )
        failures: list[TransferError] = []

        def attempt() -> T:
            if failures and self.stop_event is not None and self.stop_event.is_set():
                raise failures[-1]  # shutdown came during the backoff: send nothing more
            try:
                return fn()
            except (SourceChangedError, SourceGoneError):
                raise  # the local file, not S3: the caller restarts or gives up, never retries here
            except Exception as exc:
                error = classify(exc, key=key, part=part)
                if error is None:
                    raise
                failures.append(error)
                if error is exc:
                    raise  # already ours: no cause pointing at itself
                raise error from exc

        return retrying(attempt)

    def _sleeper(self) -> Callable[[float], None]:
        if self.sleep is not None:
            return self.sleep
        if self.stop_event is not None:
            return sleep_using_event(self.stop_event)  # returns as soon as shutdown is requested
        return time.sleep

    def _before_sleep(self, retry_state: RetryCallState) -> None:
        if self.on_retry is None or retry_state.outcome is None:
            return
        error = retry_state.outcome.exception()
        if isinstance(error, TransferError):  # always: only TransferErrors are retried
            self.on_retry(error, retry_state.attempt_number)
