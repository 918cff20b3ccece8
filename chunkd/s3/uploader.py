"""S3 operations for one object at a time: create, send parts, complete, verify, abort.

Every call goes through the RetryPolicy, so transient failures are retried with backoff and
everything that escapes is a classified TransferError carrying key and part number. With a
CircuitBreaker, each attempt first passes the endpoint's breaker (see chunkd.s3.breaker).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from botocore.client import BaseClient
from botocore.exceptions import BotoCoreError, ClientError

from chunkd.s3.bandwidth import TokenBucket
from chunkd.s3.breaker import CircuitBreaker
from chunkd.errors import PermanentError, RetryableError, UploadGoneError
from chunkd.model.etags import multipart_etag as multipart_etag  # noqa: PLC0414 - re-exported for pipeline/
from chunkd.model.etags import same_etag as same_etag  # noqa: PLC0414 - re-exported for pipeline/
from chunkd.pipeline.partreader import (
    Digest,
    FileIdentity,
    RangeReader,
    digest_range,
    open_checked,
)
from chunkd.model.planner import Part
from chunkd.s3.retry import RetryPolicy, breaker_verdict
from chunkd.model.states import PartRecord


@dataclass(frozen=True)
class RemotePart:
    number: int
    size: int
    etag: str


@dataclass(frozen=True)
class ObjectInfo:
    size: int
    etag: str


class Uploader:
    def __init__(
        self,
        client: BaseClient,
        policy: RetryPolicy,
        *,
        limiter: TokenBucket | None = None,
        on_request: Callable[[str], None] | None = None,
        breaker: CircuitBreaker | None = None,
        wait_for_breaker: bool = True,
        content_md5: bool = False,
    ) -> None:
        self._client = client
        # Off: a body's integrity rests on its signed SHA-256, one hash pass per byte. On: every body
        # also carries Content-MD5 and the returned ETag is checked against it, for servers that check
        # MD5s but not payload hashes (`rclone serve s3`), at one more pass (~1.5 s of CPU per GiB).
        self.content_md5 = content_md5
        self._policy = policy
        self._limiter = limiter
        self._on_request = on_request or (lambda op: None)
        # Learned at the first verified multipart object: True when the server's ETag for it is the
        # whole object's MD5 (`rclone serve s3`) rather than MD5-of-MD5s, so scans compute that too.
        self.plain_md5_etags: bool | None = None
        self._breaker = breaker
        self._wait_for_breaker = wait_for_breaker

    @property
    def breaker(self) -> CircuitBreaker | None:
        return self._breaker

    def with_policy(self, policy: RetryPolicy, *, wait_for_breaker: bool = False) -> Uploader:
        """The same client, limiter and breaker under another retry policy, for quick checks
        (start-up preflight, /readyz): by default they fail at once with CircuitOpenError while the
        breaker is open instead of waiting for it, though they may serve as its half-open probe."""
        return Uploader(
            self._client, policy, limiter=self._limiter, on_request=self._on_request,
            breaker=self._breaker, wait_for_breaker=wait_for_breaker, content_md5=self.content_md5,
        )

    def _attempt(self, fn: Callable[[], Any]) -> Callable[[], Any]:
        """One attempt of `fn`, let through (or held back) by the endpoint's breaker."""
        breaker = self._breaker
        if breaker is None:
            return fn
        wait, stop = self._wait_for_breaker, self._policy.stop_event
        return lambda: breaker.call(fn, breaker_verdict, wait=wait, stop=stop)

    def _call(self, op: str, fn: Callable[[], Any], *, key: str, part: int | None = None) -> Any:
        def counted() -> Any:
            self._on_request(op)
            return fn()

        return self._policy.call(self._attempt(counted), key=key, part=part)

    def create(self, bucket: str, key: str, *, content_type: str | None = None) -> str:
        extra = {"ContentType": content_type} if content_type else {}
        response = self._call(
            "CreateMultipartUpload",
            lambda: self._client.create_multipart_upload(Bucket=bucket, Key=key, **extra),
            key=key,
        )
        return str(response["UploadId"])

    def upload_part(
        self, bucket: str, key: str, upload_id: str, path: Path, part: Part, identity: FileIdentity | None
    ) -> PartRecord:
        """Hash the range, then send it signed with its SHA-256 (and Content-MD5 if configured)."""

        def send() -> PartRecord:
            with open_checked(path, identity) as handle:
                digest, body = self._read(handle, part.offset, part.size)
                self._on_request("UploadPart")
                response = self._client.upload_part(
                    Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=part.number,
                    Body=body, ContentLength=part.size, **_md5_header(digest),
                )
            return _part_record(part, digest, str(response["ETag"]))

        return self._policy.call(self._attempt(send), key=key, part=part.number)

    def put_object(
        self, bucket: str, key: str, path: Path, size: int, identity: FileIdentity | None,
        *, content_type: str | None = None,
    ) -> tuple[Digest, str]:
        """Single PutObject for files smaller than one part; returns the digest and ETag."""
        extra = {"ContentType": content_type} if content_type else {}

        def send() -> tuple[Digest, str]:
            with open_checked(path, identity) as handle:
                digest, body = self._read(handle, 0, size)
                self._on_request("PutObject")
                response = self._client.put_object(
                    Bucket=bucket, Key=key, Body=body, ContentLength=size, **_md5_header(digest), **extra
                )
            etag = str(response["ETag"])
            _check_etag(etag, digest)
            return digest, etag

        return self._policy.call(self._attempt(send), key=key)

    def _read(self, handle: io.BufferedReader, offset: int, size: int) -> tuple[Digest, RangeReader]:
        digest = digest_range(handle, offset, size, md5=self.content_md5)
        return digest, RangeReader(handle, offset, size, self._limiter, payload_sha256=digest.sha256_hex)

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

    def put_bytes(self, bucket: str, key: str, data: bytes, *, content_type: str) -> None:
        self._call(
            "PutObject",
            lambda: self._client.put_object(
                Bucket=bucket, Key=key, Body=data, ContentType=content_type,
                ContentMD5=base64.b64encode(hashlib.md5(data, usedforsecurity=False).digest()).decode(),
            ),
            key=key,
        )

    def copy(self, src_bucket: str, src_key: str, bucket: str, key: str) -> None:
        """Server-side copy: CopyObject up to 5 GiB, boto3's managed multipart copy beyond."""
        source = {"Bucket": src_bucket, "Key": src_key}
        info = self.head(src_bucket, src_key)
        if info is not None and info.size > 5 * 1024**3:
            self._call("MultipartCopy", lambda: self._client.copy(source, bucket, key), key=key)
            return
        self._call("CopyObject", lambda: self._client.copy_object(CopySource=source, Bucket=bucket, Key=key), key=key)

    def complete(self, bucket: str, key: str, upload_id: str, parts: list[PartRecord]) -> str:
        layout = {"Parts": [{"PartNumber": p.number, "ETag": p.etag} for p in parts]}
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

    def list_parts(self, bucket: str, key: str, upload_id: str) -> dict[int, RemotePart]:
        """What the server really holds for this upload (paginated); the truth for reconciling."""
        found: dict[int, RemotePart] = {}
        marker = 0
        while True:
            response = self._call(
                "ListParts",
                lambda: self._client.list_parts(
                    Bucket=bucket, Key=key, UploadId=upload_id, PartNumberMarker=marker, MaxParts=1000
                ),
                key=key,
            )
            for item in response.get("Parts", []):
                number = int(item["PartNumber"])
                found[number] = RemotePart(number, int(item["Size"]), str(item["ETag"]))
            if not response.get("IsTruncated"):
                return found
            marker = int(response.get("NextPartNumberMarker", 0))

    def list_uploads(self, bucket: str, key: str) -> list[str]:
        """Ids of the unfinished multipart uploads for exactly this key, newest first."""
        found: list[tuple[Any, str]] = []
        markers: dict[str, str] = {}
        while True:
            try:
                response = self._call(
                    "ListMultipartUploads",
                    lambda: self._client.list_multipart_uploads(Bucket=bucket, Prefix=key, **markers),
                    key=key,
                )
            except UploadGoneError:  # `rclone serve s3` answers NoSuchUpload when there are none
                break
            for item in response.get("Uploads", []):
                if item.get("Key") == key:
                    found.append((item.get("Initiated"), str(item["UploadId"])))
            if not response.get("IsTruncated"):
                break
            markers = {"KeyMarker": response.get("NextKeyMarker", ""),
                       "UploadIdMarker": response.get("NextUploadIdMarker", "")}
        found.sort(key=lambda item: str(item[0]), reverse=True)
        return [upload_id for _, upload_id in found]

    def list_folder(self, bucket: str, folder: str, *, max_pages: int) -> set[str] | None:
        """The keys directly in `folder` ("" or "a/b/"), or None when there are more than
        `max_pages` pages of them (listing would cost more than asking about each key)."""
        keys: set[str] = set()
        token: dict[str, str] = {}
        for _ in range(max_pages):
            response = self._call(
                "ListObjectsV2",
                lambda: self._client.list_objects_v2(Bucket=bucket, Prefix=folder, Delimiter="/", **token),
                key=folder,
            )
            keys.update(str(item["Key"]) for item in response.get("Contents", []))
            if not response.get("IsTruncated"):
                return keys
            token = {"ContinuationToken": str(response["NextContinuationToken"])}
        return None

    def get_small(self, bucket: str, key: str, *, limit: int) -> bytes | None:
        """A small object's bytes (a manifest), or None when there is no such key. Reads one byte
        past `limit`, so that a caller can tell an object over it from one at it."""
        try:
            response = self._call("GetObject", lambda: self._client.get_object(Bucket=bucket, Key=key), key=key)
        except PermanentError as exc:
            if exc.code in ("404", "NoSuchKey", "NotFound"):
                return None
            raise
        with response["Body"] as body:
            return bytes(body.read(limit + 1))

    def head(self, bucket: str, key: str) -> ObjectInfo | None:
        try:
            response = self._call("HeadObject", lambda: self._client.head_object(Bucket=bucket, Key=key), key=key)
        except PermanentError as exc:
            if exc.code in ("404", "NoSuchKey", "NotFound"):
                return None
            raise
        return ObjectInfo(int(response["ContentLength"]), str(response.get("ETag", "")))

    def head_bucket(self, bucket: str) -> None:
        self._call("HeadBucket", lambda: self._client.head_bucket(Bucket=bucket), key="")


PAYLOAD_HASH_REFUSALS = frozenset({"XAmzContentSHA256Mismatch", "BadDigest", "InvalidDigest"})


class _BytesBody(io.BytesIO):
    """Bytes with a signed hash of our choosing (see chunkd.s3.client.PrecomputedPayloadAuth)."""

    def __init__(self, data: bytes, *, payload_sha256: str) -> None:
        super().__init__(data)
        self.data = data
        self.payload_sha256 = payload_sha256


def _md5_header(digest: Digest) -> dict[str, str]:
    return {"ContentMD5": digest.md5_b64} if digest.md5_b64 else {}


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
