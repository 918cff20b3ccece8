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

Three things are done around yt-dlp rather than by it:

- HTTP 429 and 5xx while downloading are taken out of yt-dlp's retry loop (which asks again at
  once, ignoring Retry-After) and retried here, after at least the server's Retry-After. yt-dlp's
  loop keeps what it is good at: reconnecting after a dropped connection, with Range. Other 4xx
  stay yt-dlp's (a vanished HLS fragment may be skipped, as yt-dlp does by default).
- The generic extractor learns that a URL is a direct media link from a GET whose body it never
  reads, yet the server sends it (up to socket buffers' worth). That first request is sent as a
  HEAD; only when the HEAD does not answer with an audio/video type is the GET sent after all.
- `max_filesize` is enforced here (the response's announced size, then bytes as they arrive):
  yt-dlp's own check skips the file without raising, which a caller cannot tell from success.
"""

from __future__ import annotations

import errno
import logging
import random
import re
import shutil
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yt_dlp
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_attempt,
    stop_when_event_set,
    wait_random_exponential,
)
from tenacity.stop import stop_base
from tenacity.wait import wait_base
from yt_dlp.networking import Request
from yt_dlp.networking.exceptions import HTTPError, TransportError
from yt_dlp.utils import ContentTooShortError, DownloadCancelled, ExtractorError

from chunkd.errors import DownloadError
from chunkd.observe.logs import redact

logger = logging.getLogger("chunkd.downloader")

POLL_SECONDS = 1.0  # how often a paused download looks at the disk, the stop event and a long wait
SOCKET_TIMEOUT = 30.0
MAX_RETRY_AFTER = 15 * 60.0  # longer than this, a slot is better given up than held
INFO_FIELDS = ("url", "webpage_url", "extractor", "title", "uploader", "upload_date", "ext", "filesize")
PERMANENT_STATUSES = frozenset({400, 401, 403, 404, 405, 410, 451})
_MEDIA_TYPE = re.compile(r"^\s*(?:video|audio)/(?![^;]*(?:mpegurl|f4m|dash))", re.IGNORECASE)
_CONTENT_RANGE_TOTAL = re.compile(r"/\s*(\d+)\s*$")

FreeBytes = Callable[[Path], int]
Progress = Callable[[int, int | None], None]


@dataclass
class DownloadResult:
    path: Path  # the finished file; when `stop` ended the download, a path that does not exist
    info: dict[str, Any]  # INFO_FIELDS only; `url` is the URL asked for, not a (signed) media URL
    resumed_from: int  # bytes already on disk when the attempt that finished started


def disk_free_bytes(path: Path) -> int:
    return shutil.disk_usage(path).free


# -- pure policy -----------------------------------------------------------------------------


class HostRateLimiter:
    """At most `limit` starts per `window` seconds for each host, over a sliding window."""

    def __init__(self, limit: int, window: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit}")
        self.limit = limit
        self.window = window
        self._clock = clock
        self._starts: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def try_acquire(self, host: str) -> float:
        """0.0 when a start was recorded for `host`; otherwise the seconds until one is free."""
        if self.window <= 0:
            return 0.0
        with self._lock:
            now = self._clock()
            starts = self._starts.setdefault(host.lower(), deque())
            while starts and starts[0] <= now - self.window:
                starts.popleft()
            if len(starts) < self.limit:
                starts.append(now)
                return 0.0
            return starts[0] + self.window - now


def parse_retry_after(value: str | None, *, now: Callable[[], float] = time.time) -> float | None:
    """Retry-After as seconds from now: delta-seconds or an HTTP date; None when absent or unreadable."""
    if value is None or not value.strip():
        return None
    text = value.strip()
    if text.isdigit():
        return float(text)
    try:
        return max(0.0, float(text))  # not RFC 9110, but some servers send "1.5"
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(text).timestamp() - now())
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


def status_error(status: int, reason: str, *, retry_after: float | None = None) -> DownloadError:
    """404, 403, 410 and the like will answer the same again; 429, 408 and 5xx may not."""
    retryable = status not in PERMANENT_STATUSES and (status >= 500 or status in (408, 425, 429) or status < 400)
    return DownloadError(reason, retryable=retryable, http_status=status, retry_after=retry_after)


def classify(exc: BaseException) -> DownloadError:
    """The DownloadError that says what to do about anything yt-dlp raised.

    yt-dlp wraps what went wrong (its DownloadError holds `exc_info`, an ExtractorError its
    `cause`), so the chain is walked until something recognisable turns up.
    """
    for cause in _causes(exc):
        if isinstance(cause, DownloadError):
            return cause
        if isinstance(cause, HTTPError):
            retry_after = parse_retry_after(cause.response.headers.get("Retry-After"))
            url = redact(str(getattr(cause.response, "url", "") or ""))
            return status_error(cause.status, f"HTTP {cause.status} {cause.reason} from {url}", retry_after=retry_after)
        if isinstance(cause, (TransportError, ContentTooShortError, ConnectionError, TimeoutError)):
            return DownloadError(f"connection failed: {_message(cause)}", retryable=True)
        if isinstance(cause, OSError) and cause.errno is not None:
            disk_full = cause.errno in (errno.ENOSPC, errno.EDQUOT)
            retryable = disk_full or cause.errno == errno.EIO  # space may be freed meanwhile
            return DownloadError(
                f"cannot write the download: {_message(cause)}", retryable=retryable, disk_full=disk_full
            )
    for cause in _causes(exc):
        if isinstance(cause, ExtractorError) and cause.expected:
            return DownloadError(_message(cause), retryable=False)  # unsupported URL, private or removed video
    return DownloadError(_message(exc), retryable=True)  # "Giving up after N retries", a broken extractor, …


def _causes(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        current = todo.pop(0)
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        exc_info = getattr(current, "exc_info", None)
        nested = getattr(current, "cause", None)
        todo += [
            exc_info[1] if isinstance(exc_info, tuple) and len(exc_info) > 1 else None,
            nested if isinstance(nested, BaseException) else None,
            current.__cause__,
            current.__context__,
        ]


def _message(exc: BaseException) -> str:
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc) or type(exc).__name__)
    return redact(text.removeprefix("ERROR: ").strip())


class wait_retry_after(wait_base):  # lower case, as tenacity names its wait strategies
    """The fallback wait, but never less than the Retry-After the failure carried."""

    def __init__(self, fallback: wait_base) -> None:
        self.fallback = fallback

    def __call__(self, retry_state: RetryCallState) -> float:
        wait = float(self.fallback(retry_state))
        outcome = retry_state.outcome
        failure = outcome.exception() if outcome is not None else None
        if isinstance(failure, DownloadError) and failure.retry_after is not None:
            wait = max(wait, failure.retry_after)
        return wait


class stop_when_told_to_wait_long(stop_base):  # lower case, as tenacity names its stop strategies
    """Give up when the server asks for more than `limit` seconds: better free the slot and let
    a later run (or `chunkd retry --failed`) try than hold a worker for that long."""

    def __init__(self, limit: float = MAX_RETRY_AFTER) -> None:
        self.limit = limit

    def __call__(self, retry_state: RetryCallState) -> bool:
        outcome = retry_state.outcome
        failure = outcome.exception() if outcome is not None else None
        return isinstance(failure, DownloadError) and (failure.retry_after or 0.0) > self.limit


# -- one attempt inside yt-dlp ------------------------------------------------------------------


class _Abort(DownloadCancelled):
    """Leaves yt-dlp at once, past its retry loops and error reporting, carrying our error."""

    def __init__(self, error: DownloadError) -> None:
        super().__init__(error.reason)
        self.error = error


class _Stopped(DownloadCancelled):
    """The stop event was set: leave the `.part` where it is for the next run."""

    msg = "stopped"


class _YtdlpLogger:
    """yt-dlp's messages into our logging, URLs redacted. It raises its errors after logging them,
    and the caller logs those, so they stay at DEBUG here."""

    def debug(self, message: str) -> None:
        level = logging.INFO if ("Got error" in message or "Unable to resume" in message) else logging.DEBUG
        logger.log(level, "yt-dlp: %s", redact(message))

    def info(self, message: str) -> None:
        logger.debug("yt-dlp: %s", redact(message))

    def warning(self, message: str) -> None:
        logger.warning("yt-dlp: %s", redact(message))

    def error(self, message: str) -> None:
        logger.debug("yt-dlp: %s", redact(message))


class _Attempt:
    """What one yt-dlp run needs from us: its requests (probe, throttling, size) and progress."""

    def __init__(
        self, url: str, *, stop: threading.Event, max_filesize: int | None, on_progress: Progress | None,
        room: Callable[[], int] | None = None, on_disk: int = 0,
    ) -> None:
        self.url = url
        self.stop = stop
        self.max_filesize = max_filesize
        self.on_progress = on_progress
        self.room = room  # free bytes where the download is written
        self.on_disk = on_disk  # bytes of this file already there (a .part being resumed, then progress)
        self.downloading = False  # False while extracting, True once yt-dlp fetches the media
        self._probe_urls = {url}
        self._refused_range: str | None = None

    def urlopen(self, request: Request, send: Callable[[Request], Any]) -> Any:
        if not self.downloading:
            if _plain_get(request) and request.url in self._probe_urls:
                self._probe_urls.discard(request.url)
                response = self._head_probe(request, send)
                if response is not None:
                    return response
            return send(request)
        refused, self._refused_range = self._refused_range, None
        if refused is not None and request.headers.get("Range") == refused:
            # yt-dlp answers a 416 (a .part as long as the file) by asking again "without the range
            # header" to compare lengths, but the Range it set went into a headers dict it shares
            # with that request, so the same 416 would come back and fail the download.
            del request.headers["Range"]
        try:
            response = send(request)
        except HTTPError as err:
            if err.status == 429 or err.status >= 500:  # ours to retry: backoff, Retry-After, attempts
                raise _Abort(classify(err)) from err
            if err.status == 416:
                self._refused_range = request.headers.get("Range")
            raise
        self._check_size(_announced_size(response), response)
        return response

    def _head_probe(self, request: Request, send: Callable[[Request], Any]) -> Any:
        """The HEAD response when it shows a direct media link (the generic extractor reads only its
        headers then); None to send the GET after all."""
        head = request.copy()
        head.method = "HEAD"
        try:
            response = send(head)
        except HTTPError as err:
            if err.status == 429 or (err.status >= 500 and err.status != 501):
                raise  # the GET would be refused too; Retry-After is about the host, not the method
            err.close()
            return None  # HEAD not allowed (405, 501), or signed for GET only (403): ask with GET
        except TransportError:
            return None
        if not _MEDIA_TYPE.match(response.headers.get("Content-Type", "")):
            response.close()
            return None
        self._probe_urls.add(response.url)  # a redirect makes the extractor start over at its target
        self._check_size(_announced_size(response), response)
        response.close()  # no body; the extractor reads only `url` and `headers`, which stay readable
        return response

    def on_event(self, event: dict[str, Any]) -> None:
        """yt-dlp's progress hook: runs between blocks, so raising here stops the download.

        A block is about a second's worth at the current rate (yt-dlp sizes them so, up to 4 MiB),
        which is how long a stop can take; on a stalled connection, up to `socket_timeout`.
        """
        status = event.get("status")
        if status == "downloading" and self.stop.is_set():
            raise _Stopped()  # not on "finished": the file is complete and renamed by then
        if status not in ("downloading", "finished"):
            return
        done = int(event.get("downloaded_bytes") or 0)
        total = event.get("total_bytes") or event.get("total_bytes_estimate")
        total = int(total) if total else None
        self.on_disk = max(self.on_disk, done)
        self._check_size(max(done, total or 0), None)
        if self.on_progress is not None:
            try:
                self.on_progress(done, total)
            except Exception:  # a progress callback must not end a download
                logger.exception("progress callback failed for %s", redact(self.url))

    def _check_size(self, size: int | None, response: Any) -> None:
        if size is None:
            return
        error = None
        if self.max_filesize is not None and size > self.max_filesize:
            error = too_large(size, self.max_filesize)
        elif self.room is not None and size - self.on_disk > 0:
            free = self.room()
            if size - self.on_disk > free:
                error = no_room(size, size - self.on_disk, free)
        if error is not None:
            if response is not None:
                response.close()
            raise _Abort(error)


def too_large(size: int, limit: int) -> DownloadError:
    return DownloadError(f"file is {size} bytes, larger than max_filesize ({limit} bytes)", retryable=False)


def no_room(size: int, needed: int, free: int) -> DownloadError:
    """Known before a byte is written: failing now beats filling the disk and failing then.
    Not retried on its own (the space is not coming back by itself); `chunkd retry` once it is."""
    return DownloadError(
        f"not enough space in the staging folder: the file is {size} bytes, {needed} still to download, "
        f"{free} bytes free", retryable=False, disk_full=True,
    )


def _plain_get(request: Request) -> bool:
    return request.method == "GET" and request.data is None and "Range" not in request.headers


def _announced_size(response: Any) -> int | None:
    """The whole file's size as a response announces it: Content-Range's total, else Content-Length."""
    match = _CONTENT_RANGE_TOTAL.search(response.headers.get("Content-Range") or "")
    if match:
        return int(match.group(1))
    if getattr(response, "status", 200) == 200 and (response.headers.get("Content-Length") or "").isdigit():
        return int(response.headers["Content-Length"])
    return None


class _YoutubeDL(yt_dlp.YoutubeDL):  # type: ignore[misc]
    """YoutubeDL whose every HTTP request, extractor's and downloader's alike, passes `_Attempt`."""

    def __init__(self, params: dict[str, Any], attempt: _Attempt) -> None:
        super().__init__(params)
        self.chunkd_attempt = attempt

    def urlopen(self, req: Any) -> Any:
        if isinstance(req, str):
            req = Request(req)
        if not isinstance(req, Request):
            return super().urlopen(req)
        return self.chunkd_attempt.urlopen(req, super().urlopen)


# -- the downloader ------------------------------------------------------------------------------


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
            retry=retry_if_exception(lambda exc: isinstance(exc, DownloadError) and exc.retryable),
            sleep=lambda seconds: self._pause(seconds, stop),
            before_sleep=lambda state: _log_retry(url, state, self.retries + 1),
            reraise=True,
        )
        try:
            return retrying(self._attempt, url, name_hint, stop, on_progress)
        except _Stopped:
            return DownloadResult(self.staging / name_hint, {}, 0)
        except DownloadError as exc:
            if exc.retryable and stop.is_set():
                return DownloadResult(self.staging / name_hint, {}, 0)
            if not exc.retryable or exc.disk_full:
                # The same answer next time: the bytes are no use. Or the disk is full, and a
                # partial file left there would keep it full for every other download.
                self._remove_partial(name_hint)
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
                    raise _Stopped()
            if stop.is_set():
                self._slots.release()
                raise _Stopped()
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
        attempt = _Attempt(
            url, stop=stop, max_filesize=self.max_filesize, on_progress=on_progress,
            room=lambda: self._free_bytes(self.staging), on_disk=self._partial_size(name_hint),
        )
        try:
            with _YoutubeDL(self._params(name_hint, attempt, stop), attempt) as ydl:
                info = ydl.extract_info(url, download=False)
                if info.get("_type") in ("playlist", "multi_video") or info.get("entries") is not None:
                    raise DownloadError("a playlist, not one video: list each video's URL instead", retryable=False)
                attempt._check_size(info.get("filesize") or info.get("filesize_approx"), None)
                planned = Path(ydl.prepare_filename(info))
                resumed_from = _size(planned) or _size(planned.with_name(planned.name + ".part"))
                attempt.downloading = True
                done = ydl.process_ie_result(info, download=True)
        except (_Stopped, DownloadError):
            raise
        except _Abort as exc:
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

    def _params(self, name_hint: str, attempt: _Attempt, stop: threading.Event) -> dict[str, Any]:
        def between_retries(n: int) -> None:
            """yt-dlp's own retries (a dropped connection, a 5xx): our sleep, stop and disk guard.
            Returns None so yt-dlp does not sleep again itself."""
            self._pause(random.uniform(0, min(self.backoff_max, self.backoff * 2**n)), stop)
            self._wait_for_disk(stop)
            if stop.is_set():
                raise _Stopped()

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
            "logger": _YtdlpLogger(),
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
            if not self._disk_paused:
                self._disk_paused = True
                logger.warning(
                    "downloads paused: %d bytes free in %s, %d needed", free, self.staging, self.min_free_bytes
                )
        while free < self.min_free_bytes:
            if stop.is_set():
                raise _Stopped()
            self._sleep(POLL_SECONDS)
            free = self._free_bytes(self.staging)
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

    def _remove_partial(self, name_hint: str) -> None:
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
