"""Objects as S3 users expect them: Content-Type from the extension, Cache-Control,
Content-Disposition, metadata, tags, storage class, encryption and ACL, as `head_object`,
`get_object_tagging` and `get_object_acl` show them, for a single PUT, a multipart upload, a dedup
copy and an upload resumed after kill -9 under other settings; and a bucket that demands encryption.

moto stores every attribute. Ceph RGW as the tests run it refuses SSE (it wants TLS and a key
backend) and every storage class but STANDARD (its zone has no other placement), so it is checked
on the rest.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from chunkd.model.states import StreamState
from chunkd.pipeline.engine import Engine
from chunkd.pipeline.job import Outcome
from chunkd.store import open_store
from tests.support.bucket import BUCKET, read_manifest
from tests.support.cli import error_lines, run_chunkd
from tests.support.daemon import DaemonProcess, daemon_env, wait_for
from tests.support.engine import close_test_engine, make_test_engine, run_job
from tests.support.faultproxy import Fault, FaultProxy, Proxied, Seen
from tests.support.s3_servers import MotoServer, make_client
from tests.support.sizes import MiB

COMMON = {
    "cache_control": "max-age=600",
    "content_disposition": 'inline; filename="{name}"',
    "metadata": "source={hostname}&path={relpath}",
    "tags": "team=video&file={name}",
}
MOTO_ONLY = {"storage_class": "STANDARD_IA", "sse": "AES256", "acl": "public-read"}
ALL_USERS = "http://acs.amazonaws.com/groups/global/AllUsers"


@pytest.fixture(params=["moto", "rgw"])
def attr_server(request: pytest.FixtureRequest) -> Any:
    """moto, which stores every attribute, and Ceph RGW, which stores most."""
    return request.getfixturevalue(request.param)


@pytest.fixture
def engines(tmp_path: Path) -> Iterator[list[Engine]]:
    """Engines a test builds (make_test_engine); shut down after it."""
    (tmp_path / "input").mkdir()
    built: list[Engine] = []
    yield built
    for engine in built:
        close_test_engine(engine)


def tags_of(client: Any, key: str) -> dict[str, str]:
    return {tag["Key"]: tag["Value"] for tag in client.get_object_tagging(Bucket=BUCKET, Key=key).get("TagSet", [])}


def check_attributes(client: Any, key: str, content_type: str, *, moto: bool) -> None:
    """The object at `key` has its own type and every COMMON setting (MOTO_ONLY too on moto)."""
    head = client.head_object(Bucket=BUCKET, Key=key)
    name = key.rpartition("/")[2]
    assert head["ContentType"] == content_type
    assert head["CacheControl"] == "max-age=600"
    assert head["ContentDisposition"] == f'inline; filename="{name}"'
    assert head["Metadata"] == {"source": socket.gethostname(), "path": key}
    assert tags_of(client, key) == {"team": "video", "file": name}
    if moto:
        assert head["StorageClass"] == "STANDARD_IA"
        assert head["ServerSideEncryption"] == "AES256"
        grants = client.get_object_acl(Bucket=BUCKET, Key=key)["Grants"]
        assert {"URI": ALL_USERS, "Type": "Group"} in [grant["Grantee"] for grant in grants]
    manifest_head = client.head_object(Bucket=BUCKET, Key=f"{key}.manifest.json")
    assert manifest_head["ContentType"] == "application/json"
    assert manifest_head.get("StorageClass", "STANDARD") == "STANDARD" and not manifest_head["Metadata"]
    assert manifest_head.get("ServerSideEncryption") == ("AES256" if moto else None)
    recorded = (read_manifest(client, key) or {})["attributes"]
    assert (recorded["content_type"], recorded["tags"]) == (content_type, {"team": "video", "file": name})


def test_single_put_multipart_and_dedup_copy_carry_their_own_attributes(
    attr_server: Any, engines: list[Engine], tmp_path: Path
) -> None:
    moto = isinstance(attr_server, MotoServer)
    engine = make_test_engine(attr_server, tmp_path, **COMMON, **(MOTO_ONLY if moto else {}))
    engines.append(engine)
    client = make_client(attr_server.endpoint_url, attr_server.access_key, attr_server.secret_key)
    clip = os.urandom(6 * MiB)  # two parts of 5 MiB
    (engine.input_dir / "small.mp4").write_bytes(os.urandom(100 * 1024))
    (engine.input_dir / "clip.MOV").write_bytes(clip)
    (engine.input_dir / "again.mp4").write_bytes(clip)  # the same bytes: a server-side copy

    for name in ("small.mp4", "clip.MOV", "again.mp4"):
        assert run_job(engine, name) == Outcome.COMPLETED

    assert [(read_manifest(client, name) or {})["upload"] for name in ("small.mp4", "clip.MOV", "again.mp4")] == [
        "single", "multipart", "copy"
    ]
    check_attributes(client, "small.mp4", "video/mp4", moto=moto)
    check_attributes(client, "clip.MOV", "video/quicktime", moto=moto)
    check_attributes(client, "again.mp4", "video/mp4", moto=moto)


def test_an_upload_resumed_after_kill_9_keeps_the_attributes_it_was_created_with(
    attr_server: Any, tmp_path: Path
) -> None:
    server, moto = attr_server, isinstance(attr_server, MotoServer)
    input_dir, state_url = tmp_path / "input", f"sqlite:///{tmp_path / 'state.db'}"
    input_dir.mkdir()
    (input_dir / "long.mp4").write_bytes(os.urandom(30 * MiB))
    first_settings = {**COMMON, **(MOTO_ONLY if moto else {}), "part_size": "5MiB", "bandwidth_limit": "8MB"}
    first = _daemon(server, input_dir, state_url, tmp_path / "first.log", **first_settings)
    try:
        wait_for(lambda: _recorded_parts(state_url, "long.mp4") >= 2, timeout=60, what="2 checkpointed parts")
        first.kill()
    finally:
        first.stop()
    assert read_manifest(make_client(server.endpoint_url, server.access_key, server.secret_key), "long.mp4") is None

    changed = {"part_size": "5MiB", "tags": "team=other", "storage_class": "STANDARD", "metadata": "x=y",
               "cache_control": "no-store", "content_type": "application/x-other"}
    second = _daemon(server, input_dir, state_url, tmp_path / "second.log", **changed)
    client = make_client(server.endpoint_url, server.access_key, server.secret_key)
    try:
        wait_for(lambda: read_manifest(client, "long.mp4"), timeout=120, what="manifest after restart")
    finally:
        second.stop()
    assert second.logged("resumed")
    check_attributes(client, "long.mp4", "video/mp4", moto=moto)


def _daemon(server: Any, input_dir: Path, state_url: str, log: Path, **settings: Any) -> DaemonProcess:
    env = daemon_env(input_dir=input_dir, state_url=state_url, endpoint_url=server.endpoint_url,
                     access_key=server.access_key, secret_key=server.secret_key, **settings)
    return DaemonProcess(env, log).start()


def _recorded_parts(state_url: str, relpath: str) -> int:
    store = open_store(state_url)
    try:
        record = store.find_by_relpath(relpath)
        return 0 if record is None or not record.upload_id else len(store.list_parts(record.id))
    finally:
        store.close()


def _unencrypted_write(seen: Seen) -> bool:
    """What a bucket policy denying s3:PutObject without `x-amz-server-side-encryption` refuses:
    PutObject, CopyObject and CreateMultipartUpload without it (UploadPart carries none)."""
    writes = (seen.method == "PUT" and "partNumber" not in seen.query) or (
        seen.method == "POST" and "uploads" in seen.query
    )
    return writes and seen.path.startswith(f"/{BUCKET}/") and "x-amz-server-side-encryption" not in seen.headers


def test_a_bucket_that_demands_encryption_refuses_each_file_clearly_then_takes_them_with_sse(
    moto: MotoServer, engines: list[Engine], tmp_path: Path
) -> None:
    names = ("small.mp4", "clip.mov")
    with FaultProxy(moto.endpoint_url) as proxy:
        proxy.add(Fault.ACCESS_DENIED, _unencrypted_write, times=10**6)
        proxied = Proxied(moto, proxy)
        engine = make_test_engine(proxied, tmp_path)
        (engine.input_dir / "small.mp4").write_bytes(os.urandom(100 * 1024))
        (engine.input_dir / "clip.mov").write_bytes(os.urandom(6 * MiB))

        assert [run_job(engine, name) for name in names] == [Outcome.FAILED, Outcome.FAILED]
        records = [engine.store.find_by_relpath(name) for name in names]
        assert all(r is not None and r.state is StreamState.FAILED and "AccessDenied" in (r.last_error or "")
                   for r in records)
        close_test_engine(engine)
        env = daemon_env(input_dir=tmp_path / "input", state_url=f"sqlite:///{tmp_path / 'state.db'}",
                         endpoint_url=proxied.endpoint_url, access_key=moto.access_key, secret_key=moto.secret_key)
        status = run_chunkd("status", env=env)
        assert status.returncode == 0
        assert [line for line in status.stdout.splitlines() if "FAILED" in line and "AccessDenied" in line]
        assert all((tmp_path / "input" / name).exists() for name in names)
        assert run_chunkd("retry", "--failed", env=env).returncode == 0

        engine = make_test_engine(proxied, tmp_path, sse="AES256")
        engines.append(engine)
        assert [run_job(engine, name) for name in names] == [Outcome.COMPLETED, Outcome.COMPLETED]
    client = proxied.client()
    for name in names:
        assert client.head_object(Bucket=BUCKET, Key=name)["ServerSideEncryption"] == "AES256"
        assert client.head_object(Bucket=BUCKET, Key=f"{name}.manifest.json")["ServerSideEncryption"] == "AES256"


@pytest.mark.parametrize(
    ("args", "setting", "value", "named"),
    [
        ((), "CHUNKD_STORAGE_CLASS", "STANDARD_NOPE", "CHUNKD_STORAGE_CLASS"),
        ((), "CHUNKD_TAGS", "&".join(f"t{i}=v" for i in range(11)), "CHUNKD_TAGS"),
        (("--sse", "aes128"), None, None, "--sse"),
    ],
)
def test_a_bad_attribute_setting_is_one_line_naming_it_and_exit_2(
    env: dict[str, str], args: tuple[str, ...], setting: str | None, value: str | None, named: str
) -> None:
    result = run_chunkd("run", *args, env={**env, **({setting: value} if setting and value else {})})
    assert result.returncode == 2
    lines = error_lines(result)
    assert len(lines) == 1 and named in lines[0], result.stderr
