"""Media-aware finalize with real media from ffmpeg and real servers: recordings that patch their
header or rewrite themselves (faststart), quarantine of what is not media, content dedup."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.support.bucket import BUCKET, read_manifest, sha256_object
from tests.support.cli import run_chunkd
from tests.support.daemon import DaemonProcess, wait_for
from tests.support.files import sha256_file, write_random
from tests.support.media import (
    make_mp4,
    make_text_as_mp4,
    make_truncated_copy,
    require_ffmpeg,
)
from tests.support.s3_servers import MotoServer, make_client
from tests.support.sizes import MiB


@pytest.fixture
def run_daemon(chunkd_daemon: Callable[..., DaemonProcess]) -> Callable[..., DaemonProcess]:
    return lambda server, **settings: chunkd_daemon(server, **{"invalid_media": "quarantine", **settings})


def ffprobe_json(path: Path) -> dict[str, Any]:
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-show_format", "-show_streams", "-of", "json", str(path)],
        check=True, capture_output=True, timeout=30,
    )
    probed: dict[str, Any] = json.loads(out.stdout)
    return probed


def record(path: Path, seconds: float, *, faststart: bool) -> subprocess.Popen[bytes]:
    """ffmpeg recording in real time straight into the drop folder: a lossless, noisy 320x240 video
    (about 3 MB/s, so several 5 MiB parts go up while it is still being written)."""
    command = [
        "ffmpeg", "-v", "error", "-y", "-re", "-f", "lavfi", "-i", "testsrc=size=320x240:rate=25",
        "-vf", "noise=alls=40:allf=t", "-c:v", "libx264", "-preset", "ultrafast", "-qp", "0",
        "-pix_fmt", "yuv420p", "-flush_packets", "1", "-t", str(seconds),
    ]
    if faststart:
        command += ["-movflags", "+faststart"]
    return subprocess.Popen([*command, str(path)], stdin=subprocess.DEVNULL, stderr=subprocess.PIPE)


@pytest.mark.parametrize("faststart", [False, True], ids=["moov-at-end", "faststart"])
def test_ffmpeg_recording_into_the_folder_lands_byte_identical(
    server: Any, run_daemon: Callable[..., DaemonProcess], input_dir: Path, tmp_path: Path, faststart: bool
) -> None:
    require_ffmpeg()
    daemon = run_daemon(server, part_size="5MiB", idle_seconds=2)
    path = input_dir / "camera.mp4"
    recorder = record(path, 8, faststart=faststart)
    assert recorder.wait(timeout=60) == 0, recorder.stderr.read() if recorder.stderr else ""
    client = make_client(server.endpoint_url, server.access_key, server.secret_key)
    manifest = wait_for(lambda: read_manifest(client, "camera.mp4"), timeout=90, what="manifest")
    assert sha256_object(client, "camera.mp4") == sha256_file(path)
    downloaded = tmp_path / "downloaded.mp4"
    client.download_file(BUCKET, "camera.mp4", str(downloaded))
    probed = ffprobe_json(downloaded)
    assert abs(float(probed["format"]["duration"]) - 8.0) <= 0.1
    media = manifest["media"]
    assert media["valid"] is True
    assert abs(media["duration"] - 8.0) <= 0.1
    video = next(stream for stream in media["streams"] if stream["type"] == "video")
    assert (video["codec"], video["width"], video["height"]) == ("h264", 320, 240)
    assert manifest["size"] == path.stat().st_size and len(manifest["parts"]) >= 3
    # The recorder rewrote bytes that had already been sent (the mdat size field, or the whole
    # file for faststart): the finalizer must have noticed and sent those parts again.
    assert daemon.logged("parts changed on disk since they were sent")


def test_files_that_are_not_media_are_quarantined_and_the_rest_flows(
    server: Any, client: Any, run_daemon: Callable[..., DaemonProcess], input_dir: Path, tmp_path: Path
) -> None:
    require_ffmpeg()
    good = make_mp4(tmp_path / "good.mp4", 2.0)
    make_text_as_mp4(tmp_path / "x.mp4")
    (tmp_path / "y.mp4").write_bytes(b"")
    make_truncated_copy(good, tmp_path / "cut.mp4", 0.6)
    for name in ("x.mp4", "y.mp4", "cut.mp4", "good.mp4"):
        os.replace(tmp_path / name, input_dir / name)
    # Poster frames are tests/integration/test_poster_frames.py's (quarantined files get none there too).
    daemon = run_daemon(server, idle_seconds=1, thumbnail="false")
    manifest = wait_for(lambda: read_manifest(client, "good.mp4"), timeout=60, what="manifest of good.mp4")
    assert manifest["media"]["valid"] is True
    quarantine = input_dir / ".quarantine"
    for name in ("x.mp4", "y.mp4", "cut.mp4"):
        reason_file = quarantine / f"{name}.reason.json"
        wait_for(reason_file.is_file, timeout=30, what=f"{name} quarantined")
        reason = json.loads(reason_file.read_text())
        assert reason["relpath"] == name and reason["reason"].startswith("not readable as media:")
        assert len(reason["reason"]) > len("not readable as media: ")
        assert (quarantine / name).is_file() and not (input_dir / name).exists()
    keys = {item["Key"] for item in client.list_objects_v2(Bucket=BUCKET)["Contents"]}
    assert keys == {"good.mp4", "good.mp4.manifest.json"}
    if isinstance(server, MotoServer):  # only moto counts requests
        assert server.counts()["CreateMultipartUpload"] == 0 and server.counts()["UploadPart"] == 0
    status = run_chunkd("status", "--state", "quarantined", env=daemon.env, timeout=30)
    assert status.returncode == 0
    rows = status.stdout.splitlines()[1:]
    assert sorted(row.split()[0] for row in rows) == ["QUARANTINED"] * 3
    assert all(any(name in row and "not readable as media" in row for row in rows) for name in ("x.mp4", "y.mp4", "cut.mp4"))
    assert "good.mp4" not in status.stdout


def test_same_bytes_under_two_names_are_sent_once(
    server: Any, client: Any, run_daemon: Callable[..., DaemonProcess], input_dir: Path, tmp_path: Path
) -> None:
    """The second name is a server-side copy of the first object (its manifest says so on every
    server; moto's count shows nothing else was sent)."""
    source = write_random(tmp_path / "first.mp4", 12 * MiB)
    twin = tmp_path / "second.mp4"
    shutil.copy2(source, twin)  # same bytes, mtime kept: a finished copy, as `cp -p` leaves it
    run_daemon(server, part_size="5MiB", idle_seconds=1, invalid_media="upload")
    os.replace(source, input_dir / "first.mp4")
    first = wait_for(lambda: read_manifest(client, "first.mp4"), timeout=60, what="first manifest")
    if isinstance(server, MotoServer):
        sent_for_first = server.counts()["UploadPart"]
        server.reset_counts()
    os.replace(twin, input_dir / "second.mp4")
    second = wait_for(lambda: read_manifest(client, "second.mp4"), timeout=60, what="second manifest")
    if isinstance(server, MotoServer):  # only moto counts requests
        counts = server.counts()
        assert sent_for_first == 3
        assert counts["UploadPart"] == 0 and counts["CreateMultipartUpload"] == 0
        assert counts["PutObject"] == 1  # the manifest only
        assert counts["CopyObject"] == 1
    assert second["dedup_of"] == "first.mp4" and second["upload"] == "copy"
    assert second["sha256"] == first["sha256"] == sha256_file(input_dir / "second.mp4")
    assert sha256_object(client, "second.mp4") == first["sha256"]
