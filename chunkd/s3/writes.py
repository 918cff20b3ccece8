"""The gateway's writes: multipart uploads (create, parts, complete, abort), single PUTs and the
server-side copy. (The start-up probes that learn what a server checks are chunkd.s3.probes.)

A body is read once into a buffer of the shared pool (chunkd.pipeline.buffers), hashed there and
sent from there, signed with that SHA-256, or checked by its MD5 where the server checks no signed
hash: as Content-MD5, or, where the server answers every part with its MD5, by comparing that
answer (see chunkd.s3.traits); through the bandwidth limiter when there is one. A body larger than
the pool's whole budget is hashed from the file, then streamed from it. A small body (a manifest)
is signed the same way, always carries Content-MD5, and has its ETag checked.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import hashlib
import io
import logging
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, TypeVar, cast

from botocore.exceptions import BotoCoreError, ClientError

from chunkd.errors import PartNotReplaceable, PermanentError, RetryableError, TransferError, UploadGoneError
from chunkd.model.attributes import ObjectAttributes
from chunkd.model.etags import is_body_md5, same_etag
from chunkd.model.planner import Part
from chunkd.model.states import PartRecord
from chunkd.pipeline.partreader import (
    BufferReader,
    Digest,
    FileIdentity,
    RangeReader,
    digest_of,
    digest_range,
    open_checked,
    read_into,
)
from chunkd.s3.calls import S3Calls
from chunkd.s3.client import signed_payload
from chunkd.s3.retry import RetryPolicy

if TYPE_CHECKING:
    from mypy_boto3_s3.type_defs import (
        CompletedMultipartUploadTypeDef,
        CompleteMultipartUploadOutputTypeDef,
        CopySourceTypeDef,
        CreateMultipartUploadOutputTypeDef,
        CreateMultipartUploadRequestTypeDef,
        PutObjectRequestTypeDef,
        TaggingTypeDef,
        UploadPartRequestTypeDef,
    )

    from chunkd.s3.reads import MultipartUpload, ObjectInfo
    from chunkd.s3.uploader import Uploader

logger = logging.getLogger("chunkd.stream")
R = TypeVar("R", bound=Mapping[str, Any])


class WriteCalls(S3Calls):
    """Everything that puts bytes on the server or ends an upload; mixed into `Uploader`."""

    if TYPE_CHECKING:  # ReadCalls's reads and Uploader's copies, in the Uploader that combines both

        def head(self, bucket: str, key: str) -> ObjectInfo | None: ...

        def uploads_of(self, bucket: str, key: str) -> list[MultipartUpload]: ...

        def with_policy(self, policy: RetryPolicy, *, wait_for_breaker: bool = False) -> Uploader: ...

    def create(
        self, bucket: str, key: str, *, attributes: ObjectAttributes | None = None,
        content_type: str | None = None, held: Callable[[str], bool] | None = None,
    ) -> str:
        """A new multipart upload's id. A failed attempt may have created an upload whose reply was
        lost: after a retried create, the key's other uploads the server started during this call
        are aborted, except those `held` says belong to someone else (another stream's record)."""
        request = cast(
            "CreateMultipartUploadRequestTypeDef",
            {"Bucket": bucket, "Key": key, **request_fields(attributes, content_type)},
        )
        sent: list[float] = []  # when each attempt went out

        def send() -> CreateMultipartUploadOutputTypeDef:
            sent.append(time.monotonic())
            self._on_request("CreateMultipartUpload")
            return self._client.create_multipart_upload(**request)

        upload_id = str(self._policy.call(self._attempt(send), key=key)["UploadId"])
        if len(sent) > 1:
            self._abort_lost_creates(bucket, key, upload_id, within=time.monotonic() - sent[0], held=held)
        return upload_id

    def _abort_lost_creates(
        self, bucket: str, key: str, upload_id: str, *, within: float, held: Callable[[str], bool] | None,
    ) -> None:
        """Abort the key's uploads initiated at most `within` seconds before ours, by the server's
        clock (ours is in the same listing, so a skewed local clock does not matter). Best effort:
        what this misses, `chunkd gc` finds."""
        quick = self.with_policy(
            dataclasses.replace(RetryPolicy.quick(), stop_event=self._policy.stop_event, sleep=self._policy.sleep)
        )
        try:
            uploads = quick.uploads_of(bucket, key)
        except TransferError as exc:
            logger.warning("could not look for uploads of %s created by lost replies (gc will): %s", key, exc)
            return
        ours = next((upload for upload in uploads if upload.upload_id == upload_id), None)
        if ours is None or not ours.initiated:
            return  # nothing to measure the window against
        earliest, latest = ours.initiated - within - _CLOCK_SLACK, ours.initiated + _CLOCK_SLACK
        for upload in uploads:
            if upload is ours or not earliest <= upload.initiated <= latest or (held and held(upload.upload_id)):
                continue
            logger.info("aborting an upload of %s whose create reply was lost", key, extra={"upload_id": upload.upload_id})
            with contextlib.suppress(TransferError):
                quick.abort(bucket, key, upload.upload_id)

    def upload_part(
        self, bucket: str, key: str, upload_id: str, path: Path, part: Part, identity: FileIdentity | None
    ) -> PartRecord:
        """Hash the range once, then send it with the one checksum the server verifies: Content-MD5
        (UNSIGNED-PAYLOAD) where it checks that, else signed with its SHA-256."""

        def send() -> PartRecord:
            with (
                open_checked(path, identity) as handle,
                self._read(handle, part.offset, part.size, sha256=not self.content_md5) as (digest, body),
            ):
                request: UploadPartRequestTypeDef = {
                    "Bucket": bucket, "Key": key, "UploadId": upload_id, "PartNumber": part.number,
                    "Body": body, "ContentLength": part.size,
                }
                response = self._send_checked("UploadPart", self._client.upload_part, request, digest)
            return _part_record(part, digest, str(response["ETag"]), opaque=stored_with_customer_key(response))

        try:
            return self._policy.call(self._attempt(send), key=key, part=part.number)
        except PermanentError as exc:
            if exc.code != "NotImplemented":
                raise
            raise PartNotReplaceable(str(exc), code=exc.code, key=key, part=part.number) from exc

    def put_object(
        self, bucket: str, key: str, path: Path, size: int, identity: FileIdentity | None,
        *, attributes: ObjectAttributes | None = None, content_type: str | None = None,
    ) -> tuple[Digest, str]:
        """Single PutObject for files smaller than one part; returns the digest and ETag."""

        def send() -> tuple[Digest, str]:
            with open_checked(path, identity) as handle, self._read(handle, 0, size) as (digest, body):
                request = cast("PutObjectRequestTypeDef", {
                    "Bucket": bucket, "Key": key, "Body": body, "ContentLength": size,
                    **request_fields(attributes, content_type),
                })
                response = self._send_checked("PutObject", self._client.put_object, request, digest)
            etag = str(response["ETag"])
            if not stored_with_customer_key(response):
                _check_etag(etag, digest)
            return digest, etag

        return self._policy.call(self._attempt(send), key=key)

    def _send_checked(self, op: str, call: Callable[..., R], request: Any, digest: Digest) -> R:
        """Send a body with the MD5 check this server gets: Content-MD5, or (`md5_header` off) none,
        the reply's ETag being compared with the MD5 instead (`_check_etag`). Should a reply carry
        no MD5 after all (an SSE-C object, an ETag of another kind), nothing checked those bytes:
        they are sent once more, with Content-MD5."""
        by_reply = digest.md5_b64 is not None and not self.traits.md5_header
        if digest.md5_b64 and not by_reply:
            request["ContentMD5"] = digest.md5_b64
        self._on_request(op)
        response = call(**request)
        if by_reply and not _reply_is_md5(response):
            logger.warning("%s: the server's ETag is not the body's MD5; sending it again with Content-MD5", op)
            request["ContentMD5"] = digest.md5_b64
            body = request["Body"]
            if not isinstance(body, bytes | bytearray):
                body.seek(0)
            self._on_request(op)
            response = call(**request)
        return response

    @contextlib.contextmanager
    def _read(
        self, handle: io.BufferedReader, offset: int, size: int, *, sha256: bool = True
    ) -> Iterator[tuple[Digest, IO[bytes]]]:
        """The range read once into a pooled buffer and hashed where it lies: the body is those
        very bytes, whole (one send), or block by block through the bandwidth limiter when there is
        one. The buffer goes back to the pool when the block ends, request done or failed: botocore
        reads (and on a retry re-reads) the body only inside the call. A range larger than the
        whole budget is hashed from the file, then streamed from it. Without its SHA-256
        (`sha256=False`, Content-MD5 carries the check) the body goes UNSIGNED-PAYLOAD."""
        with self._buffers.lease(size) as buffer:
            if buffer is None:
                digest = digest_range(handle, offset, size, md5=self.content_md5, sha256=sha256)
                yield digest, cast("IO[bytes]", RangeReader(
                    handle, offset, size, self._limiter, payload_sha256=digest.sha256_hex,
                ))
                return
            read_into(handle, offset, buffer)
            digest = digest_of(buffer, md5=self.content_md5, sha256=sha256)
            if self._limiter is not None and not self._limiter.unlimited:
                yield digest, cast("IO[bytes]", BufferReader(buffer, self._limiter, payload_sha256=digest.sha256_hex))
                return
            if digest.sha256_hex is None:
                yield digest, cast("IO[bytes]", buffer)
                return
            with signed_payload(buffer, digest.sha256_hex):
                yield digest, cast("IO[bytes]", buffer)  # botocore sends a bytearray body as it is

    def delete(self, bucket: str, key: str) -> None:
        """Delete an object; S3 answers a key that is not there as a success."""
        self._call("DeleteObject", lambda: self._client.delete_object(Bucket=bucket, Key=key), key=key)

    def put_bytes(
        self, bucket: str, key: str, data: bytes, *, content_type: str, attributes: ObjectAttributes | None = None
    ) -> None:
        """A small body (a manifest), checked like a part: signed with its SHA-256 and sent with
        Content-MD5, so a server that checks either refuses damaged bytes; and where the returned
        ETag is the body's MD5, a different one (a server that checks neither stored other bytes)
        is a BadDigest, and the body is sent again. `attributes`: what else the PUT carries (the
        object's encryption, for its manifest)."""
        fields = request_fields(attributes, None)
        fields.pop("ContentType", None)
        md5 = hashlib.md5(data, usedforsecurity=False)
        sha256 = hashlib.sha256(data).hexdigest()

        def send() -> None:
            self._on_request("PutObject")
            response = self._client.put_object(
                Bucket=bucket, Key=key, Body=cast("IO[bytes]", BytesBody(data, payload_sha256=sha256)),
                ContentLength=len(data), ContentType=content_type,
                ContentMD5=base64.b64encode(md5.digest()).decode(), **fields,
            )
            etag = str(response.get("ETag", ""))
            stored_md5 = is_body_md5(
                etag, encryption=response.get("ServerSideEncryption"),
                customer_key=bool(response.get("SSECustomerAlgorithm")),
            )
            if stored_md5 and not same_etag(etag, md5.hexdigest()):
                raise RetryableError(f"server ETag {etag} != local MD5 {md5.hexdigest()}", code="BadDigest")

        self._policy.call(self._attempt(send), key=key)

    def copy(
        self, src_bucket: str, src_key: str, bucket: str, key: str, *, attributes: ObjectAttributes | None = None
    ) -> None:
        """Server-side copy: CopyObject up to 5 GiB, boto3's managed multipart copy beyond. With
        `attributes` the copy gets its own (type, metadata, tags, …), not the source's."""
        source: CopySourceTypeDef = {"Bucket": src_bucket, "Key": src_key}
        extra: dict[str, Any] = {}
        if attributes is not None:
            extra = {**attributes.request_fields(), "MetadataDirective": "REPLACE", "TaggingDirective": "REPLACE"}
        info = self.head(src_bucket, src_key)
        if info is not None and info.size > 5 * 1024**3:
            self._call("MultipartCopy", lambda: self._client.copy(source, bucket, key, ExtraArgs=extra), key=key)
            return
        self._call(
            "CopyObject", lambda: self._client.copy_object(CopySource=source, Bucket=bucket, Key=key, **extra), key=key
        )

    def put_tags(self, bucket: str, key: str, tags: dict[str, str]) -> None:
        """Set an object's tags (PutObjectTagging): the same ones its create carried, again, since
        Ceph RGW drops the tags of a CreateMultipartUpload and of a CopyObject."""
        tag_set: TaggingTypeDef = {"TagSet": [{"Key": name, "Value": value} for name, value in tags.items()]}
        self._call("PutObjectTagging", lambda: self._client.put_object_tagging(Bucket=bucket, Key=key, Tagging=tag_set),
                   key=key)

    def complete(self, bucket: str, key: str, upload_id: str, parts: list[PartRecord]) -> str:
        """Complete the upload; the ETag the server answered with ("" if it sent none: Ceph RGW)."""
        layout: CompletedMultipartUploadTypeDef = {"Parts": [{"PartNumber": p.number, "ETag": p.etag} for p in parts]}

        def send() -> CompleteMultipartUploadOutputTypeDef:
            try:
                return self._client.complete_multipart_upload(
                    Bucket=bucket, Key=key, UploadId=upload_id, MultipartUpload=layout
                )
            except ClientError as exc:
                # Ceph RGW answers a Complete of an aborted upload with 500 InternalError where S3
                # says NoSuchUpload: before retrying a 500 as an outage, ask whether the upload is there.
                if _error_code(exc) == "InternalError" and self._upload_missing(bucket, key, upload_id):
                    raise UploadGoneError(
                        "CompleteMultipartUpload: InternalError for an upload that no longer exists",
                        code="NoSuchUpload", key=key,
                    ) from exc
                raise

        response = self._call("CompleteMultipartUpload", send, key=key)
        return str(response.get("ETag", ""))

    def _upload_missing(self, bucket: str, key: str, upload_id: str) -> bool:
        """One ListParts, no retries: True only if the server says the upload does not exist."""
        self._on_request("ListParts")
        try:
            self._client.list_parts(Bucket=bucket, Key=key, UploadId=upload_id, MaxParts=1)
        except ClientError as exc:
            return _error_code(exc) in _UPLOAD_MISSING  # NoSuchKey: Ceph RGW's word for it
        except BotoCoreError:
            return False
        return False

    def abort(self, bucket: str, key: str, upload_id: str) -> None:
        self._call(
            "AbortMultipartUpload",
            lambda: self._client.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id),
            key=key,
        )


# Initiated times are read to the second by some servers: a margin either side of the window.
_CLOCK_SLACK = 1.0
_UPLOAD_MISSING = frozenset({"NoSuchUpload", "NoSuchKey"})


def request_fields(attributes: ObjectAttributes | None, content_type: str | None) -> dict[str, Any]:
    """The request arguments of `attributes`, with `content_type` (when given) as the type."""
    fields = (attributes or ObjectAttributes()).request_fields()
    if content_type:
        fields["ContentType"] = content_type
    return fields


def _error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


class BytesBody(io.BytesIO):
    """Bytes with a signed hash of our choosing (see chunkd.s3.client.PrecomputedPayloadAuth)."""

    def __init__(self, data: bytes, *, payload_sha256: str) -> None:
        super().__init__(data)
        self.data = data
        self.payload_sha256 = payload_sha256


def _check_etag(etag: str, digest: Digest, part: int | None = None) -> None:
    """With our MD5 at hand: servers that return a non-MD5 ETag are fine; a different MD5 means
    corrupted bytes."""
    if digest.etag is None or same_etag(etag, digest.etag):
        return
    if len(etag.strip('"')) == 32:
        raise RetryableError(f"server ETag {etag} != local MD5 {digest.md5_hex}", code="BadDigest", part=part)


def _reply_is_md5(response: Mapping[str, Any]) -> bool:
    return not stored_with_customer_key(response) and is_body_md5(
        str(response.get("ETag", "")), encryption=cast("str | None", response.get("ServerSideEncryption"))
    )


def stored_with_customer_key(response: Mapping[str, object]) -> bool:
    """Stored with an SSE-C key: S3 then answers an ETag that is not the MD5 of the bytes sent."""
    return bool(response.get("SSECustomerAlgorithm"))


def _part_record(part: Part, digest: Digest, etag: str, *, opaque: bool = False) -> PartRecord:
    if not opaque:
        _check_etag(etag, digest, part.number)
    return PartRecord(
        number=part.number, offset=part.offset, size=part.size, etag=etag,
        sha256=digest.sha256_hex or "", md5=digest.md5_hex if digest.sha256_hex is None and digest.md5_hex else "",
    )
