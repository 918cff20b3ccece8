"""links.txt batches end to end: a real `chunkd run`, a local HTTP server serving real MP4s made
with ffmpeg (Range, dropped connections, 429), and moto's S3 server."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from chunkd.model.states import UrlState
from chunkd.store import open_store
from tests.support.bucket import read_manifest, sha256_object
from tests.support.cli import run_chunkd
from tests.support.daemon import DaemonProcess, wait_for
from tests.support.media import make_mp4, require_ffmpeg
from tests.support.media_server import MediaServer
from tests.support.s3_servers import MotoServer


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def media(tmp_path: Path) -> Iterator[tuple[MediaServer, dict[str, bytes]]]:
    require_ffmpeg()
    files = {}
    for index, seconds in enumerate((1.0, 1.5, 2.0), start=1):
        files[f"/v/clip{index}.mp4"] = make_mp4(tmp_path / f"clip{index}.mp4", seconds, size="640x480").read_bytes()
    with MediaServer(files) as server:
        yield server, files


@pytest.fixture
def start_daemon(chunkd_daemon: Callable[..., DaemonProcess], moto: MotoServer) -> Callable[..., DaemonProcess]:
    return lambda **settings: chunkd_daemon(
        moto, **{"allow_private_urls": "true", "invalid_media": "quarantine", **settings}
    )


def objects(moto: MotoServer) -> set[str]:
    return {item["Key"] for item in moto.client().list_objects_v2(Bucket="chunkd").get("Contents", [])}


def videos(moto: MotoServer) -> set[str]:
    """The video objects: not their manifests, nor their poster frames."""
    return {key for key in objects(moto) if not key.endswith((".manifest.json", ".thumb.jpg"))}


def test_a_links_file_with_good_bad_and_duplicate_lines(
    start_daemon: Callable[..., DaemonProcess], moto: MotoServer, input_dir: Path,
    media: tuple[MediaServer, dict[str, bytes]],
) -> None:
    server, files = media
    base = server.url
    (input_dir / "links.txt").write_text(
        "\ufeff# my batch\n"
        f"{base}/v/clip1.mp4\n"
        f"{base}/v/clip2.mp4\n"
        "\n"
        f"{base}/v/clip3.mp4#t=10\n"
        f"{base.replace('http://', 'HTTP://')}/v/clip1.mp4#again\n"  # the same URL once normalized
        "file:///etc/passwd\n"
        "this is not a url\n"
        f"{base}/v/missing.mp4\n"
    )
    start_daemon()
    report_path = input_dir / "links.txt.report.json"
    wait_for(report_path.is_file, timeout=120, what="the links report")
    assert (input_dir / "links.txt.done").is_file() and not (input_dir / "links.txt").exists()
    report = {entry["line"]: entry for entry in json.loads(report_path.read_text())["lines"]}
    assert [report[n]["state"] for n in (2, 3, 5)] == ["COMPLETED"] * 3
    assert report[6]["state"] == "DUPLICATE" and report[6]["duplicate_of_line"] == 2
    assert report[7]["state"] == "REJECTED" and "scheme" in report[7]["error"]
    assert report[8]["state"] == "REJECTED"
    assert report[9]["state"] == "FAILED" and "404" in report[9]["error"]
    assert len(videos(moto)) == 3
    client = moto.client()
    for line, path in ((2, "/v/clip1.mp4"), (3, "/v/clip2.mp4"), (5, "/v/clip3.mp4")):
        key = report[line]["key"]
        assert sha256_object(client, key) == sha(files[path])
        manifest = read_manifest(client, key)
        assert manifest is not None and manifest["source"]["url"].endswith(path)
        assert manifest["source"]["extractor"] == "generic"
    fetched = [entry for entry in server.log if entry.method == "GET" and entry.status in (200, 206)]
    assert sorted({entry.path for entry in fetched}) == ["/v/clip1.mp4", "/v/clip2.mp4", "/v/clip3.mp4"]
    assert not (input_dir / ".staging").exists() or not any((input_dir / ".staging").iterdir())


def test_dropped_connection_resumes_with_range_and_a_second_drop_of_the_file_does_nothing(
    start_daemon: Callable[..., DaemonProcess], moto: MotoServer, input_dir: Path,
    media: tuple[MediaServer, dict[str, bytes]],
) -> None:
    server, files = media
    size = len(files["/v/clip3.mp4"])
    server.drop_after("/v/clip3.mp4", int(size * 0.4))
    (input_dir / "a.links.txt").write_text(f"{server.url}/v/clip3.mp4\n")
    start_daemon()
    wait_for((input_dir / "a.links.txt.report.json").is_file, timeout=120, what="the report")
    ranges = [entry.range for entry in server.log if entry.path == "/v/clip3.mp4" and entry.range]
    assert ranges and ranges[0].startswith("bytes=") and int(ranges[0][6:].split("-")[0]) > 0
    key = json.loads((input_dir / "a.links.txt.report.json").read_text())["lines"][0]["key"]
    assert sha256_object(moto.client(), key) == sha(files["/v/clip3.mp4"])

    moto.reset_counts()
    requests_before = len(server.log)
    staged = input_dir.parent / "again.links.txt"  # written whole, then moved in, as a user's `mv` does
    staged.write_text(f"{server.url}/v/clip3.mp4\n")
    os.replace(staged, input_dir / "again.links.txt")
    wait_for((input_dir / "again.links.txt.report.json").is_file, timeout=60, what="the second report")
    entry = json.loads((input_dir / "again.links.txt.report.json").read_text())["lines"][0]
    assert entry["state"] == "COMPLETED" and entry["key"] == key and entry.get("already_uploaded") is True
    assert len(server.log) == requests_before, "a completed URL must not be fetched again"
    counts = moto.counts()
    assert counts["UploadPart"] + counts["PutObject"] + counts["CreateMultipartUpload"] == 0


def test_429_with_retry_after_is_waited_out(
    start_daemon: Callable[..., DaemonProcess], moto: MotoServer, input_dir: Path,
    media: tuple[MediaServer, dict[str, bytes]],
) -> None:
    server, _ = media
    server.answer_429("/v/clip1.mp4", times=1, retry_after=2)
    (input_dir / "links.txt").write_text(f"{server.url}/v/clip1.mp4\n")
    start_daemon()
    wait_for((input_dir / "links.txt.report.json").is_file, timeout=120, what="the report")
    hits = [entry for entry in server.log if entry.path == "/v/clip1.mp4"]
    first_429 = next(i for i, entry in enumerate(hits) if entry.status == 429)
    gap = hits[first_429 + 1].time - hits[first_429].time
    assert gap >= 2.0, f"retried {gap:.2f}s after a 429 with Retry-After: 2"
    assert len(videos(moto)) == 1


def test_private_addresses_are_refused_unless_allowed(
    start_daemon: Callable[..., DaemonProcess], moto: MotoServer, input_dir: Path,
    media: tuple[MediaServer, dict[str, bytes]],
) -> None:
    server, _ = media
    (input_dir / "links.txt").write_text(f"{server.url}/v/clip1.mp4\nhttp://169.254.169.254/latest/meta-data/\n")
    daemon = start_daemon(allow_private_urls="false")
    wait_for((input_dir / "links.txt.report.json").is_file, timeout=60, what="the report")
    lines = json.loads((input_dir / "links.txt.report.json").read_text())["lines"]
    assert [entry["state"] for entry in lines] == ["REJECTED", "REJECTED"]
    assert "private" in lines[0]["error"] and "metadata" in lines[1]["error"]
    assert not server.log and not videos(moto)
    retried = run_chunkd("retry", "--failed", env=daemon.env, timeout=30)
    assert retried.returncode == 0 and "0 download(s)" in retried.stdout  # refused is never retried


def test_failed_url_comes_back_with_retry_failed_and_status_shows_downloads(
    start_daemon: Callable[..., DaemonProcess], moto: MotoServer, input_dir: Path,
    media: tuple[MediaServer, dict[str, bytes]],
) -> None:
    server, files = media
    (input_dir / "links.txt").write_text(f"{server.url}/v/late.mp4\n")
    daemon = start_daemon()
    wait_for((input_dir / "links.txt.report.json").is_file, timeout=60, what="the report")
    assert json.loads((input_dir / "links.txt.report.json").read_text())["lines"][0]["state"] == "FAILED"

    def chunkd(*args: str) -> subprocess.CompletedProcess[str]:
        return run_chunkd(*args, env=daemon.env, timeout=30)

    status = chunkd("status")
    assert "FAILED" in status.stdout and "/v/late.mp4" in status.stdout and "404" in status.stdout
    server.add("/v/late.mp4", files["/v/clip2.mp4"])  # the file is there now
    retried = chunkd("retry", "--failed")
    assert retried.returncode == 0 and "1 download(s)" in retried.stdout
    wait_for(lambda: len(videos(moto)) == 1, timeout=60, what="the retried download uploaded")
    status = chunkd("status")
    assert "COMPLETED" in status.stdout and "100.0%" in status.stdout


def test_kill_9_during_a_download_resumes_from_the_partial_file(
    start_daemon: Callable[..., DaemonProcess], moto: MotoServer, input_dir: Path,
    media: tuple[MediaServer, dict[str, bytes]],
) -> None:
    server, files = media
    path = "/v/clip3.mp4"
    size = len(files[path])
    server.pace(path, size / 6)  # about six seconds for the whole file
    (input_dir / "links.txt").write_text(f"{server.url}{path}\n")
    first = start_daemon()
    staging = input_dir / ".staging"

    def partial_bytes() -> int:
        return sum(p.stat().st_size for p in staging.glob("*.part")) if staging.is_dir() else 0

    wait_for(lambda: partial_bytes() > size * 0.3, timeout=60, what="a partial download on disk")
    first.kill()
    on_disk = partial_bytes()
    server.pace(path, None)
    start_daemon()
    wait_for((input_dir / "links.txt.report.json").is_file, timeout=120, what="the report")
    entry = json.loads((input_dir / "links.txt.report.json").read_text())["lines"][0]
    assert entry["state"] == "COMPLETED"
    assert sha256_object(moto.client(), entry["key"]) == sha(files[path])
    assert server.bytes_served(path) < 1.2 * size
    ranges = [req.range for req in server.requests_for(path, "GET") if req.range]
    assert ranges and int(ranges[-1][6:].split("-")[0]) >= on_disk * 0.9



def test_a_download_waits_for_a_free_worker_and_one_queued_at_stop_is_sent_on_the_next_start(
    start_daemon: Callable[..., DaemonProcess], moto: MotoServer, input_dir: Path, tmp_path: Path,
    media: tuple[MediaServer, dict[str, bytes]],
) -> None:
    """Downloads enter through the scheduler: with its one worker held by a file that keeps growing,
    the finished download waits its turn; a stop leaves it queued, and the next start sends it."""
    server, files = media
    state_url = f"sqlite:///{tmp_path / 'state.db'}"

    def url_state() -> UrlState | None:
        with contextlib.closing(open_store(state_url)) as store:
            urls = store.list_urls()
            return urls[0].state if urls else None

    writing = threading.Event()
    writing.set()

    def grow() -> None:
        with open(input_dir / "live.ts", "ab") as handle:
            while writing.is_set():
                handle.write(os.urandom(64 * 1024))
                handle.flush()
                time.sleep(0.2)  # well inside idle_seconds (1 s): the file never goes idle

    writer = threading.Thread(target=grow, daemon=True)
    writer.start()
    try:
        first = start_daemon(file_concurrency=1, part_concurrency=1, invalid_media="upload")  # one slot
        wait_for(lambda: any(line.get("relpath") == "live.ts" and line.get("event") == "discovered"
                             for line in first.log_lines()), timeout=30, what="the growing file on the only worker")
        (input_dir / "links.txt").write_text(f"{server.url}/v/clip1.mp4\n")
        wait_for(lambda: url_state() is UrlState.UPLOADING, timeout=60, what="the download handed to the scheduler")
        assert first.terminate() == 0
    finally:
        writing.clear()
        writer.join(5)

    with contextlib.closing(open_store(state_url)) as store:
        [url] = store.list_urls()
        assert url.state is UrlState.UPLOADING
        assert store.find_by_relpath(url.relpath) is None  # queued behind the growing file, never started
        assert store.find_by_relpath("live.ts") is not None

    start_daemon(file_concurrency=1, part_concurrency=1, invalid_media="upload")
    wait_for((input_dir / "links.txt.report.json").is_file, timeout=120, what="the report")
    entry = json.loads((input_dir / "links.txt.report.json").read_text())["lines"][0]
    assert entry["state"] == "COMPLETED"
    assert sha256_object(moto.client(), entry["key"]) == sha(files["/v/clip1.mp4"])


def test_a_download_cancelled_by_url_stops_and_is_not_uploaded(
    start_daemon: Callable[..., DaemonProcess], moto: MotoServer, input_dir: Path, tmp_path: Path,
    media: tuple[MediaServer, dict[str, bytes]],
) -> None:
    server, files = media
    size = len(files["/v/clip3.mp4"])
    server.pace("/v/clip3.mp4", size / 60)  # a minute for the whole file
    url = f"{server.url}/v/clip3.mp4"
    (input_dir / "links.txt").write_text(url + "\n")
    daemon = start_daemon(staging_dir=str(tmp_path / "staging"))

    def downloading() -> bool:
        store = open_store(daemon.env["CHUNKD_STATE_URL"])
        try:
            record = store.get_url(url)
        finally:
            store.close()
        return record is not None and record.state is UrlState.DOWNLOADING and record.bytes_done > 0

    wait_for(downloading, timeout=60, what="the download under way")
    cancelled = run_chunkd("cancel", url, env=daemon.env, timeout=30)
    assert cancelled.returncode == 0 and "-> FAILED (cancelled by operator)" in cancelled.stdout, cancelled.stderr
    wait_for((input_dir / "links.txt.report.json").is_file, timeout=30, what="the report")
    (line,) = json.loads((input_dir / "links.txt.report.json").read_text())["lines"]
    assert (line["state"], line["error"]) == ("FAILED", "cancelled by operator")
    assert not videos(moto) and not list((tmp_path / "staging").glob("clip3*"))
    assert server.bytes_served("/v/clip3.mp4") < size
