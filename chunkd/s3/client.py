"""The one boto3 S3 client the daemon shares, configured for S3-compatible servers."""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import boto3
import botocore.auth
import botocore.exceptions as bexc
import urllib3
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.handlers import add_expect_header, convert_body_to_file_like_object, set_operation_specific_signer

from chunkd.errors import CredentialsError

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

_SIGNER = "chunkd-s3v4"
logger = logging.getLogger("chunkd.s3")


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
    addressing_style: str = "auto"  # auto: path-style with an endpoint (MinIO, Ceph), boto3's choice on AWS
    ca_bundle: str | None = None  # None: AWS_CA_BUNDLE, else the system's certificates
    verify_tls: bool = True
    sse_c_key: bytes | None = field(default=None, repr=False)  # SSE-C: every object call carries it

    @property
    def destination(self) -> str:
        """The endpoint as stream records name it: a record is "done" only for this endpoint."""
        return self.name or (self.endpoint_url or AWS_S3).rstrip("/")


AWS_S3 = "aws-s3"


def make_client(target: S3Target, *, max_pool_connections: int = 10) -> S3Client:
    """A client sized to the concurrency.

    botocore's own retries are off (tenacity does ours, with our classification), and its default
    CRC checksums are sent only when required, since several S3-compatible servers reject them.
    Path-style addressing when an endpoint is given (MinIO and local servers expect it), unless
    the target says otherwise. Payloads are signed with a SHA-256 the caller computed (see
    PrecomputedPayloadAuth); bodies without one go UNSIGNED-PAYLOAD rather than being hashed by
    botocore a second time. The region: the target's, else AWS_REGION (the AWS SDKs' own variable,
    which botocore does not read), else boto3's (AWS_DEFAULT_REGION, the profile). Credentials are resolved here, not at the first request, so that a
    missing profile or an expired SSO login is one CredentialsError at start.
    """
    config = Config(
        max_pool_connections=max_pool_connections,
        retries={"total_max_attempts": 1, "mode": "standard"},
        connect_timeout=5,
        read_timeout=120,
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        s3={"payload_signing_enabled": False, "addressing_style": _addressing(target)},
        tcp_keepalive=True,
        signature_version="s3v4",  # what it is for requests anyway; presigned URLs would otherwise be SigV2
        # chunkd builds every request's parameters itself, typed (mypy, boto3-stubs); botocore's
        # check of them again costs a small file a few percent of its CPU.
        parameter_validation=False,
    )
    with _credential_errors():
        session = boto3.session.Session()
        client = session.client(
            "s3",
            endpoint_url=target.endpoint_url,
            region_name=target.region or os.environ.get("AWS_REGION") or session.region_name or "us-east-1",
            aws_access_key_id=target.access_key,
            aws_secret_access_key=target.secret_key,
            config=config,
            verify=_verify(target),
        )
        if target.access_key is None:
            _resolve_credentials(session)
    for operation in ("PutObject", "UploadPart"):
        client.meta.events.register_first(f"choose-signer.s3.{operation}", _choose_signer)
        # A part read into memory goes out as bytes in one send; botocore would wrap bytes in a
        # BytesIO, which urllib3 then sends 16 KiB at a time.
        client.meta.events.unregister(f"before-parameter-build.s3.{operation}", convert_body_to_file_like_object)
    client.meta.events.unregister("before-call.s3", add_expect_header)
    client.meta.events.register("before-call.s3", _expect_continue_for_large_bodies)
    if target.sse_c_key is not None:
        carry_customer_key(client, target.sse_c_key)
    return client


def _addressing(target: S3Target) -> Literal["auto", "path", "virtual"]:
    """chunkd's auto: path-style with an endpoint (MinIO and local servers expect it), else boto3's."""
    if target.addressing_style in ("path", "virtual"):
        return "path" if target.addressing_style == "path" else "virtual"
    return "path" if target.endpoint_url else "auto"


_TLS_WARNED = threading.Event()


def _verify(target: S3Target) -> str | bool | None:
    """botocore's `verify`: a CA bundle, False (warned about once per process), or None (its default)."""
    if target.verify_tls:
        return target.ca_bundle
    if not _TLS_WARNED.is_set():
        _TLS_WARNED.set()
        logger.warning("TLS certificates of the S3 endpoint are NOT verified (CHUNKD_S3_VERIFY_TLS=false)")
        urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)  # one warning, not one per request
    return False


# Every object request that can carry SSE-C headers; `CopySource…` ones too on copies, whose
# source chunkd encrypted with the same key. botocore turns the key into base64 and adds its MD5.
CUSTOMER_KEY_OPERATIONS = (
    "PutObject", "CreateMultipartUpload", "UploadPart", "CompleteMultipartUpload",
    "HeadObject", "GetObject", "CopyObject", "UploadPartCopy",
)


def carry_customer_key(client: S3Client, key: bytes) -> None:
    """Every object call of `client` carries the SSE-C key (AES256): added before botocore's own
    handlers compute the key's MD5, so no call site can forget it, boto3's managed copy included."""

    def add_key(params: dict[str, Any], model: Any, **_: Any) -> None:
        members = model.input_shape.members
        for prefix in ("", "CopySource"):
            if f"{prefix}SSECustomerKey" in members:
                params.setdefault(f"{prefix}SSECustomerAlgorithm", "AES256")
                params.setdefault(f"{prefix}SSECustomerKey", key)

    for operation in CUSTOMER_KEY_OPERATIONS:
        client.meta.events.register_first(f"before-parameter-build.s3.{operation}", add_key)


@contextlib.contextmanager
def _credential_errors() -> Iterator[None]:
    """boto3's chain failing (no such profile, an expired SSO token, no credentials at all) as one
    CredentialsError line instead of a traceback."""
    try:
        yield
    except bexc.ProfileNotFound as exc:
        raise CredentialsError(
            f"AWS profile {exc.kwargs.get('profile')!r} not found (AWS_PROFILE; profiles live in ~/.aws/config)"
        ) from None
    except (bexc.UnauthorizedSSOTokenError, bexc.SSOTokenLoadError, bexc.TokenRetrievalError) as exc:
        hint = "" if "aws sso login" in str(exc) else " (run `aws sso login`)"
        raise CredentialsError(f"AWS SSO login expired or missing: {exc}{hint}") from None
    except bexc.NoCredentialsError:
        raise CredentialsError(_NO_CREDENTIALS) from None
    except bexc.BotoCoreError as exc:
        raise CredentialsError(f"S3 credentials: {exc}") from None


_NO_CREDENTIALS = (
    "no S3 credentials found (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE, SSO or an instance role)"
)


def _resolve_credentials(session: boto3.session.Session) -> None:
    """Load them now: SSO and assume-role credentials are otherwise fetched at the first request."""
    quiet = logging.getLogger("botocore.credentials")  # it logs the same failure with a traceback
    level = quiet.level
    quiet.setLevel(logging.CRITICAL)
    try:
        credentials = session.get_credentials()
        if credentials is None:
            raise bexc.NoCredentialsError()
        credentials.get_frozen_credentials()
    finally:
        quiet.setLevel(level)


def credential_method() -> str | None:
    """Where boto3's normal chain finds credentials ("env", "shared-credentials-file", an
    instance role…), or None when it finds none."""
    with _credential_errors():
        credentials = boto3.session.Session().get_credentials()
    return None if credentials is None else str(credentials.method)
