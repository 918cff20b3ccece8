"""The gateway's reads and listings: HEAD, small and streamed GETs, the parts and unfinished
uploads the server holds (the truth for reconciling and for `chunkd gc`), a folder's keys, and the
objects under a prefix with their ages (`chunkd gc`'s leftover probes)."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, TypeVar

from chunkd.errors import PermanentError, UploadGoneError
from chunkd.model.etags import is_body_md5
from chunkd.pipeline.partreader import READ_SIZE
from chunkd.s3.calls import S3Calls

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client
    from mypy_boto3_s3.type_defs import (
        HeadObjectOutputTypeDef,
        ListMultipartUploadsOutputTypeDef,
        ListMultipartUploadsRequestTypeDef,
        ListObjectsV2OutputTypeDef,
        ListObjectsV2RequestTypeDef,
        ListPartsOutputTypeDef,
    )

T = TypeVar("T")


@dataclass(frozen=True)
class RemotePart:
    number: int
    size: int
    etag: str


@dataclass(frozen=True)
class HeadAttributes:
    """What HeadObject says of an object besides its size and ETag (`chunkd verify` compares it
    with the manifest's attributes); None where the server did not say."""

    content_type: str | None = None
    cache_control: str | None = None
    content_disposition: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)  # names as the server spells them
    storage_class: str | None = None  # S3 omits STANDARD; Ceph RGW omits it after a multipart upload
    sse: str | None = None
    sse_kms_key_id: str | None = None
    tag_count: int | None = None  # moto and Ceph RGW say; S3 omits 0; `rclone serve s3` never says


@dataclass(frozen=True)
class ObjectInfo:
    size: int
    etag: str
    attributes: HeadAttributes = HeadAttributes()


@dataclass(frozen=True)
class ListedObject:
    key: str
    modified: float  # epoch seconds; 0.0 when the server did not say


@dataclass(frozen=True)
class SmallObject:
    """A small object's bytes, as GetObject answered them, and the ETag it answered with."""

    data: bytes
    etag: str
    etag_is_md5: bool  # the ETag is the MD5 of the stored bytes (see chunkd.model.etags.is_body_md5)


@dataclass(frozen=True)
class MultipartUpload:
    key: str
    upload_id: str
    initiated: float  # epoch seconds; 0.0 when the server did not say


class ReadCalls(S3Calls):
    """Everything that only asks what the server holds; mixed into `Uploader`."""

    def list_parts(self, bucket: str, key: str, upload_id: str) -> dict[int, RemotePart]:
        """What the server really holds for this upload (paginated); the truth for reconciling."""
        found: dict[int, RemotePart] = {}
        marker = 0
        while True:
            page = functools.partial(_parts_page, self._client, bucket, key, upload_id, marker)
            try:
                response = self._call("ListParts", page, key=key)
            except PermanentError as exc:
                # Ceph RGW answers ListParts of a completed or aborted upload with 404 NoSuchKey
                # where S3 says NoSuchUpload; the bucket exists (that would be NoSuchBucket).
                if exc.code != "NoSuchKey":
                    raise
                raise UploadGoneError("ListParts: NoSuchKey (upload completed or aborted)", code=exc.code, key=key) from exc
            for item in response.get("Parts", []):
                number = int(item["PartNumber"])
                found[number] = RemotePart(number, int(item["Size"]), str(item["ETag"]))
            if not response.get("IsTruncated"):
                return found
            marker = int(response.get("NextPartNumberMarker", 0))

    def list_uploads(self, bucket: str, key: str) -> list[str]:
        """Ids of the unfinished multipart uploads for exactly this key, newest first."""
        return [upload.upload_id for upload in self.uploads_of(bucket, key)]

    def uploads_of(self, bucket: str, key: str) -> list[MultipartUpload]:
        """The unfinished multipart uploads for exactly this key (the listing's prefix matches
        longer keys too), newest first."""
        found = [upload for upload in self._uploads(bucket, prefix=key) if upload.key == key]
        found.sort(key=lambda upload: upload.initiated, reverse=True)
        return found

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

    def list_prefix(self, bucket: str, prefix: str) -> Iterator[ListedObject]:
        """Every key in `prefix`'s folder that starts with it (not below it), page by page."""
        token = ""
        while True:
            page = functools.partial(_folder_page, self._client, bucket, prefix, token)
            response = self._call("ListObjectsV2", page, key=prefix)
            for item in response.get("Contents", []):
                yield ListedObject(str(item["Key"]), _epoch(item.get("LastModified")))
            following = str(response.get("NextContinuationToken") or "")
            if not response.get("IsTruncated") or not following or following == token:
                return  # the last test: a server that repeats its token would be asked forever
            token = following

    def get_small(self, bucket: str, key: str, *, limit: int) -> bytes | None:
        """A small object's bytes (a manifest), or None when there is no such key. Reads one byte
        past `limit`, so that a caller can tell an object over it from one at it."""
        found = self.get_small_object(bucket, key, limit=limit)
        return None if found is None else found.data

    def get_small_object(self, bucket: str, key: str, *, limit: int) -> SmallObject | None:
        """`get_small`, with the ETag of the same GetObject, so a caller can check the bytes."""

        def read() -> SmallObject:
            response = self._client.get_object(Bucket=bucket, Key=key)
            with contextlib.closing(response["Body"]) as body:
                data = b"".join(_upto(body.iter_chunks(READ_SIZE), limit + 1))
            etag = str(response.get("ETag", ""))
            plain = is_body_md5(
                etag, encryption=response.get("ServerSideEncryption"),
                customer_key=bool(response.get("SSECustomerAlgorithm")),
            )
            return SmallObject(data, etag, plain)

        return self._found("GetObject", read, key=key)

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
        return None if response is None else ObjectInfo(
            int(response["ContentLength"]), str(response.get("ETag", "")), _head_attributes(response)
        )

    def head_bucket(self, bucket: str) -> None:
        self._call("HeadBucket", lambda: self._client.head_bucket(Bucket=bucket), key="")


def _head_attributes(response: HeadObjectOutputTypeDef) -> HeadAttributes:
    tag_count = response.get("TagCount")
    return HeadAttributes(
        content_type=response.get("ContentType"), cache_control=response.get("CacheControl"),
        content_disposition=response.get("ContentDisposition"), metadata=dict(response.get("Metadata") or {}),
        storage_class=response.get("StorageClass"), sse=response.get("ServerSideEncryption"),
        sse_kms_key_id=response.get("SSEKMSKeyId"), tag_count=None if tag_count is None else int(tag_count),
    )


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
