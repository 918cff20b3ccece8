"""One URL record's download into the staging folder, with its record in the store kept up to
date on the way: DOWNLOADING with progress, then DOWNLOADED with the origin the upload carries,
or FAILED with the reason. An operator's `chunkd cancel URL` (the record FAILED in the store) is
seen at the next progress write: the download stops and its partial file is deleted."""

from __future__ import annotations

import logging
import threading
import time
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
