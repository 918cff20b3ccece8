"""A manifest damaged on its way to the server, or in the bucket afterwards, is caught.

On the way: a before-send hook flips a bit of the PutObject body after the request was signed,
which is what a faulty proxy does. Against moto without the strict middleware (it checks neither
Content-MD5 nor the signed SHA-256) only the ETag tells; against the strict one, the signature.
In the bucket: the stored bytes are changed behind moto's back and its ETag left as it was.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from chunkd.errors import RetryableError
from chunkd.ops.verify import check_manifest_integrity
from chunkd.s3.client import S3Target, make_client
from chunkd.s3.retry import RetryPolicy
from chunkd.s3.uploader import SmallObject, Uploader
from tests.support.bucket import BUCKET
from tests.support.cli import run_chunkd
from tests.support.files import write_random
from tests.support.s3_servers import MotoServer
from tests.support.sizes import MiB

MANIFEST = json.dumps({"key": "clip.mp4", "size": 7}).encode() + b"\n"
KEY = "clip.mp4.manifest.json"


@pytest.fixture
def plain(moto: MotoServer) -> Iterator[MotoServer]:
    """moto with no checks of its own, sharing the `moto` fixture's store (and its bucket)."""
    with MotoServer(strict=False) as server:
        yield server


def flip_bit(data: bytes) -> bytes:
    return data[:5] + bytes([data[5] ^ 0x01]) + data[6:]


def damaging(client: Any, times: int) -> list[bytes]:
    """Flip a bit of the next `times` PutObject bodies once signed; returns the bodies sent."""
    sent: list[bytes] = []

    def flip(request: Any, **_: Any) -> None:
        body = request.body if isinstance(request.body, bytes) else request.body.read()
        if len(sent) < times:
            body = flip_bit(body)
        sent.append(body)
        request.body = body

    client.meta.events.register("before-send.s3.PutObject", flip)
    return sent


def uploader_for(server: MotoServer, sleeps: list[float]) -> tuple[Uploader, Any]:
    client = make_client(S3Target(server.endpoint_url, None, server.access_key, server.secret_key))
    return Uploader(client, RetryPolicy(max_attempts=3, sleep=sleeps.append)), client


def stored(server: MotoServer) -> bytes:
    body: bytes = server.client().get_object(Bucket=BUCKET, Key=KEY)["Body"].read()
    return body


def test_a_manifest_damaged_on_the_way_to_a_server_that_checks_nothing_is_sent_again(plain: MotoServer) -> None:
    sleeps: list[float] = []
    uploader, client = uploader_for(plain, sleeps)
    sent = damaging(client, times=1)

    uploader.put_bytes(BUCKET, KEY, MANIFEST, content_type="application/json")

    assert sent == [flip_bit(MANIFEST), MANIFEST]
    assert len(sleeps) == 1
    assert stored(plain) == MANIFEST


def test_a_manifest_damaged_on_every_send_fails_rather_than_being_stored(plain: MotoServer) -> None:
    uploader, client = uploader_for(plain, [])
    sent = damaging(client, times=10)

    with pytest.raises(RetryableError) as info:
        uploader.put_bytes(BUCKET, KEY, MANIFEST, content_type="application/json")

    assert info.value.code == "BadDigest"
    assert len(sent) == 3


def test_a_manifest_is_signed_with_its_sha256(moto: MotoServer) -> None:
    uploader, client = uploader_for(moto, [])
    headers: list[dict[str, Any]] = []
    client.meta.events.register("before-send.s3.PutObject", lambda request, **_: headers.append(dict(request.headers)))

    uploader.put_bytes(BUCKET, KEY, MANIFEST, content_type="application/json")

    signed = headers[-1]["X-Amz-Content-SHA256"]
    signed = signed.decode() if isinstance(signed, bytes) else signed
    assert signed == hashlib.sha256(MANIFEST).hexdigest()
    assert stored(moto) == MANIFEST


def test_a_signed_manifest_is_stored_and_read_back_whole_on_every_server(server: Any) -> None:
    client = make_client(S3Target(server.endpoint_url, None, server.access_key, server.secret_key))
    uploader = Uploader(client, RetryPolicy(max_attempts=1))

    uploader.put_bytes(BUCKET, KEY, MANIFEST, content_type="application/json")

    found = uploader.get_small_object(BUCKET, KEY, limit=1 * MiB)
    assert found is not None and found.data == MANIFEST
    assert found.etag_is_md5  # so `chunkd verify` checks it on each of them
    assert check_manifest_integrity(found, KEY, limit=1 * MiB) is None


# --- a manifest damaged in the bucket: `chunkd verify` ----------------------------------------------


def rot_in_storage(key: str, data: bytes) -> None:
    """Replace what moto stores for `key`, keeping the ETag of the bytes it had (bit rot)."""
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.s3.models import s3_backends

    stored_key = s3_backends[DEFAULT_ACCOUNT_ID]["aws"].buckets[BUCKET].keys[key]
    etag = stored_key.etag
    stored_key.value = data
    stored_key._etag = etag.strip('"')  # moto's only way to keep an ETag its bytes disagree with


def test_verify_fails_a_manifest_whose_bytes_do_not_match_its_etag(env: dict[str, str], tmp_path: Path,
                                                                   moto: MotoServer) -> None:
    result = run_chunkd("upload", "--part-size", "5MiB", str(write_random(tmp_path / "clip.mp4", 1000)), env=env)
    assert result.returncode == 0, result.stderr
    original = stored(moto)
    document = json.loads(original)
    document["source"]["hostname"] = "elsewhere"  # still plausible: verify's other checks pass
    rot_in_storage(KEY, json.dumps(document).encode())

    result = run_chunkd("verify", "clip.mp4", env=env)

    assert result.returncode == 1, result.stdout + result.stderr
    assert "FAIL  manifest integrity" in result.stdout
    assert result.stdout.strip().splitlines()[-1] == "FAILED: 1 check(s) failed (manifest integrity)"


@pytest.mark.parametrize(
    ("etag", "etag_is_md5", "fails"),
    [
        (f'"{hashlib.md5(MANIFEST).hexdigest()}"', True, False),
        (f'"{hashlib.md5(b"other bytes").hexdigest()}"', True, True),
        ('"an-opaque-etag"', False, False),
    ],
)
def test_manifest_integrity_check(etag: str, etag_is_md5: bool, fails: bool) -> None:
    check = check_manifest_integrity(SmallObject(MANIFEST, etag, etag_is_md5), "s3://b/k", limit=1 * MiB)
    assert (check is not None) == fails
    if check is not None:
        assert (check.name, check.ok) == ("manifest integrity", False)
