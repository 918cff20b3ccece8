"""The headers the configured client puts on a request, caught before anything is sent."""

from __future__ import annotations

import io
from typing import Any

import pytest

from chunkd.s3.client import EXPECT_CONTINUE_MIN_BYTES, S3Target, make_client


class _Sent(Exception):
    """Raised from before-send: the request never leaves the process."""

    def __init__(self, headers: dict[str, Any]) -> None:
        super().__init__("caught")
        self.headers = headers


def _headers_of(operation: str, size: int) -> dict[str, Any]:
    client = make_client(S3Target(endpoint_url="http://127.0.0.1:9", access_key="a", secret_key="b"))

    def catch(request: Any, **_: Any) -> None:
        raise _Sent(dict(request.headers))

    client.meta.events.register("before-send.s3", catch)
    body = io.BytesIO(b"x" * size)  # file-like, as the uploader's bodies are
    with pytest.raises(_Sent) as sent:
        if operation == "PutObject":
            client.put_object(Bucket="b", Key="k", Body=body, ContentLength=size)
        else:
            client.upload_part(Bucket="b", Key="k", UploadId="u", PartNumber=1, Body=body, ContentLength=size)
    return sent.value.headers


@pytest.mark.parametrize("operation", ["PutObject", "UploadPart"])
def test_a_small_body_is_sent_without_waiting_for_100_continue(operation: str) -> None:
    assert "Expect" not in _headers_of(operation, 300 * 1024)


def test_a_large_part_still_asks_the_server_before_sending_its_body() -> None:
    assert _headers_of("UploadPart", EXPECT_CONTINUE_MIN_BYTES)["Expect"] == b"100-continue"
