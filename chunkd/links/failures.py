"""What a failed download means, and when to try it again.

yt-dlp reports failures as its own exceptions wrapped in one another; the downloader, the links
batch and `chunkd retry` need one answer: retry or not, after how long, and is the disk full. That
answer is a `chunkd.errors.DownloadError`, made here and only here, together with the tenacity
policies that read it (Retry-After as the least wait; give up when the server asks for too long).
"""

from __future__ import annotations

import errno
import re
import time
from collections.abc import Callable, Iterator
from email.utils import parsedate_to_datetime

from tenacity import RetryCallState
from tenacity.stop import stop_base
from tenacity.wait import wait_base
from yt_dlp.networking.exceptions import HTTPError, TransportError
from yt_dlp.utils import ContentTooShortError, ExtractorError

from chunkd.errors import DownloadError
from chunkd.observe.logs import redact

MAX_RETRY_AFTER = 15 * 60.0  # longer than this, a slot is better given up than held
PERMANENT_STATUSES = frozenset({400, 401, 403, 404, 405, 410, 451})


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
            retryable = disk_full or cause.errno == errno.EIO  # space may be freed later (UrlFetcher waits)
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


def too_large(size: int, limit: int) -> DownloadError:
    return DownloadError(f"file is {size} bytes, larger than max_filesize ({limit} bytes)", retryable=False)


def no_room(size: int, needed: int, free: int) -> DownloadError:
    """Known before a byte is written: stopping now beats filling the disk and failing then. The
    URL waits for room for the whole file (its partial file is given up to free the disk)."""
    return DownloadError(
        f"no space left in the staging folder: the file is {size} bytes, {needed} still to download, "
        f"{free} bytes free", retryable=True, disk_full=True, room_needed=size,
    )


# -- when to try again -------------------------------------------------------------------------


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
