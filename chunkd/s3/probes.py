"""The start-up probes: a few requests on throwaway keys that learn what the server checks and
keeps (see chunkd.s3.traits), each deleting its object whatever the answer.

A probe's key starts with `PROBE_NAME` beside the objects, so one a kill or a lost reply left
behind is found by `chunkd gc`.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import hashlib
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, cast

from botocore.exceptions import ClientError

from chunkd.errors import PermanentError, TransferError
from chunkd.model.attributes import ObjectAttributes
from chunkd.model.states import PartRecord
from chunkd.s3.calls import S3Calls
from chunkd.s3.retry import RetryPolicy
from chunkd.s3.writes import BytesBody, request_fields, stored_with_customer_key

if TYPE_CHECKING:
    from mypy_boto3_s3.type_defs import TaggingTypeDef

PAYLOAD_HASH_REFUSALS = frozenset({"XAmzContentSHA256Mismatch", "BadDigest", "InvalidDigest"})
TAGGING_BODY = b"chunkd tagging probe"


@dataclasses.dataclass(frozen=True)
class EtagProbe:
    """What a probe upload showed: the kept part's ETag ("" when it cannot be its MD5), the bytes it
    holds, whether a part could be sent again with other bytes, and the completed object's ETag."""

    part_etag: str
    part_body: bytes
    replaced: bool
    etag: str


class ProbeCalls(S3Calls):
    """The probes; mixed into `Uploader`, beside the writes whose multipart calls they use."""

    if TYPE_CHECKING:  # WriteCalls's, in the Uploader that combines both

        def create(self, bucket: str, key: str, *, attributes: ObjectAttributes | None = None) -> str: ...

        def complete(self, bucket: str, key: str, upload_id: str, parts: list[PartRecord]) -> str: ...

        def abort(self, bucket: str, key: str, upload_id: str) -> None: ...

    def checks_payload_hash(self, bucket: str, key: str, *, attributes: ObjectAttributes | None = None) -> bool | None:
        """Whether the server refuses a body that does not hash to its signed SHA-256.

        Sends a few bytes signed with another body's hash: S3, MinIO and Ceph refuse them
        (`XAmzContentSHA256Mismatch`). A server that stores them anyway (`rclone serve s3`, moto)
        would store a body damaged on the way too, so its parts are checked by their MD5. None:
        the probe itself was refused (permissions), so nobody knows. The probe key is deleted
        whatever the answer, even none: a PUT whose reply was lost may have been stored.
        """
        body = BytesBody(b"chunkd probe", payload_sha256=hashlib.sha256(b"not these bytes").hexdigest())
        try:
            fields = request_fields(attributes, None)
            self._client.put_object(Bucket=bucket, Key=key, Body=body, ContentLength=len(body.data), **fields)
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            return True if code in PAYLOAD_HASH_REFUSALS else None
        finally:
            self._forget_probe(bucket, key)
        return False

    def probe_multipart_etag(
        self, bucket: str, key: str, body: bytes, *, attributes: ObjectAttributes | None = None
    ) -> EtagProbe:
        """A one-part multipart upload of `body`, its part sent a second time with other bytes:
        the ETags of the part kept and of the completed object, and whether the part was replaced.
        The upload is aborted if it did not complete, and the object deleted either way (a
        Complete whose reply was lost)."""
        upload_id = self.create(bucket, key, attributes=attributes)
        try:
            response, kept = self._probe_part(bucket, key, upload_id, body), body
            again = bytes(reversed(body))
            try:
                response, kept = self._probe_part(bucket, key, upload_id, again), again
                replaced = True
            except PermanentError as exc:
                if exc.code != "NotImplemented":
                    raise
                replaced = False  # `rclone serve s3`: the part was streamed to disk
            part = PartRecord(number=1, offset=0, size=len(kept), etag=str(response["ETag"]), sha256="")
            etag = self.complete(bucket, key, upload_id, [part])
        except BaseException:
            with contextlib.suppress(TransferError):
                self.abort(bucket, key, upload_id)
            raise
        finally:
            self._forget_probe(bucket, key)
        # An SSE-C part's ETag is not its MD5, whatever it looks like.
        part_etag = "" if stored_with_customer_key(response) else part.etag
        return EtagProbe(part_etag=part_etag, part_body=kept, replaced=replaced, etag=etag)

    def _probe_part(self, bucket: str, key: str, upload_id: str, body: bytes) -> Mapping[str, Any]:
        return cast("Mapping[str, Any]", self._call(
            "UploadPart",
            lambda: self._client.upload_part(
                Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=1, Body=body, ContentMD5=_content_md5(body),
            ),
            key=key,
        ))

    def keeps_bytes_when_tagged(self, bucket: str, key: str, *, attributes: ObjectAttributes | None = None) -> bool | None:
        """Whether PutObjectTagging tags an object and leaves its bytes alone.

        `rclone serve s3` takes a PutObjectTagging for a PutObject and replaces the object with the
        tagging XML; a server may also refuse tagging (NotImplemented, AccessDenied). False for
        either: tags cannot be set after the fact there. None: the probe object itself could not be
        written, so nobody knows.
        """
        body = BytesBody(TAGGING_BODY, payload_sha256=hashlib.sha256(TAGGING_BODY).hexdigest())
        tag_set: TaggingTypeDef = {"TagSet": [{"Key": "chunkd-probe", "Value": "1"}]}
        try:
            try:
                self._client.put_object(
                    Bucket=bucket, Key=key, Body=body, ContentLength=len(TAGGING_BODY),
                    ContentMD5=_content_md5(TAGGING_BODY),
                    **request_fields(attributes, None),
                )
            except ClientError:
                return None
            try:
                self._client.put_object_tagging(Bucket=bucket, Key=key, Tagging=tag_set)
                size = self._client.head_object(Bucket=bucket, Key=key)["ContentLength"]
            except ClientError:
                return False
        finally:
            self._forget_probe(bucket, key)
        return size == len(TAGGING_BODY)

    def _forget_probe(self, bucket: str, key: str) -> None:
        """Delete a probe's object: a key that is not there is fine (S3 answers 204), and one left
        behind is `chunkd gc`'s, never a reason to fail or hold up start-up: a few quick attempts,
        not held back by the breaker."""
        quick = dataclasses.replace(RetryPolicy.quick(), stop_event=self._policy.stop_event, sleep=self._policy.sleep)

        def send() -> None:
            self._on_request("DeleteObject")
            self._client.delete_object(Bucket=bucket, Key=key)

        with contextlib.suppress(TransferError):
            quick.call(send, key=key)


def _content_md5(body: bytes) -> str:
    return base64.b64encode(hashlib.md5(body, usedforsecurity=False).digest()).decode()
