"""The downloader's pure parts: the per-host limiter on a fake clock, Retry-After, and how yt-dlp's
failures are classified. Real downloads are in tests/integration/test_downloader.py."""

from __future__ import annotations

import errno
import io
import logging
import threading
from email.utils import formatdate
from pathlib import Path

import pytest
from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_fixed
from yt_dlp.networking import Response
from yt_dlp.networking.exceptions import HTTPError, IncompleteRead, TransportError
from yt_dlp.utils import DownloadError as YtdlpDownloadError
from yt_dlp.utils import ExtractorError, UnsupportedError

from chunkd.errors import DownloadError
from chunkd.links.download import Downloader
from chunkd.links.failures import (
    classify,
    parse_retry_after,
    status_error,
    stop_when_told_to_wait_long,
    wait_retry_after,
)
from chunkd.links.hostlimit import HostRateLimiter
from chunkd.links.ytdlp import YtdlpLogger


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


# -- per-host rate limit ---------------------------------------------------------------------------


def test_a_host_gets_its_quota_then_waits_until_the_oldest_start_leaves_the_window() -> None:
    clock = FakeClock()
    limiter = HostRateLimiter(3, 60.0, clock=clock)
    assert [limiter.try_acquire("cdn.example") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.try_acquire("cdn.example") == pytest.approx(60.0)
    clock.now += 20
    assert limiter.try_acquire("cdn.example") == pytest.approx(40.0)  # a refused try is not a start
    clock.now += 40
    assert limiter.try_acquire("cdn.example") == 0.0


def test_the_window_slides_rather_than_resetting() -> None:
    clock = FakeClock()
    limiter = HostRateLimiter(2, 10.0, clock=clock)
    assert limiter.try_acquire("h") == 0.0  # t=0
    clock.now += 6
    assert limiter.try_acquire("h") == 0.0  # t=6
    clock.now += 4
    assert limiter.try_acquire("h") == 0.0  # t=10: the t=0 start has just left the window
    assert limiter.try_acquire("h") == pytest.approx(6.0)  # the t=6 start leaves at t=16


def test_hosts_are_limited_separately_and_case_insensitively() -> None:
    limiter = HostRateLimiter(1, 60.0, clock=FakeClock())
    assert limiter.try_acquire("A.example") == 0.0
    assert limiter.try_acquire("a.example") > 0
    assert limiter.try_acquire("b.example") == 0.0


def test_a_zero_window_means_no_limit() -> None:
    limiter = HostRateLimiter(1, 0.0, clock=FakeClock())
    assert all(limiter.try_acquire("h") == 0.0 for _ in range(100))


def test_the_limiter_is_safe_under_threads() -> None:
    limiter = HostRateLimiter(50, 60.0, clock=FakeClock())
    granted: list[float] = []
    def take_twenty() -> None:
        granted.extend(limiter.try_acquire("h") for _ in range(20))

    threads = [threading.Thread(target=take_twenty) for _ in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert granted.count(0.0) == 50


# -- Retry-After and the retry policy --------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"), [("2", 2.0), (" 120 ", 120.0), ("1.5", 1.5), ("soon", None), ("", None), (None, None)]
)
def test_retry_after_in_seconds(value: str | None, expected: float | None) -> None:
    assert parse_retry_after(value) == expected


def test_retry_after_as_an_http_date() -> None:
    assert parse_retry_after(formatdate(1_000_030, usegmt=True), now=lambda: 1_000_000.0) == pytest.approx(30.0)
    assert parse_retry_after(formatdate(999_000, usegmt=True), now=lambda: 1_000_000.0) == 0.0


def test_the_wait_is_never_shorter_than_retry_after() -> None:
    clock = FakeClock()
    failures = iter([DownloadError("slow down", retryable=True, http_status=429, retry_after=7.0), None])

    def attempt() -> str:
        failure = next(failures)
        if failure:
            raise failure
        return "done"

    retrying = Retrying(
        wait=wait_retry_after(wait_fixed(0.5)), sleep=clock.sleep, retry=retry_if_exception_type(DownloadError),
        stop=stop_after_attempt(3), reraise=True,
    )
    assert retrying(attempt) == "done"
    assert clock.sleeps == [7.0]


def test_a_retry_after_longer_than_the_limit_gives_up_at_once() -> None:
    calls = []

    def attempt() -> None:
        calls.append(1)
        raise DownloadError("come back tomorrow", retryable=True, http_status=503, retry_after=86_400.0)

    retrying = Retrying(
        stop=stop_after_attempt(5) | stop_when_told_to_wait_long(900.0), sleep=lambda s: None,
        retry=retry_if_exception_type(DownloadError), reraise=True,
    )
    with pytest.raises(DownloadError):
        retrying(attempt)
    assert len(calls) == 1


# -- classification ------------------------------------------------------------------------------


def http_error(status: int, headers: dict[str, str] | None = None, url: str = "http://cdn.example/v.mp4") -> HTTPError:
    return HTTPError(Response(io.BytesIO(b""), url, headers or {}, status=status))


def as_ytdlp_raises_it(cause: Exception) -> YtdlpDownloadError:
    """How YoutubeDL.trouble wraps a failure: its DownloadError carries the exc_info."""
    return YtdlpDownloadError(f"ERROR: {cause}", (type(cause), cause, None))


@pytest.mark.parametrize("status", [400, 401, 403, 404, 410, 451])
def test_statuses_that_will_answer_the_same_again_are_permanent(status: int) -> None:
    assert status_error(status, "x").retryable is False


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503, 504])
def test_throttling_timeouts_and_server_errors_are_retryable(status: int) -> None:
    assert status_error(status, "x").retryable is True


def test_an_http_error_inside_an_extractor_error_keeps_status_and_retry_after() -> None:
    wrapped = ExtractorError("Unable to download webpage", cause=http_error(429, {"Retry-After": "3"}))
    error = classify(as_ytdlp_raises_it(wrapped))
    assert (error.retryable, error.http_status, error.retry_after) == (True, 429, 3.0)


def test_a_404_from_the_downloader_is_permanent() -> None:
    error = classify(as_ytdlp_raises_it(http_error(404)))
    assert (error.retryable, error.http_status) == (False, 404)


@pytest.mark.parametrize(
    "cause", [IncompleteRead(100, 400), TransportError("connection reset"), ConnectionResetError()]
)
def test_connection_failures_are_retryable(cause: Exception) -> None:
    error = classify(as_ytdlp_raises_it(cause))
    assert error.retryable is True and error.http_status is None


def test_an_unsupported_url_is_permanent() -> None:
    assert classify(as_ytdlp_raises_it(UnsupportedError("http://example.com/page"))).retryable is False


def test_a_full_disk_is_retryable_and_a_permission_problem_is_not() -> None:
    assert classify(as_ytdlp_raises_it(OSError(errno.ENOSPC, "No space left on device"))).retryable is True
    assert classify(as_ytdlp_raises_it(OSError(errno.EACCES, "Permission denied"))).retryable is False


def test_a_failure_without_a_recognisable_cause_is_retried() -> None:
    error = classify(YtdlpDownloadError("ERROR: Got error: timed out. Giving up after 5 retries"))
    assert error.retryable is True and error.reason == "Got error: timed out. Giving up after 5 retries"


def test_error_reasons_carry_no_credentials() -> None:
    signed = "https://user:hunter2@cdn.example/v.mp4?token=abc123"
    error = classify(as_ytdlp_raises_it(http_error(403, url=signed)))
    assert "hunter2" not in str(error) and "abc123" not in str(error)


# -- small contracts -------------------------------------------------------------------------------


def test_yt_dlp_messages_are_logged_without_credentials(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="chunkd.downloader")
    adapter = YtdlpLogger()
    adapter.debug("[generic] Extracting URL: https://bob:hunter2@cdn.example/v.mp4?signature=abc123")
    adapter.warning("[download] Got error from https://cdn.example/v.mp4?token=abc123")
    assert caplog.records and "hunter2" not in caplog.text and "abc123" not in caplog.text


@pytest.mark.parametrize("hint", ["", "..", "a/b", "a\\b"])
def test_name_hint_must_be_a_plain_file_name(tmp_path: Path, hint: str) -> None:
    with pytest.raises(ValueError, match="name_hint"):
        Downloader(tmp_path).download("http://cdn.example/v.mp4", name_hint=hint)


def test_a_download_asked_to_stop_before_it_starts_returns_without_a_file(tmp_path: Path) -> None:
    stop = threading.Event()
    stop.set()
    result = Downloader(tmp_path / "staging", sleep=lambda s: pytest.fail("no waiting when stopped")).download(
        "http://192.0.2.1/v.mp4", name_hint="v", stop=stop
    )
    assert not result.path.exists() and result.resumed_from == 0

