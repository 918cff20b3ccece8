"""The FaultProxy itself (tests/support/faultproxy.py), in front of moto: signed requests pass
unchanged, each fault does what it says as many times as asked, and nothing else is touched."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import botocore.exceptions as bexc
import pytest

from tests.support.bucket import BUCKET
from tests.support.faultproxy import Fault, FaultProxy, Proxied, on
from tests.support.s3_servers import MotoServer, make_client


@pytest.fixture
def via(moto: MotoServer) -> Iterator[Proxied]:
    with FaultProxy(moto.endpoint_url) as proxy:
        yield Proxied(moto, proxy)


def proxied_client(via: Proxied) -> Any:
    return make_client(via.endpoint_url, via.access_key, via.secret_key, retries={"total_max_attempts": 1})


def error_code(exc: pytest.ExceptionInfo[bexc.ClientError]) -> str:
    return str(exc.value.response["Error"]["Code"])


def test_requests_pass_unchanged_and_signed(via: Proxied) -> None:
    client = proxied_client(via)
    client.put_object(Bucket=BUCKET, Key="a/b c.txt", Body=b"hello")

    assert client.get_object(Bucket=BUCKET, Key="a/b c.txt")["Body"].read() == b"hello"
    assert client.head_object(Bucket=BUCKET, Key="a/b c.txt")["ContentLength"] == 5
    assert [(seen.method, seen.path) for seen in via.proxy.seen] == [("PUT", f"/{BUCKET}/a/b c.txt"),
                                                                    ("GET", f"/{BUCKET}/a/b c.txt"),
                                                                    ("HEAD", f"/{BUCKET}/a/b c.txt")]
    assert via.proxy.fired == []


def test_errors_are_answered_without_forwarding_as_often_as_asked(via: Proxied) -> None:
    client = proxied_client(via)
    via.proxy.add(Fault.SLOW_DOWN, on("PUT", f"/{BUCKET}/k"))
    via.proxy.add(Fault.ERROR_500, on("PUT", f"/{BUCKET}/k"))

    with pytest.raises(bexc.ClientError) as first:
        client.put_object(Bucket=BUCKET, Key="k", Body=b"one")
    with pytest.raises(bexc.ClientError) as second:
        client.put_object(Bucket=BUCKET, Key="k", Body=b"two")
    client.put_object(Bucket=BUCKET, Key="k", Body=b"three")

    assert (error_code(first), error_code(second)) == ("SlowDown", "InternalError")
    assert [fired.fault for fired in via.proxy.fired] == [Fault.SLOW_DOWN, Fault.ERROR_500]
    assert via.direct.counts()["PutObject"] == 1
    assert via.client().get_object(Bucket=BUCKET, Key="k")["Body"].read() == b"three"


def test_a_reset_reaches_no_server_and_a_dropped_reply_does(via: Proxied) -> None:
    client = proxied_client(via)
    via.proxy.add(Fault.RESET, on("PUT", f"/{BUCKET}/reset"))
    via.proxy.add(Fault.DROP_REPLY, on("PUT", f"/{BUCKET}/dropped"))

    with pytest.raises((bexc.ConnectionClosedError, bexc.EndpointConnectionError)):
        client.put_object(Bucket=BUCKET, Key="reset", Body=b"x")
    with pytest.raises(bexc.ConnectionClosedError):
        client.put_object(Bucket=BUCKET, Key="dropped", Body=b"y")

    assert [(fired.fault, fired.status) for fired in via.proxy.fired] == [(Fault.RESET, None), (Fault.DROP_REPLY, 200)]
    keys = [item["Key"] for item in via.client().list_objects_v2(Bucket=BUCKET).get("Contents", [])]
    assert keys == ["dropped"]


def test_a_flipped_bit_reaches_the_server(moto: MotoServer) -> None:
    with MotoServer(strict=False) as plain, FaultProxy(plain.endpoint_url) as proxy:
        via = Proxied(plain, proxy)
        proxy.add(Fault.FLIP_BIT, on("PUT", f"/{BUCKET}/k"))

        proxied_client(via).put_object(Bucket=BUCKET, Key="k", Body=b"\x00\x00\x00\x00")

        assert via.client().get_object(Bucket=BUCKET, Key="k")["Body"].read() == b"\x00\x00\x01\x00"
        assert proxy.fired[0].original == b"\x00\x00\x00\x00"
