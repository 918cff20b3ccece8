"""Replies lost on their way back: the server did what was asked, chunkd never heard, and retried.

A FaultProxy between chunkd and each S3 server forwards the request, lets the server act on it,
then closes chunkd's connection instead of passing the answer on. Whatever the lost request left
on the server must not outlive the upload: no second multipart upload left open for the key, no
start-up probe object (or probe upload) left in the bucket.
"""

from __future__ import annotations

from pathlib import Path

from chunkd.daemon import preflight
from chunkd.pipeline.engine import Engine
from chunkd.pipeline.job import Outcome
from chunkd.s3.client import S3Target
from chunkd.s3.traits import PROBE_NAME
from tests.support.bucket import BUCKET, open_uploads, open_uploads_under, sha256_object
from tests.support.engine import close_test_engine, make_test_engine, run_job
from tests.support.faultproxy import Fault, Proxied, on
from tests.support.files import sha256_file, write_random
from tests.support.sizes import MiB

KEY = "clip.mp4"


def test_a_lost_create_reply_leaves_no_second_upload_open(
    proxied: Proxied, proxied_engine: Engine, tmp_path: Path
) -> None:
    path = write_random(tmp_path / "input" / KEY, 6 * MiB)  # two parts of 5 MiB: a multipart upload
    proxied.proxy.add(Fault.DROP_REPLY, on("POST", f"/{BUCKET}/{KEY}", query="uploads"))

    assert run_job(proxied_engine, KEY) is Outcome.COMPLETED

    assert [(fired.fault, fired.status) for fired in proxied.proxy.fired] == [(Fault.DROP_REPLY, 200)]
    client = proxied.client()
    assert sha256_object(client, KEY) == sha256_file(path)
    assert open_uploads(client, KEY) == []


def test_start_up_probes_whose_replies_are_lost_leave_nothing_behind(proxied: Proxied, tmp_path: Path) -> None:
    """The payload-hash probe's PUT (stored by a server that checks nothing), then the ETag-style
    probe's create and its complete: each done by the server, each reply lost."""
    probe = f"/{BUCKET}/{PROBE_NAME}"
    proxy = proxied.proxy
    proxy.add(Fault.DROP_REPLY, on("PUT", prefix=probe))
    proxy.add(Fault.DROP_REPLY, on("POST", prefix=probe, query="uploads"))
    proxy.add(Fault.DROP_REPLY, on("POST", prefix=probe, query="uploadId"))
    (tmp_path / "input").mkdir()
    engine = make_test_engine(proxied, tmp_path)
    try:
        preflight(engine, S3Target(proxied.endpoint_url, None, proxied.access_key, proxied.secret_key))
    finally:
        close_test_engine(engine)

    assert [fired.fault for fired in proxy.fired] == [Fault.DROP_REPLY] * 3
    client = proxied.client()
    listing = client.list_objects_v2(Bucket=BUCKET, Prefix=PROBE_NAME)
    assert [item["Key"] for item in listing.get("Contents", [])] == []
    assert open_uploads_under(client, PROBE_NAME) == []
