"""Bodies are signed with the SHA-256 chunkd computed for them, against a real server over HTTP.

The strict moto server and Ceph RGW check x-amz-content-sha256 the way S3 and MinIO do, so bytes
that differ from the ones hashed (damaged on the wire) are refused and the part is read, hashed and
sent again. A part is read once, so a file rewritten after the read cannot make the body differ from
its hash.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

import chunkd.s3.writes as uploader_module
from chunkd.config import load_settings
from chunkd.daemon import build_engine, preflight
from chunkd.model.planner import Part
from chunkd.pipeline.partreader import FileIdentity, RangeReader, read_into
from chunkd.s3.client import S3Target, make_client
from chunkd.s3.devserver import LocalS3Server
from chunkd.s3.retry import RetryPolicy
from chunkd.s3.uploader import Uploader
from tests.support.bucket import BUCKET
from tests.support.s3_servers import MotoServer
from tests.support.sizes import MiB


def chunkd_client(server: Any) -> Any:
    return make_client(S3Target(server.endpoint_url, None, server.access_key, server.secret_key))


@pytest.fixture(params=["moto", "rgw"])
def checking(request: pytest.FixtureRequest) -> Any:
    """A server that checks the signed payload SHA-256: strict moto, and Ceph RGW on its own."""
    return request.getfixturevalue(request.param)


@pytest.fixture
def plain_moto_server(moto: MotoServer) -> Iterator[MotoServer]:
    """moto without its strict middleware, sharing the `moto` fixture's store and bucket."""
    with MotoServer(strict=False) as plain:
        yield plain


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def sent_headers(client: Any) -> list[dict[str, str]]:
    seen: list[dict[str, str]] = []
    client.meta.events.register(
        "before-send.s3", lambda request, **_: seen.append({k.lower(): _text(v) for k, v in request.headers.items()})
    )
    return seen


def test_the_signed_payload_hash_is_the_part_sha256_and_no_md5_is_sent(server: Any, tmp_path: Path) -> None:
    path = tmp_path / "clip.mp4"
    data = os.urandom(6 * MiB)
    path.write_bytes(data)
    client = chunkd_client(server)
    seen = sent_headers(client)
    uploader = Uploader(client, RetryPolicy(max_attempts=1))
    upload_id = uploader.create(BUCKET, "clip.mp4")

    record = uploader.upload_part(BUCKET, "clip.mp4", upload_id, path, Part(1, 0, len(data)), None)

    part_request = seen[-1]
    assert part_request["x-amz-content-sha256"] == record.sha256 == hashlib.sha256(data).hexdigest()
    assert "content-md5" not in part_request
    assert record.etag.strip('"') == hashlib.md5(data).hexdigest()  # the server got these bytes


def test_a_body_that_does_not_match_its_signed_hash_is_refused(checking: Any, tmp_path: Path) -> None:
    path = tmp_path / "clip.mp4"
    path.write_bytes(b"the bytes on disk")
    client = chunkd_client(checking)
    with open(path, "rb") as handle, pytest.raises(ClientError) as info:
        body = RangeReader(handle, 0, 17, payload_sha256=hashlib.sha256(b"other bytes").hexdigest())
        client.put_object(Bucket=BUCKET, Key="clip.mp4", Body=body, ContentLength=17)
    assert info.value.response["Error"]["Code"] == "XAmzContentSHA256Mismatch"
    if isinstance(checking, MotoServer):  # only moto counts requests
        assert checking.counts()["PutObject"] == 1
    assert "Contents" not in checking.client().list_objects_v2(Bucket=BUCKET)  # nothing stored


def test_a_part_is_read_once_so_a_rewrite_after_the_read_cannot_split_hash_and_body(
    checking: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The bytes hashed are the bytes sent: a rewrite after the part was read changes neither, and
    the part lands signed with the SHA-256 of what was read (finalize's scan finds the rewrite)."""
    path = tmp_path / "clip.mp4"
    before, after = os.urandom(5 * MiB), os.urandom(5 * MiB)
    path.write_bytes(before)
    identity = FileIdentity.of(os.stat(path))
    reads: list[int] = []

    def read_then_rewrite(handle: Any, offset: int, buffer: bytearray) -> None:
        read_into(handle, offset, buffer)
        reads.append(len(buffer))
        with open(path, "r+b") as writer:  # same inode, same size: only the bytes differ
            writer.write(after)

    monkeypatch.setattr(uploader_module, "read_into", read_then_rewrite)
    retries: list[str] = []
    policy = RetryPolicy(max_attempts=3, sleep=lambda _: None, on_retry=lambda error, attempt: retries.append(error.code))
    uploader = Uploader(chunkd_client(checking), policy)
    upload_id = uploader.create(BUCKET, "clip.mp4")

    record = uploader.upload_part(BUCKET, "clip.mp4", upload_id, path, Part(1, 0, len(after)), identity)

    assert (reads, retries) == ([len(before)], [])
    assert record.sha256 == hashlib.sha256(before).hexdigest()
    uploader.complete(BUCKET, "clip.mp4", upload_id, [record])
    assert checking.client().get_object(Bucket=BUCKET, Key="clip.mp4")["Body"].read() == before


def test_content_md5_on_sends_both_and_checks_the_etag(server: Any, tmp_path: Path) -> None:
    path = tmp_path / "clip.mp4"
    data = os.urandom(MiB)
    path.write_bytes(data)
    client = chunkd_client(server)
    seen = sent_headers(client)
    uploader = Uploader(client, RetryPolicy(max_attempts=1), content_md5=True)

    digest, etag = uploader.put_object(BUCKET, "clip.mp4", path, len(data), None)

    assert seen[-1]["x-amz-content-sha256"] == digest.sha256_hex
    assert "content-md5" in seen[-1]
    assert digest.md5_hex == hashlib.md5(data).hexdigest() == etag.strip('"')


# -- CHUNKD_CONTENT_MD5=auto: asking the server once -------------------------------------------------


def test_the_probe_finds_moto_strict_and_rgw_check_signed_hashes(checking: Any) -> None:
    uploader = Uploader(chunkd_client(checking), RetryPolicy(max_attempts=1))
    assert uploader.checks_payload_hash(BUCKET, "cams/.chunkd-probe-1") is True
    assert "Contents" not in checking.client().list_objects_v2(Bucket=BUCKET)  # refused: nothing stored


def test_the_probe_finds_rclone_stores_what_it_does_not_check_and_cleans_up(rclone_s3: LocalS3Server) -> None:
    client = make_client(S3Target(rclone_s3.endpoint_url, None, rclone_s3.access_key, rclone_s3.secret_key))
    uploader = Uploader(client, RetryPolicy(max_attempts=1))
    assert uploader.checks_payload_hash(BUCKET, "cams/.chunkd-probe-1") is False
    listing: Any = client.list_objects_v2(Bucket=BUCKET)  # type: ignore[attr-defined]  # botocore builds its methods
    assert listing.get("Contents", []) == []  # the probe was deleted


# (checked by MD5, Content-MD5 sent): rclone serve s3 checks no signed hash and cannot take a part back;
# plain moto checks neither, but answers each part's MD5 and takes parts back, so its answer is compared.
@pytest.mark.parametrize(("server_name", "md5_expected"), [("moto", (False, True)), ("plain-moto", (True, False)),
                                                           ("rclone", (True, True)), ("rgw", (False, True))])
def test_auto_checks_md5s_only_where_signed_hashes_go_unchecked_and_sends_them_only_where_replies_lack_them(
    server_name: str, md5_expected: tuple[bool, bool], request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    if server_name == "plain-moto":
        server = request.getfixturevalue("plain_moto_server")
    else:
        server = request.getfixturevalue({"moto": "moto", "rclone": "rclone_s3", "rgw": "rgw"}[server_name])
    settings = load_settings(env={}, overrides={
        "input_dir": str(tmp_path), "state_url": f"sqlite:///{tmp_path / 'state.db'}",
        "key_template": "cams/{relpath}", "s3_endpoint_url": server.endpoint_url,
    })
    target = S3Target(server.endpoint_url, None, server.access_key, server.secret_key)
    engine = build_engine(settings, target)
    try:
        preflight(engine, target)
        traits = engine.uploader.traits
        assert (traits.content_md5, traits.md5_header) == md5_expected
    finally:
        engine.shutdown()
        engine.store.close()


def test_a_part_is_read_from_the_file_once(moto: MotoServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Hashed and sent from one read: the file's bytes cross into the process once per part."""
    path = tmp_path / "clip.mp4"
    path.write_bytes(os.urandom(5 * MiB))
    read: list[int] = []
    real_pread, real_preadv = os.pread, os.preadv
    monkeypatch.setattr(os, "pread", lambda fd, n, at: read.append(len(data := real_pread(fd, n, at))) or data)
    monkeypatch.setattr(os, "preadv", lambda fd, buffers, at: read.append(got := real_preadv(fd, buffers, at)) or got)
    uploader = Uploader(chunkd_client(moto), RetryPolicy(max_attempts=1))
    upload_id = uploader.create(BUCKET, "clip.mp4")

    uploader.upload_part(BUCKET, "clip.mp4", upload_id, path, Part(1, 0, 5 * MiB), None)

    assert sum(read) == 5 * MiB
