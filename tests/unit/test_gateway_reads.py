"""The reads that verify, gc and recovery make through the Uploader: whole-bucket upload listing,
streamed and small GETs (moto in-process, or a fake client where a server's quirk is the point)."""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import botocore.exceptions as bexc
import pytest
from moto import mock_aws

from chunkd.errors import PermanentError
from chunkd.s3.client import S3Target, make_client
from chunkd.s3.retry import RetryPolicy
from chunkd.s3.uploader import ListedObject, MultipartUpload, Uploader

BUCKET = "videos"
T0 = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)


@pytest.fixture
def requests() -> list[str]:
    return []


@pytest.fixture
def uploader(requests: list[str]) -> Iterator[Uploader]:
    with mock_aws():
        target = S3Target(region="us-east-1", access_key="testing", secret_key="testing")
        client = make_client(target)
        client.create_bucket(Bucket=BUCKET)
        yield Uploader(client, RetryPolicy(max_attempts=2, sleep=lambda s: None), on_request=requests.append)


def test_connect_makes_a_gateway_of_its_own(uploader: Uploader) -> None:
    target = S3Target(region="us-east-1", access_key="testing", secret_key="testing")
    own = Uploader.connect(target, RetryPolicy(max_attempts=1), max_pool_connections=2)
    own.head_bucket(BUCKET)
    with pytest.raises(PermanentError):
        own.head_bucket("no-such-bucket")


def put(uploader: Uploader, key: str, data: bytes) -> None:
    uploader.put_bytes(BUCKET, key, data, content_type="application/octet-stream")


# -- uploads over the whole bucket --------------------------------------------------------------


def test_list_all_uploads_finds_every_key_and_list_uploads_only_its_own(uploader: Uploader) -> None:
    first = uploader.create(BUCKET, "a/one.mp4")
    second = uploader.create(BUCKET, "b/two.mp4")
    again = uploader.create(BUCKET, "a/one.mp4")

    found = list(uploader.list_all_uploads(BUCKET))

    assert sorted((u.key, u.upload_id) for u in found) == sorted(
        [("a/one.mp4", first), ("b/two.mp4", second), ("a/one.mp4", again)]
    )
    assert all(u.initiated > 0 for u in found)  # moto's Initiated is a fixed date in 2010, but a date
    assert set(uploader.list_uploads(BUCKET, "a/one.mp4")) == {first, again}
    assert uploader.list_uploads(BUCKET, "a/one") == []  # a prefix of a key is not the key


class PagedUploads:
    """ListMultipartUploads one page at a time; records the markers each request carried."""

    def __init__(self, pages: list[dict[str, Any]]) -> None:
        self.pages = pages
        self.requests: list[dict[str, Any]] = []

    def list_multipart_uploads(self, **kwargs: Any) -> dict[str, Any]:
        self.requests.append(kwargs)
        if len(self.requests) > len(self.pages):
            raise AssertionError("asked past the last page")
        return self.pages[len(self.requests) - 1]


def upload(key: str, upload_id: str) -> dict[str, Any]:
    return {"Key": key, "UploadId": upload_id, "Initiated": T0}


def gateway(fake: Any) -> Uploader:
    return Uploader(fake, RetryPolicy(max_attempts=1))


def test_list_all_uploads_follows_both_markers() -> None:
    fake = PagedUploads([
        {"Uploads": [upload("a", "1"), upload("b", "2")], "IsTruncated": True,
         "NextKeyMarker": "b", "NextUploadIdMarker": "2"},
        {"Uploads": [upload("c", "3")], "IsTruncated": True, "NextKeyMarker": "c", "NextUploadIdMarker": ""},
        {"Uploads": [upload("d", "4")], "IsTruncated": False},
    ])

    found = list(gateway(fake).list_all_uploads(BUCKET))

    assert found == [MultipartUpload(k, i, T0.timestamp()) for k, i in [("a", "1"), ("b", "2"), ("c", "3"), ("d", "4")]]
    assert fake.requests == [
        {"Bucket": BUCKET, "Prefix": ""},
        {"Bucket": BUCKET, "Prefix": "", "KeyMarker": "b", "UploadIdMarker": "2"},
        {"Bucket": BUCKET, "Prefix": "", "KeyMarker": "c"},  # an empty marker is left out
    ]


def test_a_server_that_does_not_move_its_markers_is_not_asked_forever() -> None:
    stuck = {"Uploads": [upload("a", "1")], "IsTruncated": True, "NextKeyMarker": "a", "NextUploadIdMarker": "1"}
    fake = PagedUploads([stuck, stuck, stuck])
    assert len(list(gateway(fake).list_all_uploads(BUCKET))) == 2
    assert len(fake.requests) == 2


def test_truncated_without_markers_ends_the_listing() -> None:
    fake = PagedUploads([{"Uploads": [{"Key": "a", "UploadId": "1"}], "IsTruncated": True}])
    assert list(gateway(fake).list_all_uploads(BUCKET)) == [MultipartUpload("a", "1", 0.0)]  # no Initiated: age unknown


class NoSuchUploadWhenEmpty:
    """`rclone serve s3` answers ListMultipartUploads with 404 NoSuchUpload when there are none."""

    def list_multipart_uploads(self, **kwargs: Any) -> dict[str, Any]:
        error = {"Error": {"Code": "NoSuchUpload", "Message": ""}, "ResponseMetadata": {"HTTPStatusCode": 404}}
        raise bexc.ClientError(error, "ListMultipartUploads")  # type: ignore[arg-type]


def test_no_such_upload_means_no_uploads() -> None:
    assert list(gateway(NoSuchUploadWhenEmpty()).list_all_uploads(BUCKET)) == []
    assert gateway(NoSuchUploadWhenEmpty()).list_uploads(BUCKET, "k") == []


class PagedObjects:
    """ListObjectsV2 answered from a list of pages; records each request."""

    def __init__(self, pages: list[dict[str, Any]]) -> None:
        self.pages = pages
        self.requests: list[dict[str, Any]] = []

    def list_objects_v2(self, **kwargs: Any) -> dict[str, Any]:
        self.requests.append(kwargs)
        return self.pages[len(self.requests) - 1]


def test_list_prefix_follows_continuation_tokens() -> None:
    fake = PagedObjects([
        {"Contents": [{"Key": "cams/.p-1", "LastModified": T0}], "IsTruncated": True, "NextContinuationToken": "t1"},
        {"Contents": [{"Key": "cams/.p-2"}], "IsTruncated": False},
    ])

    found = list(gateway(fake).list_prefix(BUCKET, "cams/.p-"))

    assert found == [ListedObject("cams/.p-1", T0.timestamp()), ListedObject("cams/.p-2", 0.0)]  # 0.0: age unknown
    assert fake.requests == [
        {"Bucket": BUCKET, "Prefix": "cams/.p-", "Delimiter": "/"},
        {"Bucket": BUCKET, "Prefix": "cams/.p-", "Delimiter": "/", "ContinuationToken": "t1"},
    ]


def test_list_prefix_stops_on_a_token_that_does_not_move() -> None:
    stuck = {"Contents": [{"Key": "a"}], "IsTruncated": True, "NextContinuationToken": "t"}
    fake = PagedObjects([stuck, stuck, stuck])
    assert len(list(gateway(fake).list_prefix(BUCKET, ""))) == 2
    assert len(fake.requests) == 2


# -- GetObject ----------------------------------------------------------------------------------


def sha256_of(chunks: Iterator[bytes]) -> str:
    digest = hashlib.sha256()
    for chunk in chunks:
        digest.update(chunk)
    return digest.hexdigest()


def test_stream_feeds_the_whole_object_in_reads(uploader: Uploader, requests: list[str]) -> None:
    data = random.Random(3).randbytes(2 * 1024 * 1024 + 17)
    put(uploader, "clip.mp4", data)
    requests.clear()
    sizes: list[int] = []

    def consume(chunks: Iterator[bytes]) -> str:
        return sha256_of(sizes.append(len(c)) or c for c in chunks)

    assert uploader.stream(BUCKET, "clip.mp4", consume) == hashlib.sha256(data).hexdigest()
    assert sum(sizes) == len(data) and max(sizes) <= 1024 * 1024 and len(sizes) >= 3
    assert requests == ["GetObject"]


def test_stream_and_get_small_of_a_missing_key_are_none(uploader: Uploader) -> None:
    assert uploader.stream(BUCKET, "nothing.mp4", sha256_of) is None
    assert uploader.get_small(BUCKET, "nothing.manifest.json", limit=100) is None


def test_get_small_reads_one_byte_past_its_limit(uploader: Uploader) -> None:
    put(uploader, "small", b"0123456789")
    assert uploader.get_small(BUCKET, "small", limit=10) == b"0123456789"
    assert uploader.get_small(BUCKET, "small", limit=4) == b"01234"  # over the limit, and says so
    assert uploader.get_small(BUCKET, "small", limit=0) == b"0"


def test_get_of_a_missing_bucket_raises(uploader: Uploader) -> None:
    with pytest.raises(PermanentError) as caught:
        uploader.get_small("no-such-bucket", "k", limit=10)
    assert caught.value.code == "NoSuchBucket"


class DropsTheFirstRead:
    """A GetObject whose first body breaks off after some bytes, as a reset connection does."""

    def __init__(self, data: bytes) -> None:
        self.data, self.gets = data, 0

    def get_object(self, **kwargs: Any) -> dict[str, Any]:
        self.gets += 1
        return {"Body": Body(self.data, broken=self.gets == 1)}


class Body:
    def __init__(self, data: bytes, *, broken: bool) -> None:
        self.data, self.broken, self.closed = data, broken, False

    def iter_chunks(self, size: int) -> Iterator[bytes]:
        yield self.data[:size]
        if self.broken:
            raise bexc.ResponseStreamingError(error="connection reset by peer")
        yield from (self.data[i : i + size] for i in range(size, len(self.data), size))

    def close(self) -> None:
        self.closed = True


def test_a_read_broken_off_starts_again_from_the_first_byte() -> None:
    data = random.Random(5).randbytes(3 * 1024 * 1024)
    fake = DropsTheFirstRead(data)
    gateway = Uploader(fake, RetryPolicy(max_attempts=3, sleep=lambda s: None))  # type: ignore[arg-type]

    assert gateway.stream(BUCKET, "clip.mp4", sha256_of) == hashlib.sha256(data).hexdigest()
    assert fake.gets == 2
