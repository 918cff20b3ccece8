"""Poster frames on real servers: a real ffmpeg recording dropped into the folder ends with
`<key>.thumb.jpg` beside its object, a JPEG ffprobe decodes at the expected size, named in the
manifest; what is not valid video gets none; CHUNKD_THUMBNAIL=false makes none; a failure to make
one never fails the upload; a crash between the frame and the manifest ends with both."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from chunkd.pipeline.engine import Engine
from chunkd.pipeline.job import Outcome
from chunkd.pipeline.thumbnail import PosterFrames
from tests.support.bucket import BUCKET, read_manifest, sha256_object
from tests.support.cli import run_chunkd
from tests.support.daemon import DaemonProcess, wait_for
from tests.support.engine import run_job
from tests.support.faultproxy import Fault, Proxied, on
from tests.support.files import sha256_file
from tests.support.media import make_mp4, make_text_as_mp4, record_mp4_slowly, require_ffmpeg

POSTER_LINE = "poster frame uploaded"


def keys(client: Any) -> set[str]:
    return {item["Key"] for item in client.list_objects_v2(Bucket=BUCKET).get("Contents", [])}


def poster(client: Any, key: str, tmp_path: Path) -> tuple[str, int, int, str]:
    """(codec, width, height) of the poster frame as ffprobe decodes the downloaded bytes, and its
    Content-Type."""
    got = client.get_object(Bucket=BUCKET, Key=key)
    path = tmp_path / "poster.jpg"
    path.write_bytes(got["Body"].read())
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-show_streams", "-of", "json", str(path)], capture_output=True, check=True, timeout=30
    )
    (stream,) = json.loads(out.stdout)["streams"]
    return stream["codec_name"], stream["width"], stream["height"], got["ContentType"]


def test_a_recording_gets_a_poster_frame_and_what_is_not_video_gets_none(
    server: Any, client: Any, chunkd_daemon: Callable[..., DaemonProcess], input_dir: Path, tmp_path: Path
) -> None:
    require_ffmpeg()
    daemon = chunkd_daemon(server, invalid_media="quarantine", idle_seconds=2, part_size="5MiB")
    make_mp4(tmp_path / "small.mp4", 2.0)  # 320x240: never enlarged
    make_text_as_mp4(tmp_path / "bad.mp4")
    for name in ("small.mp4", "bad.mp4"):
        os.replace(tmp_path / name, input_dir / name)
    recorder = record_mp4_slowly(input_dir / "camera.mp4", 6, heavy=True)  # 1280x720, growing, in parts
    assert recorder.wait(timeout=60) == 0, recorder.stderr.read() if recorder.stderr else ""

    manifest = wait_for(lambda: read_manifest(client, "camera.mp4"), timeout=90, what="manifest of camera.mp4")
    assert manifest["thumbnail_key"] == "camera.mp4.thumb.jpg" and manifest["thumbnail_error"] is None
    assert len(manifest["parts"]) >= 2  # it went up while it grew
    assert poster(client, "camera.mp4.thumb.jpg", tmp_path) == ("mjpeg", 640, 360, "image/jpeg")
    assert sha256_object(client, "camera.mp4") == sha256_file(input_dir / "camera.mp4")
    small_manifest = wait_for(lambda: read_manifest(client, "small.mp4"), timeout=60, what="manifest of small.mp4")
    assert small_manifest["thumbnail_key"] == "small.mp4.thumb.jpg"
    assert poster(client, "small.mp4.thumb.jpg", tmp_path) == ("mjpeg", 320, 240, "image/jpeg")

    # quarantined as before, with no frame; the recording got one frame, at finalize, not one per growth
    wait_for((input_dir / ".quarantine" / "bad.mp4.reason.json").is_file, timeout=30, what="bad.mp4 quarantined")
    assert keys(client) == {
        "camera.mp4", "camera.mp4.manifest.json", "camera.mp4.thumb.jpg",
        "small.mp4", "small.mp4.manifest.json", "small.mp4.thumb.jpg",
    }
    posters = [line for line in daemon.log_lines() if line.get("event") == POSTER_LINE]
    assert sorted(line["relpath"] for line in posters) == ["camera.mp4", "small.mp4"]

    # the record and the completed event name it; `chunkd verify` is content with the object beside it
    streams = json.loads(run_chunkd("status", "--json", env=daemon.env, timeout=30).stdout)
    by_relpath = {stream["relpath"]: stream for stream in streams}
    assert by_relpath["camera.mp4"]["thumbnail_key"] == "camera.mp4.thumb.jpg"
    verify = run_chunkd("verify", "camera.mp4", env=daemon.env, timeout=60)
    assert verify.returncode == 0, verify.stdout + verify.stderr


def test_thumbnail_false_makes_none(
    server: Any, client: Any, chunkd_daemon: Callable[..., DaemonProcess], input_dir: Path, tmp_path: Path
) -> None:
    require_ffmpeg()
    chunkd_daemon(server, invalid_media="quarantine", idle_seconds=1, thumbnail="false")
    os.replace(make_mp4(tmp_path / "clip.mp4", 2.0, size="1280x720"), input_dir / "clip.mp4")

    manifest = wait_for(lambda: read_manifest(client, "clip.mp4"), timeout=60, what="manifest of clip.mp4")
    assert manifest["media"]["valid"] is True
    assert manifest["thumbnail_key"] is None and manifest["thumbnail_error"] is None
    # the manifest is the last thing written for the file: no frame now means none ever
    assert keys(client) == {"clip.mp4", "clip.mp4.manifest.json"}


def test_a_recorded_duplicate_names_its_originals_poster_frame_and_makes_none(
    make_engine: Callable[..., Engine], client: Any
) -> None:
    """CHUNKD_DEDUP=record writes only a manifest for the second name: no object there, so no frame
    beside it either; the manifest names the original's."""
    require_ffmpeg()
    engine = make_engine(invalid_media="quarantine", dedup="record")
    first = make_mp4(engine.input_dir / "first.mp4", 2.0)
    assert run_job(engine, "first.mp4") is Outcome.COMPLETED
    shutil.copy2(first, engine.input_dir / "second.mp4")

    assert run_job(engine, "second.mp4") is Outcome.COMPLETED

    second = read_manifest(client, "second.mp4")
    assert second is not None and second["dedup_of"] == "first.mp4" and second["upload"] == "record"
    assert (second["thumbnail_key"], second["thumbnail_error"]) == ("first.mp4.thumb.jpg", None)
    assert keys(client) == {"first.mp4", "first.mp4.manifest.json", "first.mp4.thumb.jpg", "second.mp4.manifest.json"}


def fake_ffmpeg(folder: Path, script: str) -> Path:
    """A PATH where ffprobe is the real one and ffmpeg runs `script` (sh)."""
    folder.mkdir()
    real_ffprobe = shutil.which("ffprobe")
    assert real_ffprobe is not None
    (folder / "ffprobe").symlink_to(real_ffprobe)
    if script:
        path = folder / "ffmpeg"
        path.write_text("#!/bin/sh\n" + script + "\n")
        path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return folder


@pytest.mark.parametrize(
    ("script", "error"),
    [
        ("", "ffmpeg not installed"),
        ("echo 'Conversion failed!' >&2; exit 1", "ffmpeg failed: Conversion failed!"),
        ("exec /bin/sleep 30", "ffmpeg timed out after 0.5s"),
    ],
    ids=["missing", "non-zero-exit", "timeout"],
)
def test_a_frame_that_cannot_be_made_never_fails_the_upload(
    make_engine: Callable[..., Engine], client: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    script: str, error: str,
) -> None:
    require_ffmpeg()
    engine = make_engine(invalid_media="quarantine")
    engine.posters = PosterFrames(enabled=True, timeout=0.5)
    path = make_mp4(engine.input_dir / "clip.mp4", 2.0)
    monkeypatch.setenv("PATH", str(fake_ffmpeg(tmp_path / "bin", script)))

    assert run_job(engine, "clip.mp4") is Outcome.COMPLETED

    manifest = read_manifest(client, "clip.mp4")
    assert manifest is not None and manifest["media"]["valid"] is True
    assert manifest["thumbnail_key"] is None and manifest["thumbnail_error"] == error
    assert sha256_object(client, "clip.mp4") == sha256_file(path)
    assert keys(client) == {"clip.mp4", "clip.mp4.manifest.json"}


def test_a_crash_between_the_frame_and_the_manifest_ends_with_both(
    proxied: Proxied, chunkd_daemon: Callable[..., DaemonProcess], input_dir: Path, tmp_path: Path
) -> None:
    """The manifest's PUT refused until the daemon is SIGKILLed: the frame is in the bucket, the
    manifest is not. The next run finishes the file: frame (again) and the manifest naming it."""
    require_ffmpeg()
    manifest_put = on("PUT", f"/{BUCKET}/clip.mp4.manifest.json")
    rule = proxied.proxy.add(Fault.ERROR_500, manifest_put, times=1_000_000)
    daemon = chunkd_daemon(proxied, idle_seconds=1, invalid_media="quarantine")
    os.replace(make_mp4(tmp_path / "clip.mp4", 2.0, size="1280x720"), input_dir / "clip.mp4")
    client = proxied.client()
    wait_for(lambda: rule.fired > 0, timeout=60, what="the manifest PUT refused")
    assert "clip.mp4.thumb.jpg" in keys(client) and "clip.mp4.manifest.json" not in keys(client)
    daemon.kill()
    rule.times = rule.fired  # the server takes manifests again

    chunkd_daemon(proxied, idle_seconds=1, invalid_media="quarantine", log_name="daemon2.log")

    manifest = wait_for(lambda: read_manifest(client, "clip.mp4"), timeout=90, what="manifest after the restart")
    assert manifest["thumbnail_key"] == "clip.mp4.thumb.jpg"
    assert poster(client, "clip.mp4.thumb.jpg", tmp_path) == ("mjpeg", 640, 360, "image/jpeg")
    assert keys(client) == {"clip.mp4", "clip.mp4.manifest.json", "clip.mp4.thumb.jpg"}
