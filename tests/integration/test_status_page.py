"""The status page of a real `chunkd run`: /events streams what happens to dropped files, poster
frames come from the bucket through the daemon, and headless Chromium watches a recording go up.

One S3 server (moto) is enough: the page reads the daemon, never the bucket.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from chunkd.s3.devserver import free_port
from tests.support.browser import headless_chromium
from tests.support.bucket import BUCKET
from tests.support.daemon import DaemonProcess, wait_for
from tests.support.files import write_random
from tests.support.media import make_mp4, make_text_as_mp4, require_ffmpeg
from tests.support.s3_servers import MotoServer
from tests.support.sse import EventStream

TOKEN = "status-page-t0ken"
# Set to a path (docs/status-page.png) to save what the browser test saw: the README's picture.
SCREENSHOT_ENV = "CHUNKD_STATUS_PAGE_SCREENSHOT"


def get(url: str) -> tuple[int, dict[str, str], bytes]:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=10) as reply:
            return reply.status, dict(reply.headers), reply.read()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, dict(exc.headers), exc.read()


@pytest.fixture
def page_daemon(chunkd_daemon: Callable[..., DaemonProcess], moto: MotoServer) -> Callable[..., tuple[DaemonProcess, str]]:
    """Starts `chunkd run` on moto with the HTTP endpoint and a token; returns it and its base URL."""

    def start(**settings: Any) -> tuple[DaemonProcess, str]:
        port = free_port()
        daemon = chunkd_daemon(moto, http_addr=f"127.0.0.1:{port}", http_token=TOKEN, **settings)
        base = f"http://127.0.0.1:{port}"
        wait_for(lambda: _answers(f"{base}/healthz"), timeout=30, what="the HTTP endpoint")
        return daemon, base

    return start


def _answers(url: str) -> bool:
    try:
        return get(url)[0] == 200
    except OSError:
        return False


def test_events_stream_a_dropped_file_and_posters_come_through_the_daemon(
    page_daemon: Callable[..., tuple[DaemonProcess, str]], moto: MotoServer, input_dir: Path, tmp_path: Path
) -> None:
    daemon, base = page_daemon()
    clip_mp4 = make_mp4(tmp_path / "clip.mp4", 1.0)
    port = int(base.rsplit(":", 1)[1])
    for path in ("/", "/events", "/status", "/thumbnail/x"):
        assert get(base + path)[0] == 401, path
    assert get(f"{base}/?token={TOKEN}")[0] == 200
    stream = EventStream("127.0.0.1", port, f"/events?token={TOKEN}", timeout=60)
    try:
        assert stream.response.status == 200
        stream.next_frame()  # connected
        os.replace(clip_mp4, input_dir / "clip.mp4")
        write_random(input_dir / "other.mp4", 1000)
        events: dict[str, dict[str, Any]] = {}
        while len(events) < 2:
            frame = stream.next_event()
            data = json.loads(frame["data"])
            assert frame["event"] == data["event"] == "completed" and frame["id"]
            events[data["relpath"]] = data
        assert set(events) == {"clip.mp4", "other.mp4"}
        assert events["clip.mp4"]["state"] == "COMPLETED" and events["clip.mp4"]["thumbnail_key"] == "clip.mp4.thumb.jpg"
        assert "url" not in events["clip.mp4"]

        clip, other = events["clip.mp4"]["stream_id"], events["other.mp4"]["stream_id"]
        status, headers, body = get(f"{base}/thumbnail/{clip}?token={TOKEN}")
        poster = moto.client().get_object(Bucket=BUCKET, Key="clip.mp4.thumb.jpg")["Body"].read()
        assert (status, headers["Content-Type"], body) == (200, "image/jpeg", poster)  # the daemon's frame
        assert get(f"{base}/thumbnail/{clip}")[0] == 401
        assert get(f"{base}/thumbnail/{other}?token={TOKEN}")[0] == 404  # random bytes: no poster

        started = time.monotonic()
        assert daemon.terminate(timeout=30) == 0  # an open /events stream does not hold up the stop
        assert time.monotonic() - started < 20
        with pytest.raises((EOFError, OSError)):
            while True:
                stream.next_frame()
    finally:
        stream.close()


def record(path: Path, seconds: float) -> subprocess.Popen[bytes]:
    """ffmpeg recording in real time into the folder: a lossless, noisy 320x240 video (about
    3 MB/s), so 5 MiB parts go up while it grows."""
    command = [
        require_ffmpeg(), "-v", "error", "-y", "-re", "-f", "lavfi", "-i", "testsrc=size=320x240:rate=25",
        "-vf", "noise=alls=40:allf=t", "-c:v", "libx264", "-preset", "ultrafast", "-qp", "0",
        "-pix_fmt", "yuv420p", "-flush_packets", "1", "-t", str(seconds), str(path),
    ]
    return subprocess.Popen(command, stdin=subprocess.DEVNULL, stderr=subprocess.PIPE)


@pytest.fixture
def browser() -> Iterator[Any]:
    driver = headless_chromium(width=1200, height=700)
    yield driver
    driver.quit()


def rows(browser: Any) -> dict[str, dict[str, Any]]:
    """Each row of the page by file name: state, bytes done, and its poster's natural width."""
    found: dict[str, dict[str, Any]] = browser.execute_script("""
        const rows = {};
        document.querySelectorAll("#streams tr").forEach(function (tr) {
          const img = tr.querySelector("img.thumb");
          rows[tr.querySelector(".name").textContent] = {
            state: tr.dataset.state, bytes: Number(tr.querySelector(".pct").dataset.bytes),
            error: tr.querySelector(".error").textContent, eta: tr.querySelector(".eta").textContent,
            poster: img && img.complete ? img.naturalWidth : 0,
          };
        });
        return rows;
    """)
    return found


def _every_state_on_show(shown: dict[str, dict[str, Any]]) -> bool:
    """The README's picture: a completed file with its poster, a quarantined one, one going up."""
    intro, notes, recording = (shown.get(name) or {} for name in ("intro.mp4", "notes.mp4", "recording.mp4"))
    return (intro.get("state") == "COMPLETED" and intro.get("poster", 0) > 0 and notes.get("state") == "QUARANTINED"
            and recording.get("state") == "UPLOADING" and recording.get("bytes", 0) > 0)


def test_status_page_in_headless_chromium_follows_a_recording(
    page_daemon: Callable[..., tuple[DaemonProcess, str]], moto: MotoServer, input_dir: Path, tmp_path: Path,
    browser: Any,
) -> None:
    require_ffmpeg()
    intro = make_mp4(tmp_path / "intro.mp4", 2.0)
    _, base = page_daemon(part_size="5MiB", idle_seconds=2, invalid_media="quarantine")
    browser.get(f"{base}/?token={TOKEN}")
    wait_for(lambda: browser.execute_script("return document.getElementById('link').textContent") == "live",
             timeout=30, what="the page's /events stream to connect")
    os.replace(intro, input_dir / "intro.mp4")
    os.replace(make_text_as_mp4(tmp_path / "notes.mp4"), input_dir / "notes.mp4")

    recorder = record(input_dir / "recording.mp4", 12)
    seen: list[int] = []  # the recording's bytes done, as the page showed them while it was recorded
    said_recording = False  # the page told a growing file from one about to finish (no "ETA 0 s")
    screenshot = os.environ.get(SCREENSHOT_ENV)
    try:
        while recorder.poll() is None:
            shown = rows(browser)
            row = shown.get("recording.mp4")
            if row is not None and row["state"] == "UPLOADING" and (not seen or row["bytes"] != seen[-1]):
                seen.append(row["bytes"])
            if row is not None and row["eta"] == "recording":
                said_recording = True
            if screenshot and _every_state_on_show(shown):
                time.sleep(0.5)  # the progress bar's width slides over 0.4 s
                browser.save_screenshot(screenshot)
                screenshot = None
            time.sleep(0.2)
    finally:
        if recorder.poll() is None:
            recorder.kill()
    assert recorder.wait(timeout=30) == 0, recorder.stderr.read() if recorder.stderr else ""
    sent = [value for value in seen if value > 0]
    assert len(sent) >= 2 and sent[-1] > sent[0], f"the progress did not rise: {seen}"
    assert said_recording, "the growing file's row never said it was still being recorded"

    def settled() -> dict[str, dict[str, Any]] | None:
        shown = rows(browser)
        wanted = {"intro.mp4": "COMPLETED", "notes.mp4": "QUARANTINED", "recording.mp4": "COMPLETED"}
        return shown if {name: row["state"] for name, row in shown.items()} == wanted else None

    shown = wait_for(settled, timeout=90, what="the rows to turn completed and quarantined")
    assert shown["notes.mp4"]["error"].startswith("not readable as media")
    for name in ("intro.mp4", "recording.mp4"):
        wait_for(lambda name=name: rows(browser)[name]["poster"] > 0, timeout=60, what=f"{name}'s poster to load")
