"""The one boto3 S3 client the daemon shares, configured for S3-compatible servers."""

from __future__ import annotations

import collections
import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import boto3
import botocore.auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.handlers import add_expect_header, convert_body_to_file_like_object, set_operation_specific_signer

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

_SIGNER = "chunkd-s3v4"


class PrecomputedPayloadAuth(botocore.auth.S3SigV4Auth):
    """SigV4 for S3 that signs a body's SHA-256 computed beforehand.

    A part's SHA-256 is computed anyway (manifest, rewrite detection); handing it to the signer
    makes it the request's `x-amz-content-sha256`, which S3, MinIO and Ceph check against the bytes
    they receive, for free. botocore would otherwise read the body once more to hash it, or (with
    payload signing off) send UNSIGNED-PAYLOAD. Bodies without a known hash are signed as botocore
    signs them.
    """

    def payload(self, request: AWSRequest) -> str:
        known = payload_sha256_of(request.body)
        return known if known is not None else str(super().payload(request))


# Bytes bodies (a part read into a buffer, sent in one piece) cannot carry an attribute: their hash
# is looked up by identity, registered only while the requests that send them run. One object may
# be sent by two requests at once (CPython shares b"" and one-byte bytes): same bytes, same hash,
# so entries are counted.
_SIGNED_BODIES: dict[int, str] = {}
_SIGNED_USERS: collections.Counter[int] = collections.Counter()
_SIGNED_LOCK = threading.Lock()


def payload_sha256_of(body: object) -> str | None:
    """The SHA-256 a body is to be signed with, when chunkd computed it."""
    known = getattr(body, "payload_sha256", None) or _SIGNED_BODIES.get(id(body))
    return known if isinstance(known, str) else None


@contextlib.contextmanager
def signed_payload(body: bytes | bytearray, sha256: str) -> Iterator[bytes | bytearray]:
    """While the block runs, a request whose body is `body` is signed with `sha256`."""
    key = id(body)
    with _SIGNED_LOCK:
        _SIGNED_BODIES[key] = sha256
        _SIGNED_USERS[key] += 1
    try:
        yield body
    finally:
        with _SIGNED_LOCK:
            _SIGNED_USERS[key] -= 1
            if not _SIGNED_USERS[key]:
                del _SIGNED_USERS[key], _SIGNED_BODIES[key]


botocore.auth.AUTH_TYPE_MAPS.setdefault(_SIGNER, PrecomputedPayloadAuth)


def _choose_signer(signing_name: str, signature_version: Any, context: dict[str, Any], **_: Any) -> Any:
    """botocore's own choice of signer, with plain S3 SigV4 swapped for PrecomputedPayloadAuth."""
    chosen = set_operation_specific_signer(context=context, signing_name=signing_name) or signature_version
    return _SIGNER if chosen == "s3v4" else chosen


# Bodies up to this size go without `Expect: 100-continue` (the AWS SDKs for Go and Java stop at 2 MiB too).
EXPECT_CONTINUE_MIN_BYTES = 2 * 1024 * 1024


def _expect_continue_for_large_bodies(model: Any, params: dict[str, Any], **kwargs: Any) -> None:
    """botocore's `Expect: 100-continue` on a body of at least EXPECT_CONTINUE_MIN_BYTES.

    The header makes the client wait a round trip for the server's "go ahead" before sending the
    body: worth it before megabytes that may be refused, a pure delay on a small file or a
    manifest, where it was a third of the time of each PutObject.
    """
    length = params.get("headers", {}).get("Content-Length")
    if length is not None and int(length) < EXPECT_CONTINUE_MIN_BYTES:
        return
    add_expect_header(model, params, **kwargs)


@dataclass(frozen=True)
class S3Target:
    endpoint_url: str | None = None
    region: str | None = None
    access_key: str | None = None  # None: boto3's normal chain (env, profile, instance role)
    secret_key: str | None = None
    name: str | None = None  # what the destination is called in records, when not its URL (`--dev`)

    @property
    def destination(self) -> str:
        """The endpoint as stream records name it: a record is "done" only for this endpoint."""
        return self.name or (self.endpoint_url or AWS_S3).rstrip("/")


AWS_S3 = "aws-s3"


def make_client(target: S3Target, *, max_pool_connections: int = 10) -> S3Client:
    """A client sized to the concurrency.

    botocore's own retries are off (tenacity does ours, with our classification), and its default
    CRC checksums are sent only when required, since several S3-compatible servers reject them.
    Path-style addressing when an endpoint is given: MinIO and local servers expect it.
    Payloads are signed with a SHA-256 the caller computed (see PrecomputedPayloadAuth); bodies
    without one go UNSIGNED-PAYLOAD rather than being hashed by botocore a second time.
    """
    config = Config(
        max_pool_connections=max_pool_connections,
        retries={"total_max_attempts": 1, "mode": "standard"},
        connect_timeout=5,
        read_timeout=120,
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        s3={"payload_signing_enabled": False, **({"addressing_style": "path"} if target.endpoint_url else {})},
        tcp_keepalive=True,
    )
    session = boto3.session.Session()
    client = session.client(
        "s3",
        endpoint_url=target.endpoint_url,
        region_name=target.region or "us-east-1",
        aws_access_key_id=target.access_key,
        aws_secret_access_key=target.secret_key,
        config=config,
    )
    for operation in ("PutObject", "UploadPart"):
        client.meta.events.register_first(f"choose-signer.s3.{operation}", _choose_signer)
        # A part read into memory goes out as bytes in one send; botocore would wrap bytes in a
        # BytesIO, which urllib3 then sends 16 KiB at a time.
        client.meta.events.unregister(f"before-parameter-build.s3.{operation}", convert_body_to_file_like_object)
    client.meta.events.unregister("before-call.s3", add_expect_header)
    client.meta.events.register("before-call.s3", _expect_continue_for_large_bodies)
    return client


def credential_method() -> str | None:
    """Where boto3's normal chain finds credentials ("env", "shared-credentials-file", an
    instance role…), or None when it finds none."""
    credentials = boto3.session.Session().get_credentials()
    return None if credentials is None else str(credentials.method)
