"""The one way into S3: every request chunkd makes, for uploads and for the operator commands.

`Uploader` combines the writes (chunkd.s3.writes), the reads (chunkd.s3.reads) and the start-up
probes (chunkd.s3.probes); every call of
either goes through the retry policy and the endpoint's breaker (chunkd.s3.calls), so a failure
that escapes is a classified TransferError carrying key and part number.
"""

from __future__ import annotations

from chunkd.s3.client import S3Target, make_client
from chunkd.s3.probes import ProbeCalls
from chunkd.s3.reads import ListedObject, MultipartUpload, ObjectInfo, ReadCalls, RemotePart, SmallObject
from chunkd.s3.retry import RetryPolicy
from chunkd.s3.traits import ServerTraits
from chunkd.s3.writes import WriteCalls

__all__ = ["ListedObject", "MultipartUpload", "ObjectInfo", "RemotePart", "SmallObject", "Uploader"]


class Uploader(WriteCalls, ReadCalls, ProbeCalls):
    """The S3 gateway; its constructor is `S3Calls`'s (the client, retry policy, limiter, breaker
    and server traits), and the `with_*` copies share the client under other settings."""

    @classmethod
    def connect(cls, target: S3Target, policy: RetryPolicy, *, max_pool_connections: int = 10) -> Uploader:
        """An Uploader on a client of its own, for a one-off command (verify, gc, cancel, doctor)."""
        return cls(make_client(target, max_pool_connections=max_pool_connections), policy)

    def presigned_get(self, bucket: str, key: str, *, seconds: int) -> str:
        """A URL that GETs the object for `seconds` without credentials: a credential itself, for
        events and webhooks only, never for log lines. Signed locally, no request."""
        return str(self._client.generate_presigned_url(
            "get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=seconds,
        ))

    def with_traits(self, traits: ServerTraits) -> Uploader:
        """The same gateway for a server whose traits are now known."""
        return self._variant(self._policy, wait_for_breaker=self._wait_for_breaker, traits=traits)

    def with_policy(self, policy: RetryPolicy, *, wait_for_breaker: bool = False) -> Uploader:
        """The same client, limiter and breaker under another retry policy, for quick checks
        (start-up preflight, /readyz): by default they fail at once with CircuitOpenError while the
        breaker is open instead of waiting for it, though they may serve as its half-open probe."""
        return self._variant(policy, wait_for_breaker=wait_for_breaker, traits=self.traits)

    def _variant(self, policy: RetryPolicy, *, wait_for_breaker: bool, traits: ServerTraits) -> Uploader:
        """This gateway's client, limiter, breaker, buffer pool and request counter under other settings."""
        return Uploader(
            self._client, policy, limiter=self._limiter, on_request=self._on_request,
            breaker=self._breaker, wait_for_breaker=wait_for_breaker, traits=traits, buffers=self._buffers,
        )
