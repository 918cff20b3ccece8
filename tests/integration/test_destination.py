"""A file uploaded once goes again wherever the settings now point: another bucket, another key
template, another endpoint. Both `chunkd upload` and `chunkd run`, on one state store across runs."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support.bucket import BUCKET, empty_bucket, read_manifest, sha256_object
from tests.support.cli import run_chunkd
from tests.support.daemon import DaemonProcess, daemon_env, wait_for
from tests.support.files import sha256_file, write_random
from tests.support.s3_servers import LocalS3Server, make_client
from tests.support.sizes import MiB

OTHER_BUCKET = "b-two"


@dataclass(frozen=True)
class Place:
    """Where a run sends the file: the server, settings that differ, and the object it must make."""

    server: Any
    settings: dict[str, str]
    bucket: str
    key: str


def places(case: str, server: Any, request: pytest.FixtureRequest) -> tuple[Place, Place]:
    """The first run's place on `server`, the second's in another bucket, under another template, or
    on another endpoint (rclone serve s3, or moto when `server` is rclone)."""
    first = Place(server, {}, BUCKET, "clip.mp4")
    if case == "bucket":
        empty_bucket(client_of(first), OTHER_BUCKET)
        return first, Place(server, {"bucket": OTHER_BUCKET}, OTHER_BUCKET, "clip.mp4")
    if case == "key_template":
        return first, Place(server, {"key_template": "archive/{relpath}"}, BUCKET, "archive/clip.mp4")
    other = request.getfixturevalue("moto" if isinstance(server, LocalS3Server) else "rclone_s3")
    return first, Place(other, {}, BUCKET, "clip.mp4")


def copied_from(case: str, first: Place) -> str | None:
    """What the second manifest names as the object it was copied from: a server-side copy on the
    same endpoint, none across endpoints."""
    if case == "endpoint":
        return None
    return first.key if case == "key_template" else f"s3://{first.bucket}/{first.key}"


def env_for(place: Place, tmp_path: Path, **extra: Any) -> dict[str, str]:
    server = place.server
    return daemon_env(
        input_dir=tmp_path / "input", state_url=f"sqlite:///{tmp_path / 'state.db'}",
        endpoint_url=server.endpoint_url, access_key=server.access_key, secret_key=server.secret_key,
        **place.settings, **extra,
    )


def client_of(place: Place) -> Any:
    server = place.server
    return make_client(server.endpoint_url, server.access_key, server.secret_key)


def assert_landed(place: Place, source: Path) -> dict[str, Any]:
    client = client_of(place)
    assert sha256_object(client, place.key, bucket=place.bucket) == sha256_file(source)
    manifest = read_manifest(client, place.key, bucket=place.bucket)
    assert manifest is not None and manifest["key"] == place.key and manifest["bucket"] == place.bucket
    return manifest


CASES = ["bucket", "key_template", "endpoint"]


@pytest.mark.parametrize("case", CASES)
def test_upload_to_a_new_destination_uploads_again(
    case: str, server: Any, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    (tmp_path / "input").mkdir()
    source = write_random(tmp_path / "clip.mp4", 6 * MiB)
    first, second = places(case, server, request)

    done = run_chunkd("upload", str(source), env=env_for(first, tmp_path), timeout=120)
    assert done.returncode == 0, done.stderr
    assert_landed(first, source)

    again = run_chunkd("upload", str(source), env=env_for(second, tmp_path), timeout=120)
    assert again.returncode == 0, again.stderr
    assert "1/1 file(s) uploaded" in again.stderr
    assert assert_landed(second, source)["dedup_of"] == copied_from(case, first)


def test_upload_looks_for_the_object_before_it_says_uploaded(server: Any, tmp_path: Path) -> None:
    """The record says COMPLETED, the object was deleted since: `chunkd upload` sends it again."""
    (tmp_path / "input").mkdir()
    source = write_random(tmp_path / "clip.mp4", MiB)
    place = Place(server, {}, BUCKET, "clip.mp4")
    assert run_chunkd("upload", str(source), env=env_for(place, tmp_path), timeout=120).returncode == 0
    client_of(place).delete_object(Bucket=BUCKET, Key="clip.mp4")

    again = run_chunkd("upload", str(source), env=env_for(place, tmp_path), timeout=120)
    assert again.returncode == 0, again.stderr
    assert_landed(place, source)


@pytest.mark.parametrize("case", CASES)
def test_a_daemon_restarted_with_a_new_destination_uploads_there(
    case: str, server: Any, request: pytest.FixtureRequest, tmp_path: Path,
) -> None:
    input_dir = tmp_path / "input"
    input_dir.mkdir()
    source = write_random(input_dir / "clip.mp4", 6 * MiB)
    first, second = places(case, server, request)

    run(first, tmp_path, "first.log", lambda: read_manifest(client_of(first), first.key, bucket=first.bucket))
    assert_landed(first, source)
    run(second, tmp_path, "second.log",
        lambda: read_manifest(client_of(second), second.key, bucket=second.bucket))
    assert assert_landed(second, source)["dedup_of"] == copied_from(case, first)
    assert_landed(first, source)  # the old object stays where it was


def run(place: Place, tmp_path: Path, log_name: str, landed: Callable[[], object]) -> None:
    daemon = DaemonProcess(env_for(place, tmp_path), tmp_path / log_name).start()
    try:
        wait_for(landed, timeout=90, what=f"the manifest in s3://{place.bucket}/{place.key}")
        assert daemon.terminate() == 0
    finally:
        daemon.stop()


def test_an_object_deleted_behind_chunkds_back_is_uploaded_again_when_its_file_is_dropped_again(
    server: Any, tmp_path: Path
) -> None:
    """The same file (same inode, size and mtime) moved out of the folder and back in after its
    object was deleted on the server: the daemon looks for the object and uploads it again."""
    input_dir = tmp_path / "input"
    input_dir.mkdir()
    place = Place(server, {}, BUCKET, "clip.mp4")
    client = client_of(place)
    daemon = DaemonProcess(env_for(place, tmp_path), tmp_path / "daemon.log").start()
    try:
        wait_for(lambda: daemon.logged("watching"), timeout=30, what="the daemon to start")
        source = write_random(tmp_path / "clip.mp4", 6 * MiB).rename(input_dir / "clip.mp4")
        wait_for(lambda: read_manifest(client, place.key), timeout=90, what="the first upload")
        client.delete_object(Bucket=BUCKET, Key=place.key)
        client.delete_object(Bucket=BUCKET, Key=f"{place.key}.manifest.json")
        outside = source.rename(tmp_path / "clip.mp4")
        outside.rename(input_dir / "clip.mp4")
        wait_for(lambda: read_manifest(client, place.key), timeout=60, what="the object uploaded again")
    finally:
        daemon.stop()
    assert_landed(place, input_dir / "clip.mp4")
