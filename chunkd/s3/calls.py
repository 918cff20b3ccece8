"""What every S3 call goes through: the retry policy, so transient failures are retried with
backoff and every S3 failure that escapes is a classified TransferError carrying key and part
number (a bug in chunkd escapes as itself, after one attempt); with a CircuitBreaker, each attempt
first passes the endpoint's breaker (see chunkd.s3.breaker); and a count of requests by operation.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

from chunkd.errors import PermanentError
from chunkd.pipeline.buffers import BufferPool, shared_pool
from chunkd.s3.bandwidth import TokenBucket
from chunkd.s3.breaker import CircuitBreaker
from chunkd.s3.retry import RetryPolicy, breaker_verdict
from chunkd.s3.traits import ServerTraits

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

T = TypeVar("T")
_NOT_FOUND = frozenset({"404", "NoSuchKey", "NotFound"})


class S3Calls:
    """The client and the policies around it, shared by the gateway's reads and writes."""

    def __init__(
        self,
        client: S3Client,
        policy: RetryPolicy,
        *,
        limiter: TokenBucket | None = None,
        on_request: Callable[[str], None] | None = None,
        breaker: CircuitBreaker | None = None,
        wait_for_breaker: bool = True,
        content_md5: bool = False,
        traits: ServerTraits | None = None,
        buffers: BufferPool | None = None,
    ) -> None:
        self._client = client
        self._buffers = buffers or shared_pool()
        # content_md5 off: a body's integrity rests on its signed SHA-256, one hash pass per byte. On:
        # a part is checked by its MD5 instead (Content-MD5, or the reply's ETag: ServerTraits), for
        # servers that check no payload hash (`rclone serve s3`, moto); MD5 costs ~1.4 s/GiB.
        self.traits = traits or ServerTraits(content_md5=content_md5)
        self._policy = policy
        self._limiter = limiter
        self._on_request = on_request or (lambda op: None)
        self._breaker = breaker
        self._wait_for_breaker = wait_for_breaker

    @property
    def breaker(self) -> CircuitBreaker | None:
        return self._breaker

    @property
    def content_md5(self) -> bool:
        return self.traits.content_md5

    def _attempt(self, fn: Callable[[], T]) -> Callable[[], T]:
        """One attempt of `fn`, let through (or held back) by the endpoint's breaker."""
        breaker = self._breaker
        if breaker is None:
            return fn
        wait, stop = self._wait_for_breaker, self._policy.stop_event
        return lambda: breaker.call(fn, breaker_verdict, wait=wait, stop=stop)

    def _call(self, op: str, fn: Callable[[], T], *, key: str, part: int | None = None) -> T:
        def counted() -> T:
            self._on_request(op)
            return fn()

        return self._policy.call(self._attempt(counted), key=key, part=part)

    def _found(self, op: str, fn: Callable[[], T], *, key: str) -> T | None:
        """`_call`, with None for a key that is not there."""
        try:
            return self._call(op, fn, key=key)
        except PermanentError as exc:
            if exc.code in _NOT_FOUND:
                return None
            raise
