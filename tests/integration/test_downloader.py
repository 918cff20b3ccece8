"""The downloader against a real local HTTP server serving real MP4s made by ffmpeg: yt-dlp's generic
extractor, resume by Range after a dropped connection or a killed process, 429/Retry-After, permanent
errors, the size limit, the disk guard, the per-host limit and the concurrency cap.

Waits go through an injected sleep that records (and does not sleep) unless a test is about real
time. Each test's assertions on the wire come from the server's request log.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from chunkd.errors import DownloadError
from chunkd.links.download import Downloader
from tests.support.media import make_mp4, require_ffmpeg
from tests.support.media_server import LoggedRequest, MediaServer

CLIP = "/v/clip.mp4"
OTHER = "/v/other.mp4"


class Recorder:
    """An injected sleep (and clock) that records waits and moves fake time instead of sleeping."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    require_ffmpeg()
    folder = tmp_path_factory.mktemp("clips")
    return {
        CLIP: make_mp4(folder / "clip.mp4", 4.0, size="640x480").read_bytes(),
        OTHER: make_mp4(folder / "other.mp4", 2.0).read_bytes(),
    }


@pytest.fixture
def server(clips: dict[str, bytes]) -> Iterator[MediaServer]:
    with MediaServer(clips) as media:
        yield media


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def make_downloader(tmp_path: Path, recorder: Recorder) -> Callable[..., Downloader]:
    def make(**options: Any) -> Downloader:
        options = {"retries": 3, "backoff": 0.05, "clock": recorder.clock, "sleep": recorder.sleep, **options}
        return Downloader(tmp_path / "staging", **options)

    return make


def gets(server: MediaServer, path: str = CLIP) -> list[LoggedRequest]:
    return server.requests_for(path, "GET")


def range_start(entry: LoggedRequest) -> int:
    assert entry.range is not None and entry.range.startswith("bytes=") and entry.range.endswith("-"), entry.range
    return int(entry.range[len("bytes="):-1])


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# -- the plain case --------------------------------------------------------------------------------


def test_a_direct_mp4_link_downloads_byte_identical_with_its_info(
    server: MediaServer, clips: dict[str, bytes], make_downloader: Callable[..., Downloader], tmp_path: Path
) -> None:
    progress: list[tuple[int, int | None]] = []
    result = make_downloader().download(
        server.url_for(CLIP), name_hint="clip-1", on_progress=lambda done, total: progress.append((done, total))
    )

    size = len(clips[CLIP])
    assert result.path == tmp_path / "staging" / "clip-1.mp4"
    assert sha(result.path.read_bytes()) == sha(clips[CLIP])
    assert result.resumed_from == 0
    assert result.info == {
        "url": server.url_for(CLIP), "webpage_url": server.url_for(CLIP), "extractor": "generic", "title": "clip",
        "uploader": None, "upload_date": None, "ext": "mp4", "filesize": size,
    }
    assert progress[-1] == (size, size)
    assert [p.name for p in (tmp_path / "staging").iterdir()] == ["clip-1.mp4"]  # no .part left behind
    # The generic extractor's probe went out as a HEAD, so the file's bytes crossed the wire once.
    assert [(r.method, r.range, r.status) for r in server.log] == [("HEAD", None, 200), ("GET", None, 200)]
    assert server.bytes_served(CLIP) == size


def test_a_server_that_refuses_head_is_probed_with_get(
    server: MediaServer, clips: dict[str, bytes], make_downloader: Callable[..., Downloader]
) -> None:
    server.fail_status(CLIP, 405, method="HEAD")
    result = make_downloader().download(server.url_for(CLIP), name_hint="clip")
    assert result.path.read_bytes() == clips[CLIP] and result.info["extractor"] == "generic"
    assert [r.method for r in server.log] == ["HEAD", "GET", "GET"]


# -- resuming --------------------------------------------------------------------------------------


def test_a_connection_dropped_at_40_percent_is_resumed_with_a_range_request(
    server: MediaServer, clips: dict[str, bytes], make_downloader: Callable[..., Downloader]
) -> None:
    size = len(clips[CLIP])
    delivered = int(size * 0.4)
    server.drop_after(CLIP, delivered)
    on_disk: list[int] = []  # progress reports the bytes in the .part after every block written

    result = make_downloader().download(
        server.url_for(CLIP), name_hint="clip", on_progress=lambda done, total: on_disk.append(done)
    )

    assert sha(result.path.read_bytes()) == sha(clips[CLIP])
    first, second = gets(server)
    assert (first.range, first.bytes_sent) == (None, delivered)
    # yt-dlp's own retry reopened the .part for append and asked for the rest of the file. The
    # resume point is the .part's size, which can trail what the server sent by the block being
    # read when the connection died (yt-dlp's requests handler drops that block's partial read).
    resume_at = range_start(second)
    assert 0 < resume_at <= delivered
    assert resume_at in on_disk, "the Range must start where the .part ended"
    assert second.status == 206 and resume_at + second.bytes_sent == size
    assert result.resumed_from == 0  # resumed inside the attempt, not by a new one


def test_a_part_file_left_by_a_killed_process_is_resumed_not_restarted(
    server: MediaServer, clips: dict[str, bytes], make_downloader: Callable[..., Downloader], tmp_path: Path
) -> None:
    size = len(clips[CLIP])
    partial = int(size * 0.6)
    staging = tmp_path / "staging"
    staging.mkdir()
    (staging / "clip.mp4.part").write_bytes(clips[CLIP][:partial])  # what kill -9 mid-download leaves

    result = make_downloader().download(server.url_for(CLIP), name_hint="clip")

    assert sha(result.path.read_bytes()) == sha(clips[CLIP])
    assert result.resumed_from == partial
    assert [range_start(entry) for entry in gets(server)] == [partial]
    assert server.bytes_served(CLIP) < 1.2 * size
    assert not (staging / "clip.mp4.part").exists()


def test_a_server_without_range_support_gets_the_file_from_the_start(
    server: MediaServer, clips: dict[str, bytes], make_downloader: Callable[..., Downloader], tmp_path: Path
) -> None:
    staging = tmp_path / "staging"
    staging.mkdir()
    (staging / "clip.mp4.part").write_bytes(clips[CLIP][: len(clips[CLIP]) // 2])
    server.ignore_range(CLIP)

    result = make_downloader().download(server.url_for(CLIP), name_hint="clip")

    assert sha(result.path.read_bytes()) == sha(clips[CLIP]), "a 200 to a Range request must not be appended"
    assert [(entry.range is not None, entry.status) for entry in gets(server)] == [(True, 200)]


def test_a_complete_part_file_is_taken_as_downloaded(
    server: MediaServer, clips: dict[str, bytes], make_downloader: Callable[..., Downloader], tmp_path: Path
) -> None:
    staging = tmp_path / "staging"
    staging.mkdir()
    (staging / "clip.mp4.part").write_bytes(clips[CLIP])  # killed after the last byte, before the rename

    result = make_downloader().download(server.url_for(CLIP), name_hint="clip")

    assert result.path.read_bytes() == clips[CLIP] and result.resumed_from == len(clips[CLIP])
    # Range past the end, then the length check yt-dlp meant to make (see `_Attempt.urlopen`).
    assert [(entry.range is not None, entry.status) for entry in gets(server)] == [(True, 416), (False, 200)]


def test_stop_mid_download_keeps_the_part_file_and_the_next_download_resumes_it(
    server: MediaServer, clips: dict[str, bytes], make_downloader: Callable[..., Downloader], tmp_path: Path
) -> None:
    size = len(clips[CLIP])
    server.pace(CLIP, size / 1.5)  # the whole file would take 1.5 s
    stop = threading.Event()

    def progress(done: int, total: int | None) -> None:
        if done > size * 0.3:
            stop.set()

    downloader = make_downloader()
    stopped = downloader.download(server.url_for(CLIP), name_hint="clip", stop=stop, on_progress=progress)
    part = tmp_path / "staging" / "clip.mp4.part"
    assert not stopped.path.exists()
    kept = part.stat().st_size
    assert size * 0.3 < kept < size

    server.pace(CLIP, None)
    result = downloader.download(server.url_for(CLIP), name_hint="clip")
    assert sha(result.path.read_bytes()) == sha(clips[CLIP])
    assert result.resumed_from == kept
    assert range_start(gets(server)[-1]) == kept


# -- throttling and failures -----------------------------------------------------------------------


def test_429_with_retry_after_is_waited_out_on_the_real_clock(
    server: MediaServer, clips: dict[str, bytes], tmp_path: Path
) -> None:
    server.answer_429(CLIP, times=1, retry_after=2)
    downloader = Downloader(tmp_path / "staging", retries=2, backoff=0.05)  # real clock, real sleep

    result = downloader.download(server.url_for(CLIP), name_hint="clip")

    assert result.path.read_bytes() == clips[CLIP]
    log = server.log
    refused = next(i for i, entry in enumerate(log) if entry.status == 429)
    gap = log[refused + 1].time - log[refused].time
    assert gap >= 2.0, f"asked again {gap:.2f}s after a 429 with Retry-After: 2"
    assert sum(entry.status == 429 for entry in log) == 1


@pytest.mark.parametrize("status", [429, 503])
def test_throttling_while_downloading_leaves_yt_dlps_retry_loop_and_honours_retry_after(
    server: MediaServer, clips: dict[str, bytes], make_downloader: Callable[..., Downloader], recorder: Recorder,
    status: int,
) -> None:
    server.fail_status(CLIP, status, times=1, retry_after=3, method="GET")  # the probe (HEAD) passes

    result = make_downloader().download(server.url_for(CLIP), name_hint="clip")

    assert result.path.read_bytes() == clips[CLIP]
    assert [entry.status for entry in gets(server)] == [status, 200]
    assert sum(recorder.sleeps) >= 3.0


@pytest.mark.parametrize("method", [None, "GET"], ids=["probe-and-download", "download-only"])
def test_server_errors_are_retried_with_backoff(
    server: MediaServer, clips: dict[str, bytes], make_downloader: Callable[..., Downloader], recorder: Recorder,
    method: str | None,
) -> None:
    server.fail_status(CLIP, 500, times=2, method=method)
    result = make_downloader().download(server.url_for(CLIP), name_hint="clip")
    assert result.path.read_bytes() == clips[CLIP]
    assert sum(entry.status == 500 for entry in server.log) == 2 and gets(server)[-1].status == 200
    assert len(recorder.sleeps) >= 2, "retries back off through the injected sleep"


@pytest.mark.parametrize("method", [None, "GET"], ids=["probe-and-download", "download-only"])
def test_a_server_error_that_persists_fails_retryable_after_the_attempts(
    server: MediaServer, make_downloader: Callable[..., Downloader], method: str | None
) -> None:
    server.fail_status(CLIP, 502, method=method)
    with pytest.raises(DownloadError) as caught:
        make_downloader(retries=2).download(server.url_for(CLIP), name_hint="clip")
    assert (caught.value.retryable, caught.value.http_status) == (True, 502)
    # One refused request per attempt (the first and two retries): yt-dlp's own retries stay out of it.
    assert sum(entry.status == 502 for entry in server.log) == 3


def test_a_page_without_video_is_refused_as_unsupported(
    server: MediaServer, make_downloader: Callable[..., Downloader], recorder: Recorder
) -> None:
    server.add("/about.html", b"<html><head><title>About</title></head><body>No video here.</body></html>")
    with pytest.raises(DownloadError, match="Unsupported URL") as caught:
        make_downloader().download(server.url_for("/about.html"), name_hint="about")
    assert caught.value.retryable is False and recorder.sleeps == []
    assert [entry.method for entry in server.log] == ["HEAD", "GET"]  # not media: the extractor reads the page


@pytest.mark.parametrize("status", [404, 403, 410])
def test_a_missing_or_forbidden_file_fails_at_once_and_is_not_retried(
    server: MediaServer, make_downloader: Callable[..., Downloader], recorder: Recorder, tmp_path: Path, status: int
) -> None:
    server.fail_status(CLIP, status)
    with pytest.raises(DownloadError) as caught:
        make_downloader().download(server.url_for(CLIP), name_hint="clip")
    assert (caught.value.retryable, caught.value.http_status) == (False, status)
    assert len(gets(server)) == 1 and recorder.sleeps == []
    assert not any((tmp_path / "staging").iterdir())


def test_a_file_over_max_filesize_is_refused_before_its_body_is_fetched(
    server: MediaServer, clips: dict[str, bytes], make_downloader: Callable[..., Downloader], tmp_path: Path
) -> None:
    size = len(clips[CLIP])
    with pytest.raises(DownloadError, match="max_filesize") as caught:
        make_downloader(max_filesize=size - 1).download(server.url_for(CLIP), name_hint="clip")
    assert caught.value.retryable is False
    assert gets(server) == [] and not any((tmp_path / "staging").iterdir())

    assert make_downloader(max_filesize=size).download(server.url_for(CLIP), name_hint="clip").info["filesize"] == size


def test_max_filesize_holds_when_only_a_get_reveals_the_size(
    server: MediaServer, clips: dict[str, bytes], make_downloader: Callable[..., Downloader], tmp_path: Path
) -> None:
    server.fail_status(CLIP, 405, method="HEAD")
    with pytest.raises(DownloadError, match="max_filesize"):
        make_downloader(max_filesize=len(clips[CLIP]) // 2).download(server.url_for(CLIP), name_hint="clip")
    assert not any((tmp_path / "staging").iterdir())


def test_credentials_in_the_url_never_reach_the_log_or_the_error(
    server: MediaServer, make_downloader: Callable[..., Downloader], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="chunkd.downloader")
    server.fail_status(CLIP, 404)
    url = f"http://bob:hunter2@127.0.0.1:{server.port}{CLIP}?token=abc123"
    with pytest.raises(DownloadError) as caught:
        make_downloader().download(url, name_hint="clip")
    assert caplog.records
    for text in (caplog.text, str(caught.value)):
        assert "hunter2" not in text and "abc123" not in text


def test_the_proxy_carries_every_request(
    server: MediaServer, clips: dict[str, bytes], make_downloader: Callable[..., Downloader]
) -> None:
    result = make_downloader(proxy=server.url).download("http://video.invalid/v/clip.mp4", name_hint="clip")
    assert result.path.read_bytes() == clips[CLIP]
    assert [entry.method for entry in server.log] == ["HEAD", "GET"]


def test_ratelimit_slows_the_download(
    server: MediaServer, clips: dict[str, bytes], make_downloader: Callable[..., Downloader]
) -> None:
    started = time.monotonic()
    make_downloader(ratelimit=len(clips[OTHER]) * 2).download(server.url_for(OTHER), name_hint="other")
    assert time.monotonic() - started >= 0.4  # about half a second at that rate


# -- limits --------------------------------------------------------------------------------------


def test_downloads_wait_while_the_disk_is_short_and_go_on_by_themselves(
    server: MediaServer, clips: dict[str, bytes], make_downloader: Callable[..., Downloader], recorder: Recorder,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="chunkd.downloader")
    readings = iter([10, 10, 10, 10])

    def free_bytes(path: Path) -> int:
        low = next(readings, None)
        if low is not None:
            assert server.log == [], "nothing may be fetched while the disk is short"
            return low
        return 10**12

    result = make_downloader(min_free_bytes=1_000_000, free_bytes=free_bytes).download(
        server.url_for(CLIP), name_hint="clip"
    )

    assert result.path.read_bytes() == clips[CLIP]
    assert recorder.sleeps == [1.0, 1.0, 1.0, 1.0]
    messages = [record.getMessage() for record in caplog.records]
    assert sum("downloads paused" in m for m in messages) == 1
    assert sum("downloads resumed" in m for m in messages) == 1


def test_stop_ends_a_wait_for_disk_space(server: MediaServer, make_downloader: Callable[..., Downloader]) -> None:
    stop = threading.Event()
    readings: list[int] = []

    def free_bytes(path: Path) -> int:
        readings.append(10)
        if len(readings) == 3:
            stop.set()  # shutdown arrives while the download is paused
        return 10

    result = make_downloader(min_free_bytes=1_000_000, free_bytes=free_bytes).download(
        server.url_for(CLIP), name_hint="clip", stop=stop
    )
    assert not result.path.exists() and server.log == [] and len(readings) == 3


def test_a_host_at_its_request_limit_makes_the_next_download_wait(
    server: MediaServer, make_downloader: Callable[..., Downloader], recorder: Recorder
) -> None:
    downloader = make_downloader(per_host_requests=1, per_host_window=30.0)
    downloader.download(server.url_for(CLIP), name_hint="clip")
    assert recorder.sleeps == []
    downloader.download(server.url_for(OTHER), name_hint="other")
    assert sum(recorder.sleeps) == pytest.approx(30.0)
    assert gets(server, OTHER)[0].time > gets(server, CLIP)[0].time


def test_concurrency_one_runs_downloads_one_after_another(
    server: MediaServer, clips: dict[str, bytes], make_downloader: Callable[..., Downloader]
) -> None:
    for path in (CLIP, OTHER):
        server.pace(path, len(clips[path]) / 0.5)  # half a second each
    downloader = make_downloader(concurrency=1)
    seen: dict[str, list[float]] = {CLIP: [], OTHER: []}

    def fetch(path: str) -> None:
        downloader.download(
            server.url_for(path), name_hint=path.rsplit("/", 1)[-1].split(".")[0],
            on_progress=lambda done, total: seen[path].append(time.monotonic()),
        )

    threads = [threading.Thread(target=fetch, args=(path,)) for path in (CLIP, OTHER)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    first, second = sorted(seen.values(), key=min)
    assert max(first) <= min(second), "the second download began while the first was still running"
