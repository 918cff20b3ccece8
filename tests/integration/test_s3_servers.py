"""The two local S3 servers the suite runs against: a multipart round trip on each, moto's
request counting and outage simulation, and rclone's dev-server behaviour."""

from __future__ import annotations

import base64
import hashlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError

from chunkd.errors import DevServerError
from chunkd.s3.devserver import LocalS3Server
from tests.support.bucket import BUCKET
from tests.support.ceph_rgw import CephRGW
from tests.support.s3_servers import MotoServer, RcloneS3Server, classify, make_client
from tests.support.sizes import MiB


def content_md5(data: bytes) -> str:
    return base64.b64encode(hashlib.md5(data).digest()).decode()


def multipart_round_trip(client: Any, key: str, parts: list[bytes]) -> dict[str, Any]:
    upload_id = client.create_multipart_upload(Bucket=BUCKET, Key=key)["UploadId"]
    etags = []
    for number, body in enumerate(parts, start=1):
        response = client.upload_part(
            Bucket=BUCKET, Key=key, UploadId=upload_id, PartNumber=number, Body=body, ContentMD5=content_md5(body)
        )
        assert response["ETag"].strip('"') == hashlib.md5(body).hexdigest()
        etags.append(response["ETag"])
    listed = client.list_parts(Bucket=BUCKET, Key=key, UploadId=upload_id)["Parts"]
    assert [(p["PartNumber"], p["Size"], p["ETag"]) for p in listed] == [
        (n, len(body), etag) for n, (body, etag) in enumerate(zip(parts, etags), start=1)
    ]
    completed: dict[str, Any] = client.complete_multipart_upload(
        Bucket=BUCKET,
        Key=key,
        UploadId=upload_id,
        MultipartUpload={"Parts": [{"PartNumber": n, "ETag": e} for n, e in enumerate(etags, start=1)]},
    )
    return completed


def test_multipart_round_trip(server: Any) -> None:
    client = make_client(server.endpoint_url, server.access_key, server.secret_key)
    parts = [os.urandom(5 * MiB), os.urandom(5 * MiB)]
    key = "cam 1/2026-11-23/clip.mp4"
    completed = multipart_round_trip(client, key, parts)
    whole = b"".join(parts)
    s3_etag = hashlib.md5(b"".join(hashlib.md5(p).digest() for p in parts)).hexdigest() + "-2"
    if isinstance(server, CephRGW):  # Ceph 16.2 sends <ETag></ETag>; its HEAD has the S3 ETag
        assert completed.get("ETag", "") == ""
        assert client.head_object(Bucket=BUCKET, Key=key)["ETag"].strip('"') == s3_etag
    else:
        assert completed["ETag"].strip('"') == s3_etag
    head = client.head_object(Bucket=BUCKET, Key=key)
    assert head["ContentLength"] == len(whole)
    # rclone's HEAD reports the MD5 of the whole object, not S3's multipart ETag.
    assert head["ETag"].strip('"') in (s3_etag, hashlib.md5(whole).hexdigest())
    body = client.get_object(Bucket=BUCKET, Key=key)["Body"].read()
    assert hashlib.sha256(body).hexdigest() == hashlib.sha256(whole).hexdigest()
    if isinstance(server, MotoServer):
        assert server.counts()["UploadPart"] == 2
        assert server.uploaded_parts(ok_only=True) == [(key, 1), (key, 2)]


def test_a_wrong_content_md5_is_refused(server: Any) -> None:
    client = make_client(server.endpoint_url, server.access_key, server.secret_key)
    upload_id = client.create_multipart_upload(Bucket=BUCKET, Key="bad.mp4")["UploadId"]
    with pytest.raises(ClientError) as info:
        client.upload_part(
            Bucket=BUCKET, Key="bad.mp4", UploadId=upload_id, PartNumber=1, Body=b"a" * 1024,
            ContentMD5=content_md5(b"b" * 1024),
        )
    assert info.value.response["Error"]["Code"] == "BadDigest"


def test_parts_of_an_aborted_upload_get_no_such_upload(server: Any) -> None:
    """What chunkd sees when an upload vanished behind its back (aborted, expired, or lost in a
    server restart): a permanent 404, not a retryable 500."""
    client = make_client(server.endpoint_url, server.access_key, server.secret_key)
    upload_id = client.create_multipart_upload(Bucket=BUCKET, Key="gone.mp4")["UploadId"]
    body = os.urandom(5 * MiB)
    etag = client.upload_part(Bucket=BUCKET, Key="gone.mp4", UploadId=upload_id, PartNumber=1, Body=body)["ETag"]
    client.abort_multipart_upload(Bucket=BUCKET, Key="gone.mp4", UploadId=upload_id)
    calls: dict[str, Callable[[], object]] = {
        "ListParts": lambda: client.list_parts(Bucket=BUCKET, Key="gone.mp4", UploadId=upload_id),
        "UploadPart": lambda: client.upload_part(
            Bucket=BUCKET, Key="gone.mp4", UploadId=upload_id, PartNumber=2, Body=b"x", ContentMD5=content_md5(b"x")
        ),
        "CompleteMultipartUpload": lambda: client.complete_multipart_upload(
            Bucket=BUCKET, Key="gone.mp4", UploadId=upload_id,
            MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": etag}]},
        ),
    }
    expected = dict.fromkeys(calls, ("NoSuchUpload", 404))
    if isinstance(server, CephRGW):  # RGW's own answers; chunkd reads both as NoSuchUpload (test_rgw.py)
        expected.update(ListParts=("NoSuchKey", 404), CompleteMultipartUpload=("InternalError", 500))
    for name, call in calls.items():
        with pytest.raises(ClientError) as info:
            call()
        answer = (info.value.response["Error"]["Code"], info.value.response["ResponseMetadata"]["HTTPStatusCode"])
        assert answer == expected[name], name


# -- moto: counting and outages --------------------------------------------------------------


def test_moto_counts_what_it_received(moto: MotoServer) -> None:
    client = moto.client()
    multipart_round_trip(client, "dir/a.mp4", [os.urandom(5 * MiB), b"tail"])
    client.put_object(Bucket=BUCKET, Key="dir/a.mp4.manifest.json", Body=b"{}")
    client.head_object(Bucket=BUCKET, Key="dir/a.mp4")
    counts = moto.counts()
    assert counts["CreateMultipartUpload"] == 1
    assert counts["UploadPart"] == 2
    assert counts["ListParts"] == 1
    assert counts["CompleteMultipartUpload"] == 1
    assert counts["PutObject"] == 1
    assert counts["HeadObject"] == 1
    assert moto.uploaded_parts() == [("dir/a.mp4", 1), ("dir/a.mp4", 2)]
    assert moto.uploaded_parts(key="other.mp4") == []
    client.put_object(Bucket=BUCKET, Key="cam 1/é%20+.mp4", Body=b"x")
    assert moto.requests()[-1].key == "cam 1/é%20+.mp4"  # decoded once, as UTF-8
    assert all(request.status == 200 for request in moto.requests())
    moto.reset_counts()
    assert moto.counts() == {}


def test_moto_counts_requests_it_refused(moto: MotoServer) -> None:
    client = moto.client()
    with pytest.raises(ClientError):
        client.upload_part(Bucket=BUCKET, Key="x.mp4", UploadId="nope", PartNumber=3, Body=b"x")
    assert moto.uploaded_parts() == [("x.mp4", 3)]
    assert moto.uploaded_parts(ok_only=True) == []
    assert moto.requests()[0].status == 404


def test_moto_stop_is_a_real_outage_and_start_keeps_the_port(moto: MotoServer) -> None:
    client = moto.client(retries={"total_max_attempts": 1})
    client.put_object(Bucket=BUCKET, Key="k", Body=b"v")  # leaves a keep-alive connection open
    endpoint = moto.endpoint_url
    moto.stop()
    with pytest.raises(EndpointConnectionError):
        client.head_object(Bucket=BUCKET, Key="k")
    moto.start()
    assert moto.endpoint_url == endpoint
    assert client.get_object(Bucket=BUCKET, Key="k")["Body"].read() == b"v"  # moto state survives
    moto.reset()
    with pytest.raises(ClientError):
        client.head_object(Bucket=BUCKET, Key="k")


def test_moto_alone_ignores_content_md5(moto: MotoServer) -> None:
    """Canary for StrictS3Middleware: if moto starts checking digests itself, strict mode can go."""
    with MotoServer(strict=False) as plain:  # shares moto's process-wide store with moto
        client = plain.client()
        client.put_object(Bucket=BUCKET, Key="k", Body=b"a", ContentMD5=content_md5(b"b"))
        assert plain.counts()["PutObject"] == 1


@pytest.mark.parametrize(
    ("method", "path", "query", "operation"),
    [
        ("PUT", "/b/k", "partNumber=2&uploadId=u", "UploadPart"),
        ("POST", "/b/k", "uploads", "CreateMultipartUpload"),
        ("POST", "/b/k", "uploadId=u", "CompleteMultipartUpload"),
        ("DELETE", "/b/k", "uploadId=u", "AbortMultipartUpload"),
        ("GET", "/b/k", "uploadId=u", "ListParts"),
        ("GET", "/b", "uploads", "ListMultipartUploads"),
        ("PUT", "/b/k", "", "PutObject"),
        ("HEAD", "/b/k", "", "HeadObject"),
        ("GET", "/b/k", "", "GetObject"),
        ("DELETE", "/b/k", "", "DeleteObject"),
        ("PUT", "/b", "", "CreateBucket"),
        ("GET", "/b", "list-type=2&prefix=a", "ListObjectsV2"),
        ("GET", "/", "", "ListBuckets"),
    ],
)
def test_classify(method: str, path: str, query: str, operation: str) -> None:
    assert classify(method, path, query).operation == operation


def test_classify_reads_key_and_part() -> None:
    request = classify("PUT", "/chunkd/a%20b/c.mp4", "uploadId=xyz&partNumber=17")
    assert (request.bucket, request.key, request.part_number, request.upload_id) == ("chunkd", "a b/c.mp4", 17, "xyz")


# -- rclone serve s3 -------------------------------------------------------------------------


def test_rclone_serves_top_level_folders_as_buckets(tmp_path: Path) -> None:
    root = tmp_path / "s3"
    with RcloneS3Server(root, buckets=("chunkd", "second-bucket")) as server:
        client = make_client(server.endpoint_url, server.access_key, server.secret_key)
        assert sorted(b["Name"] for b in client.list_buckets()["Buckets"]) == ["chunkd", "second-bucket"]
        client.put_object(Bucket="second-bucket", Key="a/b.txt", Body=b"on disk")
        assert (root / "second-bucket" / "a" / "b.txt").read_bytes() == b"on disk"
        assert server.secret_key not in repr(server)
        assert server.secret_key not in server.log_tail(1000)


def test_rclone_restart_keeps_endpoint_and_objects(rclone_s3: LocalS3Server) -> None:
    client = make_client(rclone_s3.endpoint_url, rclone_s3.access_key, rclone_s3.secret_key)
    client.put_object(Bucket=BUCKET, Key="k", Body=b"v")
    endpoint = rclone_s3.endpoint_url
    rclone_s3.stop()
    assert not rclone_s3.running
    rclone_s3.start()
    assert rclone_s3.endpoint_url == endpoint
    assert client.get_object(Bucket=BUCKET, Key="k")["Body"].read() == b"v"


def test_rclone_restart_loses_open_uploads(rclone_s3: LocalS3Server) -> None:
    """Open uploads live in the rclone process. Two quirks chunkd must absorb: the streamed bytes
    stay on disk as a hidden temporary file, and ListMultipartUploads on a bucket that has had no
    upload since the server started is 404 NoSuchUpload, not an empty list."""
    client = make_client(rclone_s3.endpoint_url, rclone_s3.access_key, rclone_s3.secret_key)
    upload_id = client.create_multipart_upload(Bucket=BUCKET, Key="v.mp4")["UploadId"]
    client.upload_part(Bucket=BUCKET, Key="v.mp4", UploadId=upload_id, PartNumber=1, Body=os.urandom(5 * MiB))
    assert len(client.list_multipart_uploads(Bucket=BUCKET)["Uploads"]) == 1
    rclone_s3.stop()
    rclone_s3.start()
    with pytest.raises(ClientError) as info:
        client.list_parts(Bucket=BUCKET, Key="v.mp4", UploadId=upload_id)
    assert info.value.response["Error"]["Code"] == "NoSuchUpload"
    with pytest.raises(ClientError) as info:
        client.list_multipart_uploads(Bucket=BUCKET)
    assert info.value.response["Error"]["Code"] == "NoSuchUpload"
    leftovers = [path.name for path in (rclone_s3.root / BUCKET).iterdir()]
    assert len(leftovers) == 1 and leftovers[0].startswith(".rclone_temp_multipart_")
    assert client.list_objects_v2(Bucket=BUCKET).get("Contents", []) == []  # hidden from listings


def test_rclone_refuses_a_port_already_served(rclone_s3: LocalS3Server, tmp_path: Path) -> None:
    other = LocalS3Server(tmp_path / "other", port=rclone_s3.port, start_timeout=5)
    with pytest.raises(DevServerError, match="address already in use") as info:
        other.start()  # the port answers, but not as this server: start() must not be fooled
    assert other.secret_key not in str(info.value)
    assert not other.running


def test_rclone_refuses_to_replace_a_streamed_part_with_other_bytes(rclone_s3: LocalS3Server) -> None:
    """Unlike S3 and moto; an identical re-send (a resume) is accepted."""
    client = make_client(rclone_s3.endpoint_url, rclone_s3.access_key, rclone_s3.secret_key)
    upload_id = client.create_multipart_upload(Bucket=BUCKET, Key="v.mp4")["UploadId"]
    first, other = os.urandom(5 * MiB), os.urandom(5 * MiB)
    for body in (first, first):
        client.upload_part(Bucket=BUCKET, Key="v.mp4", UploadId=upload_id, PartNumber=1, Body=body, ContentMD5=content_md5(body))
    with pytest.raises(ClientError) as info:
        client.upload_part(Bucket=BUCKET, Key="v.mp4", UploadId=upload_id, PartNumber=1, Body=other, ContentMD5=content_md5(other))
    assert info.value.response["Error"]["Code"] == "NotImplemented"


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses PR_SET_PDEATHSIG and /proc")
def test_rclone_dies_with_a_killed_daemon(tmp_path: Path) -> None:
    script = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from chunkd.s3.devserver import LocalS3Server\n"
        "server = LocalS3Server(Path(sys.argv[1])).start()\n"
        "print(server._process.pid, flush=True)\n"
        "time.sleep(60)\n"
    )
    daemon = subprocess.Popen([sys.executable, "-c", script, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        rclone_pid = int(daemon.stdout.readline())  # type: ignore[union-attr]
        assert _alive(rclone_pid)
    finally:
        daemon.send_signal(signal.SIGKILL)
        daemon.wait()
    deadline = time.monotonic() + 10
    while _alive(rclone_pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    orphaned = _alive(rclone_pid)
    if orphaned:
        os.kill(rclone_pid, signal.SIGTERM)  # don't leave it running after the failure
    assert not orphaned, "rclone outlived the process that started it"


def test_rclone_wrong_secret_is_refused(rclone_s3: LocalS3Server) -> None:
    client = make_client(rclone_s3.endpoint_url, rclone_s3.access_key, "not-the-secret", retries={"total_max_attempts": 1})
    with pytest.raises(ClientError):
        client.list_buckets()


@pytest.mark.parametrize("bucket", ["ab", "Upper", "under_score"])
def test_rclone_bad_bucket_names_rejected_up_front(tmp_path: Path, bucket: str) -> None:
    with pytest.raises(ValueError, match="bucket"):
        LocalS3Server(tmp_path, buckets=(bucket,))
