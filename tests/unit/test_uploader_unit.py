"""Uploader against moto's in-process S3 (no server): parts, ETags, listing, HEAD, single PUT."""

from __future__ import annotations

import base64
import hashlib
import os
import random
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import botocore.exceptions as bexc
import pytest
from moto import mock_aws

from chunkd.errors import (
    CircuitOpenError,
    PermanentError,
    RetryableError,
    SourceChangedError,
    SourceGoneError,
)
from chunkd.model.etags import multipart_etag, same_etag
from chunkd.model.planner import Part
from chunkd.model.states import PartRecord
from chunkd.pipeline.partreader import FileIdentity
from chunkd.s3.breaker import BreakerState, CircuitBreaker, Verdict
from chunkd.s3.client import S3Target, make_client, payload_sha256_of
from chunkd.s3.retry import RetryPolicy
from chunkd.s3.traits import ServerTraits
from chunkd.s3.uploader import RemotePart, Uploader
from tests.support.daemon import wait_for
from tests.support.sizes import MiB

PART = 5 * MiB  # S3's minimum for every part but the last
BUCKET = "videos"


@pytest.fixture(scope="module")
def aws() -> Iterator[tuple[Any, Any]]:
    """One in-process moto and one production-configured client per module (a client takes ~0.2 s)."""
    with mock_aws() as mock:
        yield mock, make_client(S3Target(region="us-east-1", access_key="testing", secret_key="testing"))


@pytest.fixture
def client(aws: tuple[Any, Any]) -> Any:
    """The shared client, over an S3 emptied for this test and holding only BUCKET."""
    mock, s3 = aws
    mock.reset()
    s3.create_bucket(Bucket=BUCKET)
    return s3


@pytest.fixture
def sleeps() -> list[float]:
    return []


@pytest.fixture
def uploader(client: Any, sleeps: list[float]) -> Uploader:
    return Uploader(client, RetryPolicy(max_attempts=2, sleep=sleeps.append))


@pytest.fixture
def video(tmp_path: Path) -> tuple[Path, bytes]:
    data = random.Random(7).randbytes(2 * PART + 1234)
    path = tmp_path / "clip.mp4"
    path.write_bytes(data)
    return path, data


def parts_of(size: int) -> list[Part]:
    return [Part(number=i + 1, offset=offset, size=min(PART, size - offset)) for i, offset in enumerate(range(0, size, PART))]


def test_multipart_etag_matches_what_s3_returns(client: Any) -> None:
    key = "raw/two.mp4"
    bodies = [b"a" * PART, b"tail bytes"]
    upload_id = client.create_multipart_upload(Bucket=BUCKET, Key=key)["UploadId"]
    records = []
    for number, body in enumerate(bodies, start=1):
        etag = client.upload_part(Bucket=BUCKET, Key=key, UploadId=upload_id, PartNumber=number, Body=body)["ETag"]
        records.append(PartRecord(number, 0, len(body), etag, hashlib.sha256(body).hexdigest()))
    layout = {"Parts": [{"PartNumber": r.number, "ETag": r.etag} for r in records]}
    completed = client.complete_multipart_upload(Bucket=BUCKET, Key=key, UploadId=upload_id, MultipartUpload=layout)

    assert multipart_etag(records) == completed["ETag"]
    assert multipart_etag(records).endswith('-2"')
    assert same_etag(multipart_etag(records), client.head_object(Bucket=BUCKET, Key=key)["ETag"])


def test_multipart_etag_by_hand() -> None:
    md5s = [hashlib.md5(b"one"), hashlib.md5(b"two")]
    records = [PartRecord(i + 1, 0, 3, f'"{m.hexdigest()}"', "") for i, m in enumerate(md5s)]
    expected = hashlib.md5(md5s[0].digest() + md5s[1].digest()).hexdigest()
    assert multipart_etag(records) == f'"{expected}-2"'


def test_same_etag_ignores_quotes_and_case() -> None:
    assert same_etag('"ABC"', "abc")
    assert not same_etag('"abc"', '"abd"')


def test_upload_part_records_etag_and_sha256(uploader: Uploader, client: Any, video: tuple[Path, bytes]) -> None:
    path, data = video
    identity = FileIdentity.of(os.stat(path))
    upload_id = uploader.create(BUCKET, "raw/clip.mp4", content_type="video/mp4")

    records = [uploader.upload_part(BUCKET, "raw/clip.mp4", upload_id, path, part, identity) for part in parts_of(len(data))]

    for record, part in zip(records, parts_of(len(data)), strict=True):
        chunk = data[part.offset : part.end]
        assert (record.number, record.offset, record.size) == (part.number, part.offset, part.size)
        assert same_etag(record.etag, hashlib.md5(chunk).hexdigest())
        assert record.sha256 == hashlib.sha256(chunk).hexdigest()

    etag = uploader.complete(BUCKET, "raw/clip.mp4", upload_id, records)
    assert same_etag(etag, multipart_etag(records))
    body = client.get_object(Bucket=BUCKET, Key="raw/clip.mp4")
    assert body["Body"].read() == data
    assert body["ContentType"] == "video/mp4"


def test_list_parts_returns_every_uploaded_part(uploader: Uploader, video: tuple[Path, bytes]) -> None:
    path, data = video
    upload_id = uploader.create(BUCKET, "raw/clip.mp4")
    records = [uploader.upload_part(BUCKET, "raw/clip.mp4", upload_id, path, part, None) for part in parts_of(len(data))]
    assert len(records) == 3

    remote = uploader.list_parts(BUCKET, "raw/clip.mp4", upload_id)

    assert remote == {r.number: RemotePart(r.number, r.size, r.etag) for r in records}


def test_list_parts_of_a_fresh_upload_is_empty(uploader: Uploader) -> None:
    upload_id = uploader.create(BUCKET, "raw/empty.mp4")
    assert uploader.list_parts(BUCKET, "raw/empty.mp4", upload_id) == {}


class PagedClient:
    """Answers list_parts one page at a time, as S3 does past MaxParts."""

    def __init__(self, pages: list[dict[str, Any]]) -> None:
        self.pages = pages
        self.markers: list[int] = []

    def list_parts(self, **kwargs: Any) -> dict[str, Any]:
        self.markers.append(kwargs["PartNumberMarker"])
        return self.pages[len(self.markers) - 1]


def test_list_parts_follows_pagination() -> None:
    pages = [
        {"Parts": [{"PartNumber": 1, "Size": 5, "ETag": '"a"'}, {"PartNumber": 2, "Size": 5, "ETag": '"b"'}],
         "IsTruncated": True, "NextPartNumberMarker": 2},
        {"Parts": [{"PartNumber": 3, "Size": 1, "ETag": '"c"'}], "IsTruncated": False},
    ]
    fake = PagedClient(pages)
    uploader = Uploader(fake, RetryPolicy(sleep=lambda s: None))  # type: ignore[arg-type]

    found = uploader.list_parts(BUCKET, "k", "u")

    assert sorted(found) == [1, 2, 3]
    assert found[3] == RemotePart(3, 1, '"c"')
    assert fake.markers == [0, 2]


def test_head_of_a_missing_key_is_none(uploader: Uploader, sleeps: list[float]) -> None:
    assert uploader.head(BUCKET, "nothing/here.mp4") is None
    assert sleeps == []  # a 404 is an answer, not a failure to retry


def test_head_of_a_missing_bucket_raises(uploader: Uploader) -> None:
    with pytest.raises(PermanentError):
        uploader.head_bucket("no-such-bucket")


def test_put_object_roundtrip(uploader: Uploader, client: Any, tmp_path: Path) -> None:
    data = b"small video" * 100
    path = tmp_path / "small.mp4"
    path.write_bytes(data)

    digest, etag = uploader.put_object(
        BUCKET, "raw/small.mp4", path, len(data), FileIdentity.of(os.stat(path)), content_type="video/mp4"
    )

    assert digest.md5_hex is None  # content_md5 is off by default: SHA-256 only
    assert digest.sha256_hex == hashlib.sha256(data).hexdigest()
    assert same_etag(etag, hashlib.md5(data).hexdigest())
    info = uploader.head(BUCKET, "raw/small.mp4")
    assert info is not None
    assert info.size == len(data)
    assert same_etag(info.etag, etag)
    assert client.get_object(Bucket=BUCKET, Key="raw/small.mp4")["Body"].read() == data


def test_put_object_sends_only_the_first_size_bytes(uploader: Uploader, client: Any, tmp_path: Path) -> None:
    # The file may still be growing: what was measured is what is sent.
    path = tmp_path / "growing.mp4"
    path.write_bytes(b"0123456789")
    uploader.put_object(BUCKET, "raw/growing.mp4", path, 4, None)
    assert client.get_object(Bucket=BUCKET, Key="raw/growing.mp4")["Body"].read() == b"0123"


def test_put_bytes_and_abort(uploader: Uploader, client: Any) -> None:
    uploader.put_bytes(BUCKET, "raw/a.mp4.manifest.json", b"{}\n", content_type="application/json")
    got = client.get_object(Bucket=BUCKET, Key="raw/a.mp4.manifest.json")
    assert (got["Body"].read(), got["ContentType"]) == (b"{}\n", "application/json")

    upload_id = uploader.create(BUCKET, "raw/aborted.mp4")
    uploader.abort(BUCKET, "raw/aborted.mp4", upload_id)
    assert client.list_multipart_uploads(Bucket=BUCKET).get("Uploads", []) == []


# --- the local file changing under an upload ------------------------------------------------------
# StreamJob restarts on SourceChangedError and gives up cleanly on SourceGoneError; the retry
# policy around each S3 call must hand these through rather than turn them into S3 errors.


def test_upload_part_of_a_replaced_file_raises_source_changed(
    uploader: Uploader, video: tuple[Path, bytes], tmp_path: Path
) -> None:
    path, _ = video
    identity = FileIdentity.of(os.stat(path))
    upload_id = uploader.create(BUCKET, "raw/clip.mp4")
    newer = tmp_path / "newer.mp4"
    newer.write_bytes(b"x" * PART)
    os.replace(newer, path)

    with pytest.raises(SourceChangedError):
        uploader.upload_part(BUCKET, "raw/clip.mp4", upload_id, path, Part(1, 0, PART), identity)


def test_upload_part_of_a_shrunk_file_raises_source_changed(uploader: Uploader, tmp_path: Path) -> None:
    path = tmp_path / "short.mp4"
    path.write_bytes(b"x" * 100)
    upload_id = uploader.create(BUCKET, "raw/short.mp4")
    with pytest.raises(SourceChangedError, match="shrank"):
        uploader.upload_part(BUCKET, "raw/short.mp4", upload_id, path, Part(1, 0, PART), None)


def test_upload_part_of_a_deleted_file_raises_source_gone(uploader: Uploader, tmp_path: Path, sleeps: list[float]) -> None:
    upload_id = uploader.create(BUCKET, "raw/gone.mp4")
    with pytest.raises(SourceGoneError):
        uploader.upload_part(BUCKET, "raw/gone.mp4", upload_id, tmp_path / "gone.mp4", Part(1, 0, PART), None)
    assert sleeps == []


def test_put_object_of_a_deleted_file_raises_source_gone(uploader: Uploader, tmp_path: Path) -> None:
    with pytest.raises(SourceGoneError):
        uploader.put_object(BUCKET, "raw/gone.mp4", tmp_path / "gone.mp4", 10, None)


# --- a part whose bytes the server saw differently ------------------------------------------------


class FixedEtagClient:
    """Acknowledges every part with the same ETag, as a corrupting proxy or an odd server might."""

    def __init__(self, etag: str) -> None:
        self.etag = etag
        self.calls = 0

    def upload_part(self, **kwargs: Any) -> dict[str, Any]:
        self.calls += 1
        self.kwargs = kwargs
        self.payload_sha256 = payload_sha256_of(kwargs["Body"])
        return {"ETag": self.etag}


def test_a_part_is_signed_with_its_sha256_and_carries_no_md5_by_default(tmp_path: Path) -> None:
    path = tmp_path / "a.mp4"
    path.write_bytes(b"payload")
    fake = FixedEtagClient('"' + "0" * 32 + '"')
    uploader = Uploader(fake, RetryPolicy(max_attempts=3, sleep=lambda s: None))  # type: ignore[arg-type]

    record = uploader.upload_part(BUCKET, "k", "u", path, Part(1, 0, 7), None)

    assert fake.payload_sha256 == record.sha256 == hashlib.sha256(b"payload").hexdigest()
    assert "ContentMD5" not in fake.kwargs
    assert fake.calls == 1  # an ETag is not checked without an MD5 of our own


def test_with_content_md5_a_part_goes_unsigned_and_is_recorded_by_its_md5_alone(tmp_path: Path) -> None:
    """Where the server checks Content-MD5, that is the part's one checksum: no SHA-256 is computed,
    the body goes UNSIGNED-PAYLOAD, and the record carries the MD5 that was sent."""
    path = tmp_path / "a.mp4"
    path.write_bytes(b"payload")
    md5 = hashlib.md5(b"payload").hexdigest()
    fake = FixedEtagClient(f'"{md5}"')
    uploader = Uploader(fake, RetryPolicy(sleep=lambda s: None), content_md5=True)  # type: ignore[arg-type]

    record = uploader.upload_part(BUCKET, "k", "u", path, Part(1, 0, 7), None)

    assert fake.payload_sha256 is None
    assert fake.kwargs["ContentMD5"] == base64.b64encode(bytes.fromhex(md5)).decode()
    assert (record.md5, record.sha256) == (md5, "")
    assert "sha256" not in record.to_dict()


def test_a_part_acknowledged_with_another_md5_is_retried_then_fails(tmp_path: Path) -> None:
    path = tmp_path / "a.mp4"
    path.write_bytes(b"payload")
    fake = FixedEtagClient('"' + "0" * 32 + '"')
    sleeps: list[float] = []
    uploader = Uploader(fake, RetryPolicy(max_attempts=3, sleep=sleeps.append), content_md5=True)  # type: ignore[arg-type]

    with pytest.raises(RetryableError) as info:
        uploader.upload_part(BUCKET, "k", "u", path, Part(1, 0, 7), None)

    assert info.value.code == "BadDigest"
    assert fake.calls == 3
    assert len(sleeps) == 2


class RecordingEtagClient:
    """Answers each part with the ETags given, one per call, and keeps every request's arguments."""

    def __init__(self, *etags: str) -> None:
        self.etags = list(etags)
        self.requests: list[dict[str, Any]] = []

    def upload_part(self, **kwargs: Any) -> dict[str, Any]:
        self.requests.append(dict(kwargs))
        return {"ETag": self.etags.pop(0)}


def reply_checked(fake: Any, *, attempts: int = 3) -> Uploader:
    """An uploader for a server that answers each part's MD5 (ServerTraits.md5_header off)."""
    policy = RetryPolicy(max_attempts=attempts, sleep=lambda s: None)
    return Uploader(fake, policy, traits=ServerTraits(content_md5=True, md5_header=False))


def test_where_the_reply_carries_the_md5_no_content_md5_is_sent_and_the_reply_is_compared(tmp_path: Path) -> None:
    path = tmp_path / "a.mp4"
    path.write_bytes(b"payload")
    md5 = hashlib.md5(b"payload").hexdigest()
    fake = RecordingEtagClient('"' + "0" * 32 + '"', f'"{md5}"')  # damaged on the way, then stored intact

    record = reply_checked(fake).upload_part(BUCKET, "k", "u", path, Part(1, 0, 7), None)

    assert [("ContentMD5" in r, payload_sha256_of(r["Body"])) for r in fake.requests] == [(False, None)] * 2
    assert (record.etag, record.md5, record.sha256) == (f'"{md5}"', md5, "")


def test_a_reply_without_an_md5_sends_the_part_again_with_content_md5(tmp_path: Path) -> None:
    """Nothing checked bytes answered with an opaque ETag: the same attempt sends them once more,
    this time for the server to check."""
    path = tmp_path / "a.mp4"
    path.write_bytes(b"payload")
    fake = RecordingEtagClient('"opaque-1"', '"opaque-2"')

    record = reply_checked(fake, attempts=1).upload_part(BUCKET, "k", "u", path, Part(1, 0, 7), None)

    md5_b64 = base64.b64encode(hashlib.md5(b"payload").digest()).decode()
    assert [r.get("ContentMD5") for r in fake.requests] == [None, md5_b64]
    assert record.etag == '"opaque-2"'


def test_a_non_md5_etag_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "a.mp4"
    path.write_bytes(b"payload")
    uploader = Uploader(FixedEtagClient('"server-specific-etag"'), RetryPolicy(sleep=lambda s: None))  # type: ignore[arg-type]
    record = uploader.upload_part(BUCKET, "k", "u", path, Part(1, 0, 7), None)
    assert record.etag == '"server-specific-etag"'
    assert record.sha256 == hashlib.sha256(b"payload").hexdigest()


# --- the endpoint's circuit breaker ------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class UnreachableClient:
    """A client whose endpoint refuses connections until `up` is set; counts the requests sent."""

    def __init__(self) -> None:
        self.up = threading.Event()
        self.calls = 0

    def head_bucket(self, **kwargs: Any) -> dict[str, Any]:
        self.calls += 1
        if not self.up.is_set():
            raise bexc.EndpointConnectionError(endpoint_url="http://s3.test:9000")
        return {}


def test_an_open_breaker_keeps_requests_off_the_network() -> None:
    fake = UnreachableClient()
    breaker = CircuitBreaker("http://s3.test:9000", failures=3, cooldown=5.0, clock=Clock())
    uploader = Uploader(fake, RetryPolicy(max_attempts=8, sleep=lambda s: None), breaker=breaker)  # type: ignore[arg-type]
    quick = uploader.with_policy(RetryPolicy(max_attempts=3, sleep=lambda s: None))

    with pytest.raises(RetryableError):
        quick.head_bucket(BUCKET)
    assert (fake.calls, breaker.state) == (3, BreakerState.OPEN)

    for _ in range(5):  # a quick check fails at once instead of waiting, and sends nothing
        with pytest.raises(CircuitOpenError):
            quick.head_bucket(BUCKET)
    assert fake.calls == 3


def test_waiting_for_the_breaker_uses_up_no_attempts() -> None:
    fake = UnreachableClient()
    clock = Clock()
    breaker = CircuitBreaker("http://s3.test:9000", failures=1, cooldown=30.0, clock=clock)
    stop = threading.Event()
    uploader = Uploader(fake, RetryPolicy(max_attempts=2, sleep=lambda s: None, stop_event=stop), breaker=breaker)  # type: ignore[arg-type]
    outcome: list[str] = []

    def call() -> None:
        uploader.head_bucket(BUCKET)
        outcome.append("returned")

    thread = threading.Thread(target=call, daemon=True)
    try:
        thread.start()
        # Attempt 1 failed and opened the breaker; attempt 2 waits for it rather than failing.
        wait_for(lambda: breaker.waiting == 1, timeout=10, what="the call waiting for the breaker")
        assert fake.calls == 1
        fake.up.set()
        clock.now += 30.0  # the cooldown ends: the waiting attempt is the probe, and it succeeds
        thread.join(timeout=10)
    finally:
        stop.set()
    assert outcome == ["returned"]
    assert fake.calls == 2
    assert breaker.state is BreakerState.CLOSED


def test_stop_releases_a_call_waiting_for_the_breaker() -> None:
    fake = UnreachableClient()
    breaker = CircuitBreaker("http://s3.test:9000", failures=1, cooldown=30.0, clock=Clock())
    stop = threading.Event()
    uploader = Uploader(fake, RetryPolicy(max_attempts=8, sleep=lambda s: None, stop_event=stop), breaker=breaker)  # type: ignore[arg-type]
    errors: list[BaseException] = []

    def call() -> None:
        try:
            uploader.head_bucket(BUCKET)
        except BaseException as exc:  # noqa: BLE001 - the test looks at it
            errors.append(exc)

    thread = threading.Thread(target=call, daemon=True)
    thread.start()
    wait_for(lambda: breaker.waiting == 1, timeout=10, what="the call waiting for the breaker")
    stop.set()
    thread.join(timeout=5)
    assert not thread.is_alive()
    assert [type(e) for e in errors] == [CircuitOpenError]
    assert fake.calls == 1


def test_parts_go_through_the_breaker_too(client: Any, video: tuple[Path, bytes]) -> None:
    path, _ = video
    breaker = CircuitBreaker("moto", failures=1, cooldown=30.0, clock=Clock())
    uploader = Uploader(client, RetryPolicy(max_attempts=1, sleep=lambda s: None), breaker=breaker)
    upload_id = uploader.create(BUCKET, "raw/clip.mp4")
    breaker.settle(Verdict.UNAVAILABLE, probe=False)  # the endpoint just failed elsewhere

    with pytest.raises(CircuitOpenError):
        uploader.with_policy(RetryPolicy(max_attempts=1)).upload_part(BUCKET, "raw/clip.mp4", upload_id, path, Part(1, 0, PART), None)
    with pytest.raises(CircuitOpenError):
        uploader.with_policy(RetryPolicy(max_attempts=1)).put_object(BUCKET, "raw/small.mp4", path, 10, None)

    assert client.list_parts(Bucket=BUCKET, Key="raw/clip.mp4", UploadId=upload_id).get("Parts", []) == []
    assert "Contents" not in client.list_objects_v2(Bucket=BUCKET)


def test_answers_from_the_server_never_open_the_breaker(uploader: Uploader, client: Any) -> None:
    breaker = CircuitBreaker("moto", failures=2, cooldown=30.0, clock=Clock())
    guarded = Uploader(client, RetryPolicy(max_attempts=2, sleep=lambda s: None), breaker=breaker)
    for number in range(5):
        assert guarded.head(BUCKET, f"missing/{number}.mp4") is None  # 404s
        with pytest.raises(PermanentError):
            guarded.head_bucket("no-such-bucket")
    assert breaker.state is BreakerState.CLOSED


class BrokenClient:
    """A client whose every call hits a bug (a KeyError) rather than the network; counts the calls."""

    def __init__(self) -> None:
        self.calls = 0

    def _bug(self, **kwargs: Any) -> dict[str, Any]:
        self.calls += 1
        raise KeyError("UploadId")

    head_bucket = create_multipart_upload = upload_part = _bug


def test_a_bug_under_an_s3_call_comes_out_as_itself(tmp_path: Path) -> None:
    # Not a PermanentError: that would mark the user's file FAILED for a fault in chunkd.
    fake = BrokenClient()
    breaker = CircuitBreaker("http://s3.test:9000", failures=1, cooldown=30.0, clock=Clock())
    uploader = Uploader(fake, RetryPolicy(max_attempts=5, sleep=lambda s: None), breaker=breaker)  # type: ignore[arg-type]
    path = tmp_path / "a.mp4"
    path.write_bytes(b"payload")

    with pytest.raises(KeyError, match="UploadId"):
        uploader.head_bucket(BUCKET)
    with pytest.raises(KeyError, match="UploadId"):
        uploader.create(BUCKET, "raw/a.mp4")
    with pytest.raises(KeyError, match="UploadId"):
        uploader.upload_part(BUCKET, "raw/a.mp4", "u", path, Part(1, 0, 7), None)

    assert fake.calls == 3  # one attempt each
    assert breaker.state is BreakerState.CLOSED  # says nothing about the endpoint
