"""A CreateMultipartUpload whose reply was lost: the server created the upload, chunkd retried and
got a second one. The first is aborted once the retry succeeds, unless another stream holds it;
uploads of other keys are never looked at. Against moto in-process; a botocore hook loses the reply
after the server answered (tests/integration/test_lost_replies.py does it over HTTP on each server).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import botocore.exceptions as bexc
import pytest

from chunkd.s3.retry import RetryPolicy
from chunkd.s3.uploader import Uploader
from tests.support.mocked_s3 import mocked_bucket

BUCKET = "videos"
KEY = "raw/clip.mp4"


@pytest.fixture
def client() -> Iterator[Any]:
    with mocked_bucket(BUCKET) as s3:
        yield s3


def lose_replies(client: Any, times: int) -> list[str]:
    """The next `times` CreateMultipartUpload replies are lost once the server made the upload;
    returns the ids the server made for them."""
    lost: list[str] = []

    def lose(parsed: dict[str, Any], **_: Any) -> None:
        if len(lost) < times:
            lost.append(parsed["UploadId"])
            raise bexc.ConnectionClosedError(endpoint_url="http://s3.test/")

    client.meta.events.register("after-call.s3.CreateMultipartUpload", lose)
    return lost


def open_ids(client: Any, key: str = KEY) -> set[str]:
    return {u["UploadId"] for u in client.list_multipart_uploads(Bucket=BUCKET).get("Uploads", []) if u["Key"] == key}


def uploader(client: Any, requests: list[str]) -> Uploader:
    return Uploader(client, RetryPolicy(max_attempts=4, sleep=lambda s: None), on_request=requests.append)


def test_uploads_made_for_lost_replies_are_aborted(client: Any) -> None:
    lost = lose_replies(client, times=2)
    requests: list[str] = []

    upload_id = uploader(client, requests).create(BUCKET, KEY)

    assert len(lost) == 2 and upload_id not in lost
    assert open_ids(client) == {upload_id}
    assert requests.count("AbortMultipartUpload") == 2


def test_an_upload_another_stream_holds_is_left_alone(client: Any) -> None:
    held = client.create_multipart_upload(Bucket=BUCKET, Key=KEY)["UploadId"]  # another stream's, just made
    lost = lose_replies(client, times=1)

    upload_id = uploader(client, []).create(BUCKET, KEY, held=lambda candidate: candidate == held)

    assert open_ids(client) == {upload_id, held}
    assert lost[0] not in open_ids(client)


def test_uploads_of_longer_keys_are_not_touched(client: Any) -> None:
    longer = client.create_multipart_upload(Bucket=BUCKET, Key=f"{KEY}.part2")["UploadId"]
    lose_replies(client, times=1)

    upload_id = uploader(client, []).create(BUCKET, KEY)

    assert open_ids(client) == {upload_id}
    assert open_ids(client, f"{KEY}.part2") == {longer}


def test_a_create_answered_at_once_lists_nothing(client: Any) -> None:
    requests: list[str] = []

    uploader(client, requests).create(BUCKET, KEY)

    assert requests == ["CreateMultipartUpload"]
