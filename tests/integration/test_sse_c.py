"""SSE-C end to end (CHUNKD_SSE_C_KEY_FILE): a multipart upload killed with SIGKILL and resumed,
a single PUT, a dedup copy and `chunkd verify --deep`, all with the customer key.

Ceph RGW enforces SSE-C (an object stored with a customer key cannot be read without it), so it
proves every call carried the key; moto accepts the headers and ignores them, so there it proves
only that nothing chunkd sends with the key is refused. Ceph RGW (Pacific) answers a CopyObject of
an SSE-C object NotImplemented: there the duplicate's bytes are sent instead, with the key.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from chunkd.store import open_store
from tests.support.bucket import BUCKET
from tests.support.ceph_rgw import CephRGW
from tests.support.cli import run_chunkd
from tests.support.daemon import DaemonProcess, daemon_env, wait_for
from tests.support.files import drop, sha256_file, write_random
from tests.support.s3_servers import make_client
from tests.support.sizes import MiB


@pytest.fixture(params=["moto", "rgw"])
def s3(request: pytest.FixtureRequest) -> Any:
    return request.getfixturevalue(request.param)


def _with_key(sse_key: bytes) -> dict[str, Any]:
    return {"SSECustomerAlgorithm": "AES256", "SSECustomerKey": sse_key}


def _read(client: Any, key: str, sse_key: bytes) -> bytes | None:
    try:
        body: bytes = client.get_object(Bucket=BUCKET, Key=key, **_with_key(sse_key))["Body"].read()
    except ClientError as exc:
        if exc.response["Error"]["Code"] in ("NoSuchKey", "404"):
            return None
        raise
    return body


def _manifest(client: Any, key: str, sse_key: bytes) -> dict[str, Any] | None:
    body = _read(client, f"{key}.manifest.json", sse_key)
    return None if body is None else dict(json.loads(body))


def _recorded_parts(state_url: str, relpath: str) -> int:
    store = open_store(state_url)
    try:
        record = store.find_by_relpath(relpath)
        return 0 if record is None else len(store.list_parts(record.id))
    finally:
        store.close()


def _assert_needs_the_key(s3: Any, client: Any, key: str) -> None:
    """RGW refuses a GET without the customer key (moto stores the bytes in the clear)."""
    if isinstance(s3, CephRGW):
        with pytest.raises(ClientError) as refused:
            client.get_object(Bucket=BUCKET, Key=key)
        assert refused.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400


def test_sse_c_upload_resume_dedup_copy_and_deep_verify(
    s3: Any, chunkd_daemon: Callable[..., DaemonProcess], input_dir: Path, tmp_path: Path,
) -> None:
    sse_key = os.urandom(32)
    key_file = tmp_path / "sse-c.key"
    key_file.write_bytes(sse_key)
    state_url = f"sqlite:///{tmp_path / 'state.db'}"
    settings: dict[str, Any] = {"part_size": "5MiB", "bandwidth_limit": "15MB", "sse_c_key_file": key_file}
    copies = not isinstance(s3, CephRGW)
    client = make_client(s3.endpoint_url, s3.access_key, s3.secret_key)

    big = drop(write_random(tmp_path / "big.mp4", 30 * MiB), input_dir, "big.mp4")
    first = chunkd_daemon(s3, state_url=state_url, **settings)
    wait_for(lambda: _recorded_parts(state_url, "big.mp4") >= 2, timeout=60, what="2 checkpointed parts")
    first.kill()
    assert _recorded_parts(state_url, "big.mp4") < 6, "the kill should land in the middle of the upload"

    second = chunkd_daemon(s3, state_url=state_url, log_name="second.log", **settings)
    wait_for(lambda: _manifest(client, "big.mp4", sse_key), timeout=120, what="manifest after restart")
    assert second.logged("resumed") and not second.logged("starting a fresh upload")
    assert hashlib.sha256(_read(client, "big.mp4", sse_key) or b"").hexdigest() == sha256_file(big)
    _assert_needs_the_key(s3, client, "big.mp4")
    _assert_needs_the_key(s3, client, "big.mp4.manifest.json")

    small = drop(write_random(tmp_path / "small.mp4", 1 * MiB), input_dir, "small.mp4")  # one PutObject
    shutil.copyfile(big, input_dir / "again.mp4")  # the same bytes: a server-side copy
    wait_for(lambda: _manifest(client, "small.mp4", sse_key), timeout=60, what="small.mp4's manifest")
    again = wait_for(lambda: _manifest(client, "again.mp4", sse_key), timeout=60, what="again.mp4's manifest")
    if copies:
        assert again["dedup_of"] == "big.mp4"
    else:
        assert "dedup_of" not in again or again["dedup_of"] is None
        assert second.logged("this and later duplicates are sent as bytes")
    assert _read(client, "small.mp4", sse_key) == small.read_bytes()
    _assert_needs_the_key(s3, client, "small.mp4")
    assert hashlib.sha256(_read(client, "again.mp4", sse_key) or b"").hexdigest() == sha256_file(big)
    _assert_needs_the_key(s3, client, "again.mp4")
    second.terminate()

    env = daemon_env(
        input_dir=input_dir, state_url=state_url, endpoint_url=s3.endpoint_url,
        access_key=s3.access_key, secret_key=s3.secret_key, sse_c_key_file=key_file,
    )
    for key in ("big.mp4", "small.mp4", "again.mp4"):
        result = run_chunkd("verify", key, "--deep", env=env)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "PASS  object_sha256" in result.stdout
