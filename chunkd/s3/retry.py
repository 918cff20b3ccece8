"""Turning botocore failures into retryable or permanent errors, and the retry policy for them."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import botocore.exceptions as bexc
from tenacity import (
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    wait_random_exponential,
)
from tenacity.stop import stop_base

from chunkd.s3.breaker import Verdict
from chunkd.errors import (
    PermanentError,
    RetryableError,
    SourceChangedError,
    SourceGoneError,
    TransferError,
    UploadGoneError,
)

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


def classify(exc: BaseException, *, key: str = "", part: int | None = None) -> TransferError:
    """Map any exception from an S3 call to the TransferError subclass that says what to do next."""
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
    return PermanentError(f"{type(exc).__name__}: {exc}", code="Unexpected", key=key, part=part)


class stop_when_set(stop_base):
    """Stop retrying as soon as shutdown is requested, so SIGTERM is never stuck in a backoff."""

    def __init__(self, event: threading.Event) -> None:
        self.event = event

    def __call__(self, retry_state: object) -> bool:
        return self.event.is_set()


@dataclass
class RetryPolicy:
    """Exponential backoff with full jitter, bounded attempts; sleep and stop are injectable."""

    max_attempts: int = 8
    initial: float = 0.5
    maximum: float = 30.0
    stop_event: threading.Event | None = None
    sleep: Callable[[float], None] = time.sleep
    on_retry: Callable[[TransferError, int], None] | None = None

    def call(self, fn: Callable[[], T], *, key: str = "", part: int | None = None) -> T:
        """Run `fn`, retrying RetryableError; raise the classified error when attempts run out."""
        stop: stop_base = stop_after_attempt(self.max_attempts)
        if self.stop_event is not None:
            stop = stop | stop_when_set(self.stop_event)
        retrying = Retrying(
            stop=stop,
            wait=wait_random_exponential(multiplier=self.initial, max=self.maximum),
            retry=retry_if_exception(lambda e: isinstance(e, TransferError) and e.retryable),
            sleep=self.sleep,
            reraise=True,
            before_sleep=self._before_sleep,
        )

        def attempt() -> T:
            try:
                return fn()
            except (SourceChangedError, SourceGoneError):
                raise  # the local file, not S3: the caller restarts or gives up, never retries here
            except Exception as exc:  # noqa: BLE001 - classified and re-raised
                raise classify(exc, key=key, part=part) from exc

        return retrying(attempt)

    def _before_sleep(self, retry_state: object) -> None:
        if self.on_retry is None:
            return
        outcome = retry_state.outcome  # type: ignore[attr-defined]
        self.on_retry(outcome.exception(), retry_state.attempt_number)  # type: ignore[attr-defined]
