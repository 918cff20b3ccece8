"""The one way into S3: every request chunkd makes, for uploads and for the operator commands.

Every call goes through the RetryPolicy, so transient failures are retried with backoff and
every S3 failure that escapes is a classified TransferError carrying key and part number (a bug
in chunkd escapes as itself, after one attempt). With a
CircuitBreaker, each attempt first passes the endpoint's breaker (see chunkd.s3.breaker).
"""

from __future__ import annotations

import base64
import contextlib
import functools
import hashlib
import io
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING, TypeVar, cast

from botocore.exceptions import BotoCoreError, ClientError

from chunkd.errors import PermanentError, RetryableError, TransferError, UploadGoneError
from chunkd.model.etags import same_etag
from chunkd.model.planner import Part
from chunkd.model.states import PartRecord
from chunkd.pipeline.partreader import (
    Digest,
    FileIdentity,
    RangeReader,
    digest_range,
    open_checked,
)
from chunkd.s3.bandwidth import TokenBucket
from chunkd.s3.breaker import CircuitBreaker
from chunkd.s3.client import S3Target, make_client
from chunkd.s3.retry import RetryPolicy, breaker_verdict
from chunkd.s3.traits import ServerTraits

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_s3.type_defs import (
        CompletedMultipartUploadTypeDef,
        CopySourceTypeDef,
        CreateMultipartUploadRequestTypeDef,
        ListMultipartUploadsOutputTypeDef,
        ListMultipartUploadsRequestTypeDef,
        ListObjectsV2OutputTypeDef,
        ListObjectsV2RequestTypeDef,
        ListPartsOutputTypeDef,
        PutObjectRequestTypeDef,
        UploadPartRequestTypeDef,
    )

T = TypeVar("T")
_NOT_FOUND = frozenset({"404", "NoSuchKey", "NotFound"})
READ_SIZE = 1024 * 1024


@dataclass(frozen=True)
class RemotePart:
    number: int
    size: int
    etag: str


@dataclass(frozen=True)
class ObjectInfo:
    size: int
    etag: str


@dataclass(frozen=True)
class MultipartUpload:
    key: str
    upload_id: str
    initiated: float  # epoch seconds; 0.0 when the server did not say


class Uploader:
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
    ) -> None:
        self._client = client
        # content_md5 off: a body's integrity rests on its signed SHA-256, one hash pass per byte. On:
        # every body also carries Content-MD5 and the returned ETag is checked against it, for servers
        # that check MD5s but not payload hashes (`rclone serve s3`), at one more pass (~1.5 s/GiB).
        self.traits = traits or ServerTraits(content_md5=content_md5)
        self._policy = policy
        self._limiter = limiter
        self._on_request = on_request or (lambda op: None)
        self._breaker = breaker
        self._wait_for_breaker = wait_for_breaker

    @classmethod
    def connect(cls, target: S3Target, policy: RetryPolicy, *, max_pool_connections: int = 10) -> Uploader:
        """An Uploader on a client of its own, for a one-off command (verify, gc, cancel, doctor)."""
        return cls(make_client(target, max_pool_connections=max_pool_connections), policy)

    @property
    def breaker(self) -> CircuitBreaker | None:
        return self._breaker

    @property
    def content_md5(self) -> bool:
        return self.traits.content_md5

    def with_traits(self, traits: ServerTraits) -> Uploader:
        """The same gateway for a server whose traits are now known."""
        return Uploader(
            self._client, self._policy, limiter=self._limiter, on_request=self._on_request,
            breaker=self._breaker, wait_for_breaker=self._wait_for_breaker, traits=traits,
        )

    def with_policy(self, policy: RetryPolicy, *, wait_for_breaker: bool = False) -> Uploader:
        """The same client, limiter and breaker under another retry policy, for quick checks
        (start-up preflight, /readyz): by default they fail at once with CircuitOpenError while the
        breaker is open instead of waiting for it, though they may serve as its half-open probe."""
        return Uploader(
            self._client, policy, limiter=self._limiter, on_request=self._on_request,
            breaker=self._breaker, wait_for_breaker=wait_for_breaker, traits=self.traits,
        )

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

    # -- writes ------------------------------------------------------------------------------

    def create(self, bucket: str, key: str, *, content_type: str | None = None) -> str:
        request: CreateMultipartUploadRequestTypeDef = {"Bucket": bucket, "Key": key}
        if content_type:
            request["ContentType"] = content_type
        response = self._call("CreateMultipartUpload", lambda: self._client.create_multipart_upload(**request), key=key)
        return str(response["UploadId"])

    def upload_part(
        self, bucket: str, key: str, upload_id: str, path: Path, part: Part, identity: FileIdentity | None
    ) -> PartRecord:
        """Hash the range, then send it signed with its SHA-256 (and Content-MD5 if configured)."""

        def send() -> PartRecord:
            with open_checked(path, identity) as handle:
                digest, body = self._read(handle, part.offset, part.size)
                request: UploadPartRequestTypeDef = {
                    "Bucket": bucket, "Key": key, "UploadId": upload_id, "PartNumber": part.number,
                    "Body": body, "ContentLength": part.size,
                }
                if digest.md5_b64:
                    request["ContentMD5"] = digest.md5_b64
                self._on_request("UploadPart")
                response = self._client.upload_part(**request)
            return _part_record(part, digest, str(response["ETag"]))

        return self._policy.call(self._attempt(send), key=key, part=part.number)

    def put_object(
        self, bucket: str, key: str, path: Path, size: int, identity: FileIdentity | None,
        *, content_type: str | None = None,
    ) -> tuple[Digest, str]:
        """Single PutObject for files smaller than one part; returns the digest and ETag."""

        def send() -> tuple[Digest, str]:
            with open_checked(path, identity) as handle:
                digest, body = self._read(handle, 0, size)
                request: PutObjectRequestTypeDef = {"Bucket": bucket, "Key": key, "Body": body, "ContentLength": size}
                if digest.md5_b64:
                    request["ContentMD5"] = digest.md5_b64
                if content_type:
                    request["ContentType"] = content_type
                self._on_request("PutObject")
                response = self._client.put_object(**request)
            etag = str(response["ETag"])
            _check_etag(etag, digest)
            return digest, etag

        return self._policy.call(self._attempt(send), key=key)

    def _read(self, handle: io.BufferedReader, offset: int, size: int) -> tuple[Digest, IO[bytes]]:
        digest = digest_range(handle, offset, size, md5=self.content_md5)
        body = RangeReader(handle, offset, size, self._limiter, payload_sha256=digest.sha256_hex)
        return digest, cast("IO[bytes]", body)  # botocore reads any file-like object

    def checks_payload_hash(self, bucket: str, key: str) -> bool | None:
        """Whether the server refuses a body that does not hash to its signed SHA-256.

        Sends a few bytes signed with another body's hash: S3, MinIO and Ceph refuse them
        (`XAmzContentSHA256Mismatch`). A server that stores them anyway (`rclone serve s3`, moto)
        would also keep a body cut short by a client killed mid-part, so it needs Content-MD5; the
        stored probe is deleted. None: the probe itself was refused (permissions), so nobody knows.
        """
        body = _BytesBody(b"chunkd probe", payload_sha256=hashlib.sha256(b"not these bytes").hexdigest())
        try:
            self._client.put_object(Bucket=bucket, Key=key, Body=body, ContentLength=len(body.data))
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            return True if code in PAYLOAD_HASH_REFUSALS else None
        with contextlib.suppress(ClientError, BotoCoreError):
            self._client.delete_object(Bucket=bucket, Key=key)
        return False

    def probe_multipart_etag(self, bucket: str, key: str, body: bytes) -> str:
        """The ETag a one-part multipart upload of `body` completes with; the object is deleted."""
        upload_id = self.create(bucket, key)
        try:
            response = self._call(
                "UploadPart",
                lambda: self._client.upload_part(
                    Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=1, Body=body,
                    ContentMD5=base64.b64encode(hashlib.md5(body, usedforsecurity=False).digest()).decode(),
                ),
                key=key,
            )
            part = PartRecord(number=1, offset=0, size=len(body), etag=str(response["ETag"]), sha256="")
            etag = self.complete(bucket, key, upload_id, [part])
        except BaseException:
            with contextlib.suppress(TransferError):
                self.abort(bucket, key, upload_id)
            raise
        with contextlib.suppress(TransferError):
            self._call("DeleteObject", lambda: self._client.delete_object(Bucket=bucket, Key=key), key=key)
        return etag

    def put_bytes(self, bucket: str, key: str, data: bytes, *, content_type: str) -> None:
        md5 = base64.b64encode(hashlib.md5(data, usedforsecurity=False).digest()).decode()
        self._call(
            "PutObject",
            lambda: self._client.put_object(Bucket=bucket, Key=key, Body=data, ContentType=content_type, ContentMD5=md5),
            key=key,
        )

    def copy(self, src_bucket: str, src_key: str, bucket: str, key: str) -> None:
        """Server-side copy: CopyObject up to 5 GiB, boto3's managed multipart copy beyond."""
        source: CopySourceTypeDef = {"Bucket": src_bucket, "Key": src_key}
        info = self.head(src_bucket, src_key)
        if info is not None and info.size > 5 * 1024**3:
            self._call("MultipartCopy", lambda: self._client.copy(source, bucket, key), key=key)
            return
        self._call("CopyObject", lambda: self._client.copy_object(CopySource=source, Bucket=bucket, Key=key), key=key)

    def complete(self, bucket: str, key: str, upload_id: str, parts: list[PartRecord]) -> str:
        layout: CompletedMultipartUploadTypeDef = {"Parts": [{"PartNumber": p.number, "ETag": p.etag} for p in parts]}
        response = self._call(
            "CompleteMultipartUpload",
            lambda: self._client.complete_multipart_upload(
                Bucket=bucket, Key=key, UploadId=upload_id, MultipartUpload=layout
            ),
            key=key,
        )
        return str(response.get("ETag", ""))

    def abort(self, bucket: str, key: str, upload_id: str) -> None:
        self._call(
            "AbortMultipartUpload",
            lambda: self._client.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id),
            key=key,
        )

    # -- reads -------------------------------------------------------------------------------

    def list_parts(self, bucket: str, key: str, upload_id: str) -> dict[int, RemotePart]:
        """What the server really holds for this upload (paginated); the truth for reconciling."""
        found: dict[int, RemotePart] = {}
        marker = 0
        while True:
            page = functools.partial(_parts_page, self._client, bucket, key, upload_id, marker)
            response = self._call("ListParts", page, key=key)
            for item in response.get("Parts", []):
                number = int(item["PartNumber"])
                found[number] = RemotePart(number, int(item["Size"]), str(item["ETag"]))
            if not response.get("IsTruncated"):
                return found
            marker = int(response.get("NextPartNumberMarker", 0))

    def list_uploads(self, bucket: str, key: str) -> list[str]:
        """Ids of the unfinished multipart uploads for exactly this key, newest first."""
        found = [upload for upload in self._uploads(bucket, prefix=key) if upload.key == key]
        found.sort(key=lambda upload: upload.initiated, reverse=True)
        return [upload.upload_id for upload in found]

    def list_all_uploads(self, bucket: str) -> Iterator[MultipartUpload]:
        """Every unfinished multipart upload in the bucket, page by page."""
        return self._uploads(bucket, prefix="")

    def _uploads(self, bucket: str, *, prefix: str) -> Iterator[MultipartUpload]:
        markers = ("", "")
        while True:
            try:
                page = functools.partial(_uploads_page, self._client, bucket, prefix, markers)
                response = self._call("ListMultipartUploads", page, key=prefix)
            except UploadGoneError:  # `rclone serve s3` answers NoSuchUpload when there are none
                return
            for item in response.get("Uploads", []):
                yield MultipartUpload(str(item["Key"]), str(item["UploadId"]), _epoch(item.get("Initiated")))
            following = (response.get("NextKeyMarker") or "", response.get("NextUploadIdMarker") or "")
            if not response.get("IsTruncated") or not any(following) or following == markers:
                return  # the last test: a server that does not move its markers would loop forever
            markers = following

    def list_folder(self, bucket: str, folder: str, *, max_pages: int) -> set[str] | None:
        """The keys directly in `folder` ("" or "a/b/"), or None when there are more than
        `max_pages` pages of them (listing would cost more than asking about each key)."""
        keys: set[str] = set()
        token = ""
        for _ in range(max_pages):
            page = functools.partial(_folder_page, self._client, bucket, folder, token)
            response = self._call("ListObjectsV2", page, key=folder)
            keys.update(str(item["Key"]) for item in response.get("Contents", []))
            if not response.get("IsTruncated"):
                return keys
            token = str(response["NextContinuationToken"])
        return None

    def get_small(self, bucket: str, key: str, *, limit: int) -> bytes | None:
        """A small object's bytes (a manifest), or None when there is no such key. Reads one byte
        past `limit`, so that a caller can tell an object over it from one at it."""
        return self.stream(bucket, key, lambda chunks: b"".join(_upto(chunks, limit + 1)))

    def stream(self, bucket: str, key: str, consume: Callable[[Iterator[bytes]], T]) -> T | None:
        """`consume` fed the object's bytes as they arrive (1 MiB reads), or None when there is no
        such key. A connection dropped mid-read is retried by calling `consume` again from the
        first byte, so it must start afresh each time (a hash, not an append to a file)."""

        def read() -> T:
            with contextlib.closing(self._client.get_object(Bucket=bucket, Key=key)["Body"]) as body:
                return consume(body.iter_chunks(READ_SIZE))

        return self._found("GetObject", read, key=key)

    def head(self, bucket: str, key: str) -> ObjectInfo | None:
        response = self._found("HeadObject", lambda: self._client.head_object(Bucket=bucket, Key=key), key=key)
        return None if response is None else ObjectInfo(int(response["ContentLength"]), str(response.get("ETag", "")))

    def head_bucket(self, bucket: str) -> None:
        self._call("HeadBucket", lambda: self._client.head_bucket(Bucket=bucket), key="")


PAYLOAD_HASH_REFUSALS = frozenset({"XAmzContentSHA256Mismatch", "BadDigest", "InvalidDigest"})


class _BytesBody(io.BytesIO):
    """Bytes with a signed hash of our choosing (see chunkd.s3.client.PrecomputedPayloadAuth)."""

    def __init__(self, data: bytes, *, payload_sha256: str) -> None:
        super().__init__(data)
        self.data = data
        self.payload_sha256 = payload_sha256


def _parts_page(client: S3Client, bucket: str, key: str, upload_id: str, marker: int) -> ListPartsOutputTypeDef:
    return client.list_parts(Bucket=bucket, Key=key, UploadId=upload_id, PartNumberMarker=marker, MaxParts=1000)


def _uploads_page(
    client: S3Client, bucket: str, prefix: str, markers: tuple[str, str]
) -> ListMultipartUploadsOutputTypeDef:
    request: ListMultipartUploadsRequestTypeDef = {"Bucket": bucket, "Prefix": prefix}
    if markers[0]:
        request["KeyMarker"] = markers[0]
    if markers[1]:
        request["UploadIdMarker"] = markers[1]
    return client.list_multipart_uploads(**request)


def _folder_page(client: S3Client, bucket: str, folder: str, token: str) -> ListObjectsV2OutputTypeDef:
    request: ListObjectsV2RequestTypeDef = {"Bucket": bucket, "Prefix": folder, "Delimiter": "/"}
    if token:
        request["ContinuationToken"] = token
    return client.list_objects_v2(**request)


def _epoch(initiated: datetime | None) -> float:
    return 0.0 if initiated is None else initiated.timestamp()  # unknown age: old enough


def _upto(chunks: Iterator[bytes], limit: int) -> Iterator[bytes]:
    """The first `limit` bytes of `chunks`, reading no further."""
    for chunk in chunks:
        if limit <= 0:
            return
        yield chunk[:limit]
        limit -= len(chunk)


def _check_etag(etag: str, digest: Digest, part: int | None = None) -> None:
    """With our MD5 at hand: servers that return a non-MD5 ETag are fine; a different MD5 means
    corrupted bytes."""
    if digest.etag is None or same_etag(etag, digest.etag):
        return
    if len(etag.strip('"')) == 32:
        raise RetryableError(f"server ETag {etag} != local MD5 {digest.md5_hex}", code="BadDigest", part=part)


def _part_record(part: Part, digest: Digest, etag: str) -> PartRecord:
    _check_etag(etag, digest, part.number)
    return PartRecord(number=part.number, offset=part.offset, size=part.size, etag=etag, sha256=digest.sha256_hex)
