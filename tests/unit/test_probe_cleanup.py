"""The start-up probes leave nothing in the bucket, whatever became of their replies, and
`chunkd gc` removes the probe objects a killed daemon left (moto in-process, which stores a body
whatever its signed hash says, as `rclone serve s3` does)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import botocore.exceptions as bexc
import pytest
from moto import mock_aws

from chunkd.ops.gc import Collector, stale_probes
from chunkd.s3.client import S3Target, make_client
from chunkd.s3.reads import ListedObject
from chunkd.s3.retry import RetryPolicy
from chunkd.s3.traits import PROBE_NAME, decide_traits
from chunkd.s3.uploader import Uploader
from chunkd.store import open_store

BUCKET = "videos"
TEMPLATE = "cams/{relpath}"


@pytest.fixture
def client() -> Iterator[Any]:
    with mock_aws():
        made: Any = make_client(S3Target(region="us-east-1", access_key="testing", secret_key="testing"))
        made.create_bucket(Bucket=BUCKET)
        yield made


def uploader_on(client: Any) -> Uploader:
    return Uploader(client, RetryPolicy(max_attempts=2, sleep=lambda _: None))


def keys(client: Any) -> list[str]:
    return [item["Key"] for item in client.list_objects_v2(Bucket=BUCKET).get("Contents", [])]


def uploads(client: Any) -> list[str]:
    return [item["Key"] for item in client.list_multipart_uploads(Bucket=BUCKET).get("Uploads", [])]


def reply_lost(call: Callable[..., Any]) -> Callable[..., Any]:
    """`call` that reaches the server, whose answer never comes back."""

    def send(**kwargs: Any) -> Any:
        call(**kwargs)
        raise bexc.ConnectionClosedError(endpoint_url="http://s3.test")

    return send


def never_sent(**kwargs: Any) -> Any:
    raise bexc.EndpointConnectionError(endpoint_url="http://s3.test")


def test_a_payload_probe_whose_reply_was_lost_leaves_no_object(client: Any) -> None:
    client.put_object = reply_lost(client.put_object)

    traits = decide_traits(uploader_on(client), BUCKET, content_md5="auto", key_template=TEMPLATE)

    assert traits.content_md5  # nobody knows whether the server checks: Content-MD5 to be safe
    assert keys(client) == [] and uploads(client) == []


def test_an_etag_probe_whose_complete_reply_was_lost_leaves_no_object_nor_upload(client: Any) -> None:
    client.complete_multipart_upload = reply_lost(client.complete_multipart_upload)

    decide_traits(uploader_on(client), BUCKET, content_md5="on", key_template=TEMPLATE)

    assert keys(client) == [] and uploads(client) == []


def test_an_etag_probe_whose_complete_failed_aborts_its_upload(client: Any) -> None:
    client.complete_multipart_upload = never_sent

    decide_traits(uploader_on(client), BUCKET, content_md5="on", key_template=TEMPLATE)

    assert keys(client) == [] and uploads(client) == []


def test_probes_that_cannot_delete_do_not_fail_start_up(client: Any) -> None:
    client.delete_object = never_sent

    traits = decide_traits(uploader_on(client), BUCKET, content_md5="auto", key_template=TEMPLATE)

    assert traits.content_md5  # moto stores what it does not check
    assert all(key.startswith(f"cams/{PROBE_NAME}") for key in keys(client))  # for `chunkd gc`


# -- chunkd gc ---------------------------------------------------------------------------------


def test_the_age_rule_takes_only_probes_at_least_max_age_old() -> None:
    now = 1_700_000_000.0
    listed = [
        ListedObject(f"cams/{PROBE_NAME}old", now - 601),
        ListedObject(f"cams/{PROBE_NAME}young", now - 30),  # a probe still running
        ListedObject(f"cams/{PROBE_NAME}ahead", now + 60),  # server clock ahead of ours
        ListedObject(f"cams/x{PROBE_NAME}old", now - 9999),  # not a probe's name
    ]
    assert [(o.key, age) for o, age in stale_probes(listed, max_age=600, now=now)] == [(f"cams/{PROBE_NAME}old", 601)]
    assert [o.key for o, _ in stale_probes(listed, max_age=0, now=now)] == [
        f"cams/{PROBE_NAME}old", f"cams/{PROBE_NAME}young", f"cams/{PROBE_NAME}ahead",
    ]


def test_gc_removes_old_probe_objects_and_only_those(client: Any, tmp_path: Path) -> None:
    left = f"cams/{PROBE_NAME}0123abcd"
    for key in (left, "cams/clip.mp4", f"other/{PROBE_NAME}elsewhere"):
        client.put_object(Bucket=BUCKET, Key=key, Body=b"x")
    store = open_store(f"sqlite:///{tmp_path / 'state.db'}")
    lines: list[str] = []
    try:
        def collector(**fields: Any) -> Collector:
            return Collector(store, uploader_on(client), BUCKET, echo=lines.append, **fields)

        assert collector().remove_probes(key_template=TEMPLATE) == 0  # seconds old: maybe still running
        assert collector(probe_age=0, dry_run=True).remove_probes(key_template=TEMPLATE) == 1
        assert left in keys(client)
        assert collector(probe_age=0).remove_probes(key_template=TEMPLATE) == 1
    finally:
        store.close()
    assert sorted(keys(client)) == ["cams/clip.mp4", f"other/{PROBE_NAME}elsewhere"]
    assert any(line.startswith(f"would remove  {left}") for line in lines)
    assert any(line.startswith(f"removed  {left}") for line in lines)
    assert lines[-1] == "gc: removed 1 start-up probe object(s) older than 0 min"
