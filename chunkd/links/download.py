"""Downloading the videos that links files name into the staging folder, with yt-dlp as a library.

One `Downloader` is shared by every download. It caps how many run at once (`concurrency`), how
often one host sees a download start (`per_host_requests` per `per_host_window` seconds, a
sliding window), and holds every download while the staging disk has less than `min_free_bytes`
free. Time, sleep and free space are injected so tests record waits instead of waiting.

Resuming is yt-dlp's own: it writes `<name_hint>.<ext>.part` and renames it when complete. With
`continuedl` it opens an existing `.part` for append and asks for `Range: bytes=<size of .part>-`,
both when its own retry loop reconnects after a dropped connection and when a later attempt (or a
later process, after a crash) starts over. A server that ignores Range answers 200 and yt-dlp
starts from byte 0 ("Unable to resume").

What is done around yt-dlp (Retry-After, the HEAD probe, the size limit) is in `ytdlp`; what a
failure means and when to try again is in `failures`; the per-host window is in `hostlimit`.
"""

from __future__ import annotations

import logging
import random
import re
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    stop_when_event_set,
    wait_random_exponential,
)

from chunkd.errors import DownloadError
from chunkd.links.failures import (
    classify,
    stop_when_told_to_wait_long,
    too_large,
    wait_retry_after,
)
from chunkd.links.hostlimit import HostRateLimiter
from chunkd.links.ytdlp import (
    Abort,
    Attempt,
    AttemptYoutubeDL,
    Progress,
    Stopped,
    YtdlpLogger,
)
from chunkd.observe.logs import redact

logger = logging.getLogger("chunkd.downloader")

POLL_SECONDS = 1.0  # how often a paused download looks at the disk, the stop event and a long wait
SOCKET_TIMEOUT = 30.0
INFO_FIELDS = ("url", "webpage_url", "extractor", "title", "uploader", "upload_date", "ext", "filesize")

FreeBytes = Callable[[Path], int]


@dataclass
class DownloadResult:
    path: Path  # the finished file; when `stop` ended the download, a path that does not exist
    info: dict[str, Any]  # INFO_FIELDS only; `url` is the URL asked for, not a (signed) media URL
    resumed_from: int  # bytes already on disk when the attempt that finished started


def disk_free_bytes(path: Path) -> int:
    return shutil.disk_usage(path).free


class Downloader:
    """Downloads one URL at a time per caller into `staging`; safe to share between threads."""

    def __init__(
        self,
        staging: Path,
        *,
        concurrency: int = 2,
        per_host_requests: int = 30,
        per_host_window: float = 60.0,
        proxy: str | None = None,
        max_filesize: int | None = None,
        min_free_bytes: int = 0,
        retries: int = 5,
        ratelimit: int | None = None,
        socket_timeout: float = SOCKET_TIMEOUT,
        backoff: float = 1.0,
        backoff_max: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        free_bytes: FreeBytes = disk_free_bytes,
    ) -> None:
        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, got {concurrency}")
        if retries < 0:
            raise ValueError(f"retries must not be negative, got {retries}")
        self.staging = Path(staging)
        self.proxy = proxy
        self.max_filesize = max_filesize
        self.min_free_bytes = min_free_bytes
        self.retries = retries
        self.ratelimit = ratelimit
        self.socket_timeout = socket_timeout
        self.backoff = backoff
        self.backoff_max = backoff_max
        self._sleep = sleep
        self._free_bytes = free_bytes
        self._slots = threading.BoundedSemaphore(concurrency)
        self._hosts = HostRateLimiter(per_host_requests, per_host_window, clock=clock)
        self._disk_lock = threading.Lock()
        self._disk_paused = False
        self._disk_waiters = 0  # downloads in _wait_for_disk right now, for the metrics

    def disk_space(self) -> tuple[int, int]:
        """(free, total) bytes of the staging filesystem."""
        self.staging.mkdir(parents=True, exist_ok=True)
        return self._free_bytes(self.staging), shutil.disk_usage(self.staging).total

    @property
    def waiting_for_disk(self) -> int:
        """Downloads the disk guard holds back right now (chunkd_downloads_waiting_for_disk)."""
        with self._disk_lock:
            return self._disk_waiters

    def download(
        self,
        url: str,
        *,
        name_hint: str,
        stop: threading.Event | None = None,
        on_progress: Progress | None = None,
    ) -> DownloadResult:
        """Download `url` to `staging/<name_hint>.<ext>`, resuming any `.part` left there.

        Retryable failures are retried `retries` times with jittered exponential backoff (at
        least Retry-After when the server sent one); then, or on a permanent failure, raises
        DownloadError. When `stop` is set, returns early with a `path` that does not exist.
        """
        _check_name_hint(name_hint)
        stop = stop or threading.Event()
        self.staging.mkdir(parents=True, exist_ok=True)
        retrying = Retrying(
            stop=stop_after_attempt(self.retries + 1) | stop_when_event_set(stop) | stop_when_told_to_wait_long(),
            wait=wait_retry_after(wait_random_exponential(multiplier=self.backoff, max=self.backoff_max)),
            # Not a full disk: trying again at once would fill it again with the same partial file.
            retry=retry_if_exception(lambda exc: isinstance(exc, DownloadError) and exc.retryable and not exc.disk_full),
            sleep=lambda seconds: self._pause(seconds, stop),
            before_sleep=lambda state: _log_retry(url, state, self.retries + 1),
            reraise=True,
        )
        try:
            return retrying(self._attempt, url, name_hint, stop, on_progress)
        except Stopped:
            return DownloadResult(self.staging / name_hint, {}, 0)
        except DownloadError as exc:
            if exc.retryable and stop.is_set():
                return DownloadResult(self.staging / name_hint, {}, 0)
            if not exc.retryable or exc.disk_full:
                # The same answer next time: the bytes are no use. Or the disk is full, and a
                # partial file left there would keep it full for every other download (and
                # for whatever else writes there: recordings).
                self.remove_partial(name_hint)
            raise

    # -- one attempt ---------------------------------------------------------------------------

    def _attempt(self, url: str, name_hint: str, stop: threading.Event, on_progress: Progress | None) -> DownloadResult:
        self._wait_for_disk(stop)
        with self._slot(urlsplit(url).hostname or "", stop):
            return self._run_ytdlp(url, name_hint, stop, on_progress)

    @contextmanager
    def _slot(self, host: str, stop: threading.Event) -> Iterator[None]:
        """A concurrency slot and a start for `host`; a saturated host gives its slot back while it waits."""
        while True:
            while not self._slots.acquire(timeout=POLL_SECONDS / 2):
                if stop.is_set():
                    raise Stopped()
            if stop.is_set():
                self._slots.release()
                raise Stopped()
            wait = self._hosts.try_acquire(host)
            if wait <= 0:
                break
            self._slots.release()
            logger.debug("host %s is at its request limit; waiting %.1fs", host, wait)
            self._pause(wait, stop)
        try:
            yield
        finally:
            self._slots.release()

    def _run_ytdlp(
        self, url: str, name_hint: str, stop: threading.Event, on_progress: Progress | None
    ) -> DownloadResult:
        attempt = Attempt(
            url, stop=stop, max_filesize=self.max_filesize, on_progress=on_progress,
            room=lambda: self._free_bytes(self.staging), on_disk=self._partial_size(name_hint),
        )
        try:
            with AttemptYoutubeDL(self._params(name_hint, attempt, stop), attempt) as ydl:
                info = ydl.extract_info(url, download=False)
                if info.get("_type") in ("playlist", "multi_video") or info.get("entries") is not None:
                    raise DownloadError("a playlist, not one video: list each video's URL instead", retryable=False)
                attempt.check_size(info.get("filesize") or info.get("filesize_approx"), None)
                planned = Path(ydl.prepare_filename(info))
                resumed_from = _size(planned) or _size(planned.with_name(planned.name + ".part"))
                attempt.downloading = True
                done = ydl.process_ie_result(info, download=True)
        except (Stopped, DownloadError):
            raise
        except Abort as exc:
            raise exc.error from exc
        except Exception as exc:  # whatever yt-dlp raised, classified
            raise classify(exc) from exc
        path = Path(done["requested_downloads"][0]["filepath"]) if done.get("requested_downloads") else planned
        if not path.is_file():
            raise DownloadError(f"yt-dlp finished without writing {path.name}", retryable=True)
        size = path.stat().st_size
        if self.max_filesize is not None and size > self.max_filesize:
            path.unlink(missing_ok=True)
            raise too_large(size, self.max_filesize)
        logger.info("downloaded %s (%d bytes, %d resumed)", redact(url), size, resumed_from, extra={"path": str(path)})
        return DownloadResult(path, _info_subset(url, done, path, size), resumed_from)

    def _params(self, name_hint: str, attempt: Attempt, stop: threading.Event) -> dict[str, Any]:
        def between_retries(n: int) -> None:
            """yt-dlp's own retries (a dropped connection, a 5xx): our sleep, stop and disk guard.
            Returns None so yt-dlp does not sleep again itself."""
            self._pause(random.uniform(0, min(self.backoff_max, self.backoff * 2**n)), stop)
            self._wait_for_disk(stop)
            if stop.is_set():
                raise Stopped()

        params: dict[str, Any] = {
            "outtmpl": {"default": name_hint.replace("%", "%%") + ".%(ext)s"},
            "paths": {"home": str(self.staging), "temp": str(self.staging)},
            "continuedl": True,  # append to an existing .part, asking for Range: bytes=<its size>-
            "nopart": False,
            "updatetime": False,  # the file's mtime is when it arrived, not the server's Last-Modified
            "retries": self.retries,
            "fragment_retries": self.retries,
            "retry_sleep_functions": {"http": between_retries, "fragment": between_retries},
            "socket_timeout": self.socket_timeout,
            "noplaylist": True,
            "extract_flat": "in_playlist",  # a playlist is refused, so its entries need not be resolved
            "quiet": True,
            "noprogress": True,
            "color": "no_color",
            "logger": YtdlpLogger(),
            "progress_hooks": [attempt.on_event],
        }
        if self.proxy:
            params["proxy"] = self.proxy
        if self.ratelimit:
            params["ratelimit"] = self.ratelimit
        return params

    # -- waiting -------------------------------------------------------------------------------

    def _pause(self, seconds: float, stop: threading.Event) -> None:
        """Sleep `seconds` with the injected sleep, a poll at a time, ending early on stop."""
        remaining = seconds
        while remaining > 0 and not stop.is_set():
            step = min(remaining, POLL_SECONDS)
            self._sleep(step)
            remaining -= step

    def _wait_for_disk(self, stop: threading.Event) -> None:
        """Hold while the staging disk has less than `min_free_bytes` free; log the pause and resume once."""
        if self.min_free_bytes <= 0:
            return
        free = self._free_bytes(self.staging)
        if free >= self.min_free_bytes:
            return
        with self._disk_lock:
            self._disk_waiters += 1
            if not self._disk_paused:
                self._disk_paused = True
                logger.warning(
                    "downloads paused: %d bytes free in %s, %d needed", free, self.staging, self.min_free_bytes
                )
        try:
            while free < self.min_free_bytes:
                if stop.is_set():
                    raise Stopped()
                self._sleep(POLL_SECONDS)
                free = self._free_bytes(self.staging)
        finally:
            with self._disk_lock:
                self._disk_waiters -= 1
        with self._disk_lock:
            if self._disk_paused:
                self._disk_paused = False
                logger.info("downloads resumed: %d bytes free in %s", free, self.staging)

    def _partials(self, name_hint: str) -> Iterator[Path]:
        pattern = re.compile(re.escape(name_hint) + r"\.[A-Za-z0-9]+\.(?:part|ytdl)$")
        try:
            entries = list(self.staging.iterdir())
        except FileNotFoundError:
            return
        yield from (entry for entry in entries if pattern.match(entry.name))

    def _partial_size(self, name_hint: str) -> int:
        """Bytes of this download already in staging (a `.part` a resume appends to)."""
        return max((_size(path) for path in self._partials(name_hint) if path.suffix == ".part"), default=0)

    def remove_partial(self, name_hint: str) -> None:
        for leftover in self._partials(name_hint):
            leftover.unlink(missing_ok=True)


def _check_name_hint(name_hint: str) -> None:
    if not name_hint or name_hint in (".", "..") or "/" in name_hint or "\\" in name_hint or "\0" in name_hint:
        raise ValueError(f"name_hint must be a plain file name, got {name_hint!r}")


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _info_subset(url: str, info: dict[str, Any], path: Path, size: int) -> dict[str, Any]:
    subset = {name: info.get(name) for name in INFO_FIELDS}
    subset.update(url=url, ext=path.suffix.lstrip(".") or info.get("ext"), filesize=size)
    return subset


def _log_retry(url: str, state: RetryCallState, attempts: int) -> None:
    failure = state.outcome.exception() if state.outcome is not None else None
    wait = state.next_action.sleep if state.next_action is not None else 0.0
    logger.warning(
        "download of %s failed (attempt %d of %d): %s; retrying in %.1fs",
        redact(url), state.attempt_number, attempts, failure, wait,
    )
