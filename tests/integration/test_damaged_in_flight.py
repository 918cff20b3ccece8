"""Bodies damaged on their way to the server: a FaultProxy flips one bit of a request body after
chunkd signed it, as a faulty middlebox would. The damaged bytes must never be what the bucket
keeps: the server refuses them (signed SHA-256, Content-MD5) or chunkd's own ETag check catches
them, and the body is sent again.

What each server does with a damaged part, Content-MD5 as the start-up probe decides it:
- Ceph RGW and the strict moto check the signed SHA-256 (Content-MD5 off): 400
  XAmzContentSHA256Mismatch;
- `rclone serve s3` checks no payload hash, so every part carries Content-MD5: 400 BadDigest;
- plain moto checks neither, but answers each part with the MD5 of what it stored and lets a part be
  sent again, so no Content-MD5 is sent: the damaged part is stored (200), its answer differs from
  chunkd's MD5, and it is sent again.
Where a server will not take a part back (rclone, once it streamed the part to disk), a part found
damaged after the fact gets the whole file sent under a fresh upload.
A manifest sent to moto without its strict middleware (it checks neither) is stored damaged, and
only its ETag (the stored bytes' MD5) tells.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from chunkd.daemon import preflight
from chunkd.pipeline.engine import Engine
from chunkd.pipeline.job import Outcome
from chunkd.s3.client import S3Target
from chunkd.s3.devserver import LocalS3Server
from tests.support.bucket import BUCKET, open_uploads, read_manifest, sha256_object
from tests.support.engine import close_test_engine, make_test_engine, run_job
from tests.support.faultproxy import Fault, FaultProxy, Proxied, Seen, on, without_query
from tests.support.files import sha256_file, write_random
from tests.support.s3_servers import MotoServer
from tests.support.sizes import MiB

KEY = "clip.mp4"
MANIFEST_KEY = f"{KEY}.manifest.json"
# The server's answer to the damaged part, and whether the probe chose MD5s over signed hashes there.
PART_REFUSAL = {"moto": (400, False), "rclone": (400, True), "rgw": (400, False)}


def first_part(seen: Seen) -> bool:
    return on("PUT", f"/{BUCKET}/{KEY}", query="partNumber")(seen) and seen.query["partNumber"] == ["1"]


def started(proxied: Proxied, tmp_path: Path) -> Engine:
    """An engine through the proxy with the server's traits decided by the start-up probes."""
    (tmp_path / "input").mkdir(exist_ok=True)
    engine = make_test_engine(proxied, tmp_path)
    preflight(engine, S3Target(proxied.endpoint_url, None, proxied.access_key, proxied.secret_key))
    return engine


@pytest.fixture
def engine(proxied: Proxied, tmp_path: Path) -> Iterator[Engine]:
    built = started(proxied, tmp_path)
    yield built
    close_test_engine(built)


def part_digests(path: Path, manifest: dict[str, Any], checksum: str) -> list[tuple[str, str]]:
    """(MD5, `checksum`: "md5" or "sha256") of the file's bytes at each part the manifest lists."""
    data = path.read_bytes()
    found = []
    for part in manifest["parts"]:
        chunk = data[part["offset"]:part["offset"] + part["size"]]
        found.append((hashlib.md5(chunk).hexdigest(), hashlib.new(checksum, chunk).hexdigest()))
    return found


def test_a_part_damaged_in_flight_is_refused_and_sent_again(
    proxied: Proxied, engine: Engine, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    status, content_md5 = PART_REFUSAL[request.node.callspec.params["server"]]
    assert engine.uploader.content_md5 is content_md5
    path = write_random(tmp_path / "input" / KEY, 6 * MiB)
    proxied.proxy.add(Fault.FLIP_BIT, on("PUT", f"/{BUCKET}/{KEY}", query="partNumber"))

    assert run_job(engine, KEY) is Outcome.COMPLETED

    assert [(fired.fault, fired.status) for fired in proxied.proxy.fired] == [(Fault.FLIP_BIT, status)]
    uploads_of_parts = [seen for seen in proxied.proxy.seen if on("PUT", f"/{BUCKET}/{KEY}", query="partNumber")(seen)]
    assert len(uploads_of_parts) == 3  # two parts, one sent twice
    client = proxied.client()
    assert sha256_object(client, KEY) == sha256_file(path)
    manifest = read_manifest(client, KEY)
    assert manifest is not None and manifest["sha256"] == sha256_file(path)
    # Each part carries the checksum the server verified: Content-MD5 (sent UNSIGNED-PAYLOAD) where
    # the server checks it, else the signed SHA-256; the other one is never computed.
    checksum = "md5" if content_md5 else "sha256"
    assert [(p["etag"].strip('"'), p[checksum]) for p in manifest["parts"]] == part_digests(path, manifest, checksum)
    assert not any(("md5" if checksum == "sha256" else "sha256") in p for p in manifest["parts"])
    assert open_uploads(client, KEY) == []


@pytest.fixture
def plain_moto(moto: MotoServer) -> Iterator[Proxied]:
    """moto with no checks of its own (sharing the `moto` fixture's store and bucket) behind a FaultProxy."""
    with MotoServer(strict=False) as plain, FaultProxy(plain.endpoint_url) as proxy:
        yield Proxied(plain, proxy)


def sent_parts(proxied: Proxied) -> list[Seen]:
    return [seen for seen in proxied.proxy.seen if on("PUT", f"/{BUCKET}/{KEY}", query="partNumber")(seen)]


def test_where_the_answer_is_the_parts_md5_a_damaged_part_is_caught_by_it_and_sent_again(
    plain_moto: Proxied, tmp_path: Path
) -> None:
    engine = started(plain_moto, tmp_path)
    try:
        assert (engine.uploader.traits.content_md5, engine.uploader.traits.md5_header) == (True, False)
        path = write_random(tmp_path / "input" / KEY, 6 * MiB)
        plain_moto.proxy.add(Fault.FLIP_BIT, first_part)

        assert run_job(engine, KEY) is Outcome.COMPLETED
    finally:
        close_test_engine(engine)

    assert [(fired.fault, fired.status) for fired in plain_moto.proxy.fired] == [(Fault.FLIP_BIT, 200)]
    parts = sent_parts(plain_moto)
    assert sorted(seen.query["partNumber"][0] for seen in parts) == ["1", "1", "2"]
    assert not any("content-md5" in seen.headers for seen in parts)
    client = plain_moto.client()
    assert sha256_object(client, KEY) == sha256_file(path)
    manifest = read_manifest(client, KEY)
    assert manifest is not None
    assert [(p["etag"].strip('"'), p["md5"]) for p in manifest["parts"]] == part_digests(path, manifest, "md5")


def test_a_damaged_part_the_server_will_not_replace_gets_the_file_a_fresh_upload(
    rclone_s3: LocalS3Server, tmp_path: Path
) -> None:
    """Checked by the answer alone (forced here: the probe keeps Content-MD5 on for rclone), a part
    rclone already streamed to disk cannot be sent again (NotImplemented): a fresh upload mends it."""
    with FaultProxy(rclone_s3.endpoint_url) as proxy:
        proxied = Proxied(rclone_s3, proxy)
        engine = started(proxied, tmp_path)
        try:
            engine.adopt_traits(dataclasses.replace(engine.uploader.traits, md5_header=False))
            path = write_random(tmp_path / "input" / KEY, 6 * MiB)
            proxy.add(Fault.FLIP_BIT, first_part)

            assert run_job(engine, KEY) is Outcome.COMPLETED
        finally:
            close_test_engine(engine)

        assert [(fired.fault, fired.status) for fired in proxy.fired] == [(Fault.FLIP_BIT, 200)]
        uploads = [seen.query["uploadId"][0] for seen in sent_parts(proxied)]
        assert len(set(uploads)) == 2  # the first upload, aborted, and the fresh one
        client = proxied.client()
        assert sha256_object(client, KEY) == sha256_file(path)
        assert open_uploads(client, KEY) == []


# --- the manifest ---------------------------------------------------------------------------------


@pytest.fixture(params=["plain-moto", "rgw"])
def manifest_server(request: pytest.FixtureRequest) -> Iterator[Proxied]:
    """`plain_moto`, or Ceph RGW behind a FaultProxy."""
    if request.param == "rgw":
        with FaultProxy(request.getfixturevalue("rgw").endpoint_url) as proxy:
            yield Proxied(request.getfixturevalue("rgw"), proxy)
        return
    yield request.getfixturevalue("plain_moto")


def test_a_manifest_damaged_in_flight_is_caught_and_sent_again(manifest_server: Proxied, tmp_path: Path) -> None:
    engine = started(manifest_server, tmp_path)
    try:
        path = write_random(tmp_path / "input" / KEY, 1 * MiB)  # one PutObject, then the manifest
        manifest_server.proxy.add(Fault.FLIP_BIT, without_query(on("PUT", f"/{BUCKET}/{MANIFEST_KEY}"), "uploadId"))

        assert run_job(engine, KEY) is Outcome.COMPLETED
    finally:
        close_test_engine(engine)

    fired = manifest_server.proxy.fired
    assert [(f.fault, f.seen.path) for f in fired] == [(Fault.FLIP_BIT, f"/{BUCKET}/{MANIFEST_KEY}")]
    client = manifest_server.client()
    manifest = read_manifest(client, KEY)  # parsed: the damaged copy was replaced
    assert manifest is not None and manifest["sha256"] == sha256_file(path)
    stored = client.get_object(Bucket=BUCKET, Key=MANIFEST_KEY)
    body = stored["Body"].read()
    assert body == fired[0].original  # the bytes chunkd meant to send the first time
    assert stored["ETag"].strip('"') == hashlib.md5(body).hexdigest()
