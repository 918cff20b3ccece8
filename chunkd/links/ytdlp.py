"""yt-dlp as a library, with three things done around it rather than by it.

Everything yt-dlp-specific the downloader needs lives here, so the downloader reads as retries,
slots and the disk, and a yt-dlp upgrade is checked against this one module. Every HTTP request
yt-dlp sends, its extractors' and its downloaders' alike, passes through one `Attempt`:

- HTTP 429 and 5xx while downloading are taken out of yt-dlp's retry loop (which asks again at
  once, ignoring Retry-After) and handed to the downloader's, which waits at least the server's
  Retry-After. yt-dlp's loop keeps what it is good at: reconnecting after a dropped connection,
  with Range. Other 4xx stay yt-dlp's (a vanished HLS fragment may be skipped, as yt-dlp does by
  default).
- The generic extractor learns that a URL is a direct media link from a GET whose body it never
  reads, yet the server sends it (up to socket buffers' worth). That first request is sent as a
  HEAD; only when the HEAD does not answer with an audio/video type is the GET sent after all.
- `max_filesize` and the free space are enforced here (the response's announced size, then bytes
  as they arrive): yt-dlp's own check skips the file without raising, which a caller cannot tell
  from success.

yt-dlp ships no type information, so its classes are `Any` to mypy and subclassing them needs a
`type: ignore[misc]`.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable
from typing import Any

import yt_dlp
from yt_dlp.networking import Request
from yt_dlp.networking.exceptions import HTTPError, TransportError
from yt_dlp.utils import DownloadCancelled

from chunkd.errors import DownloadError
from chunkd.links.failures import classify, no_room, too_large
from chunkd.observe.logs import redact

logger = logging.getLogger("chunkd.downloader")

_MEDIA_TYPE = re.compile(r"^\s*(?:video|audio)/(?![^;]*(?:mpegurl|f4m|dash))", re.IGNORECASE)
_CONTENT_RANGE_TOTAL = re.compile(r"/\s*(\d+)\s*$")

Progress = Callable[[int, int | None], None]


class Abort(DownloadCancelled):  # type: ignore[misc]
    """Leaves yt-dlp at once, past its retry loops and error reporting, carrying our error."""

    def __init__(self, error: DownloadError) -> None:
        super().__init__(error.reason)
        self.error = error


class Stopped(DownloadCancelled):  # type: ignore[misc]
    """The stop event was set: leave the `.part` where it is for the next run."""

    msg = "stopped"


class YtdlpLogger:
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


class Attempt:
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
                raise Abort(classify(err)) from err
            if err.status == 416:
                self._refused_range = request.headers.get("Range")
            raise
        self.check_size(_announced_size(response), response)
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
        self.check_size(_announced_size(response), response)
        response.close()  # no body; the extractor reads only `url` and `headers`, which stay readable
        return response

    def on_event(self, event: dict[str, Any]) -> None:
        """yt-dlp's progress hook: runs between blocks, so raising here stops the download.

        A block is about a second's worth at the current rate (yt-dlp sizes them so, up to 4 MiB),
        which is how long a stop can take; on a stalled connection, up to `socket_timeout`.
        """
        status = event.get("status")
        if status == "downloading" and self.stop.is_set():
            raise Stopped()  # not on "finished": the file is complete and renamed by then
        if status not in ("downloading", "finished"):
            return
        done = int(event.get("downloaded_bytes") or 0)
        total = event.get("total_bytes") or event.get("total_bytes_estimate")
        total = int(total) if total else None
        self.on_disk = max(self.on_disk, done)
        self.check_size(max(done, total or 0), None)
        if self.on_progress is not None:
            try:
                self.on_progress(done, total)
            except Exception:  # a progress callback must not end a download
                logger.exception("progress callback failed for %s", redact(self.url))

    def check_size(self, size: int | None, response: Any) -> None:
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
            raise Abort(error)


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


class AttemptYoutubeDL(yt_dlp.YoutubeDL):  # type: ignore[misc]
    """YoutubeDL whose every HTTP request, extractor's and downloader's alike, passes `Attempt`."""

    def __init__(self, params: dict[str, Any], attempt: Attempt) -> None:
        super().__init__(params)
        self.chunkd_attempt = attempt

    def urlopen(self, req: Any) -> Any:
        if isinstance(req, str):
            req = Request(req)
        if not isinstance(req, Request):
            return super().urlopen(req)
        return self.chunkd_attempt.urlopen(req, super().urlopen)
