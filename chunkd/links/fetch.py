"""One URL record's download into the staging folder, with its record in the store kept up to
date on the way: DOWNLOADING with progress, then DOWNLOADED with the origin the upload carries,
or FAILED with the reason. An operator's `chunkd cancel URL` (the record FAILED in the store) is
seen at the next progress write: the download stops and its partial file is deleted.

A download that runs out of staging space gives its partial file up and goes back to PENDING
with the reason ("no space left …") and the room it needs: the periodic pass offers it again,
and it starts once that much is free. On a recording box space comes back as uploads finish; a
batch should not need an operator for that. Only a file bigger than the whole filesystem fails."""

from __future__ import annotations

import logging
import threading
import time
from contextlib import suppress
from pathlib import Path, PurePosixPath

from chunkd.errors import DownloadError
from chunkd.links.download import Downloader
from chunkd.links.parse import check_host
from chunkd.model.states import UrlRecord, UrlState
from chunkd.ops.cancel import CANCELLED
from chunkd.pipeline.engine import Engine

logger = logging.getLogger("chunkd.links")

ORIGIN_FIELDS = ("url", "webpage_url", "extractor", "title", "uploader", "upload_date")
PROGRESS_EVERY = 1.0  # seconds between progress writes to the store


class UrlFetcher:
    def __init__(self, engine: Engine, downloader: Downloader) -> None:
        self._engine = engine
        self._downloader = downloader
        # URL -> room it waits for, also kept here: the store may be on the full disk and refuse the write.
        self._room_needed: dict[str, int] = {}
        self._lock = threading.Lock()

    def staged(self, record: UrlRecord) -> Path | None:
        """The URL's staged file, downloaded first unless it is there already; None when there is
        none (the download failed, was refused, or the daemon is stopping)."""
        staged = Path(record.staged_path) if record.staged_path else None
        if record.state in (UrlState.PENDING, UrlState.DOWNLOADING) or staged is None or not staged.exists():
            return self._download(record)
        return staged

    def _download(self, record: UrlRecord) -> Path | None:
        store = self._engine.store
        refused = check_host(record.url, allow_private=self._engine.settings.allow_private_urls)
        if refused:  # checked again: a retried URL, or DNS that changed since the links file was read
            record.move_to(UrlState.REJECTED, error=refused)
            store.save_url(record)
            return None
        if not self._room_for(record):
            return None
        record.room_needed = 0
        record.attempts += 1
        record.move_to(UrlState.DOWNLOADING)
        store.save_url(record)
        logger.info("downloading %s", record.display, extra={"relpath": record.relpath})
        last_write = [0.0]
        cancel = _CancelOrStop(self._engine.stop)

        def progress(done: int, total: int | None) -> None:
            self._engine.metrics.download_bytes.inc(max(0, done - record.bytes_done))
            record.bytes_done, record.size = done, total
            if time.monotonic() - last_write[0] >= PROGRESS_EVERY:
                last_write[0] = time.monotonic()
                if cancelled(store.get_url(record.url)):
                    cancel.set()  # the download stops at its next block; the cancel stays as written
                    return
                store.save_url(record)

        name_hint = PurePosixPath(record.relpath).name
        try:
            result = self._downloader.download(record.url, name_hint=name_hint, stop=cancel, on_progress=progress)
        except DownloadError as exc:
            if exc.disk_full:
                self._out_of_space(record, exc)
                return None
            record.move_to(UrlState.FAILED, error=str(exc))
            store.save_url(record)
            logger.error("download failed for %s: %s", record.display, exc, extra={"relpath": record.relpath})
            return None
        if cancel.cancelled:
            self._downloader.remove_partial(name_hint)
            logger.warning("download of %s cancelled by operator", record.display, extra={"relpath": record.relpath})
            return None
        if self._engine.stop.is_set() and not result.path.exists():
            return None
        record.info = {name: result.info.get(name) for name in ORIGIN_FIELDS}
        record.info["url"] = record.display
        record.staged_path = str(result.path)
        record.relpath = str(PurePosixPath(record.relpath).with_name(result.path.name))
        record.size = result.path.stat().st_size
        record.bytes_done = record.size
        record.move_to(UrlState.DOWNLOADED)
        store.save_url(record)
        return result.path

    def _room_for(self, record: UrlRecord) -> bool:
        """False while a URL that ran out of space would not fit yet: not started, so it does not
        fill the disk again; the next periodic pass asks again."""
        with self._lock:
            needed = max(record.room_needed, self._room_needed.get(record.url, 0))
        if not needed:
            return True
        free = -1
        with suppress(OSError):
            free = self._downloader.disk_space()[0]
        if free < needed:
            logger.debug("%s waits for %d bytes free in the staging folder (%d now)", record.display,
                         needed, free, extra={"relpath": record.relpath})
            return False
        with self._lock:
            self._room_needed.pop(record.url, None)
        logger.info("%d bytes free in the staging folder again: downloading %s again", free, record.display,
                    extra={"relpath": record.relpath})
        return True

    def _out_of_space(self, record: UrlRecord, exc: DownloadError) -> None:
        """The partial file is gone (the downloader gave it up); wait for room, or fail if the file
        could never fit."""
        needed = exc.room_needed or record.size or record.bytes_done
        total = 0
        with suppress(OSError):
            total = self._downloader.disk_space()[1]
        if total and needed > total:
            error = f"no space left: the file is {needed} bytes, more than the staging filesystem holds ({total} bytes)"
            record.move_to(UrlState.FAILED, error=error)
            self._engine.store.save_url(record)
            logger.error("download failed for %s: %s", record.display, error, extra={"relpath": record.relpath})
            return
        record.move_to(UrlState.PENDING, error=f"{_no_space(exc)}; downloaded again once {needed} bytes are free")
        record.room_needed, record.bytes_done = max(1, needed), 0
        with self._lock:
            self._room_needed[record.url] = record.room_needed
        logger.warning("download of %s stopped, no space left in the staging folder (partial file deleted): %s; "
                       "it starts again by itself once %d bytes are free", record.display, exc.reason, needed,
                       extra={"relpath": record.relpath})
        self._engine.store.save_url(record)


def _no_space(exc: DownloadError) -> str:
    """The reason as `chunkd status` shows it, "no space left" first (the column is cut at 80)."""
    reason = exc.reason
    return reason if reason.startswith("no space left") else f"no space left in the staging folder ({reason})"


def cancelled(stored: UrlRecord | None) -> bool:
    """Whether `chunkd cancel` failed this URL (the stored record; the worker's copy is behind it)."""
    return stored is not None and stored.state is UrlState.FAILED and stored.last_error == CANCELLED


class _CancelOrStop(threading.Event):
    """The download's stop: set by a cancel of this one download, and set too while the daemon stops
    (the downloader only asks `is_set`)."""

    def __init__(self, stop: threading.Event) -> None:
        super().__init__()
        self._stop = stop

    @property
    def cancelled(self) -> bool:
        return super().is_set()

    def is_set(self) -> bool:
        return super().is_set() or self._stop.is_set()
