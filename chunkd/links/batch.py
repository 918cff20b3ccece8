"""links.txt batches: each line becomes a URL record, each URL is downloaded once into the staging
folder and then handed to the scheduler like a dropped file (its priority, size classes and
`file_concurrency` apply), which reports back when the upload is done; a links file whose lines are
all settled gets a report beside it and is renamed `<name>.done`.

URL records are keyed by the normalized URL, so a URL that shows up again in a later links file is
neither downloaded nor uploaded again: the report names the object it already is.

`LinkManager` runs the threads and queues; the work is done by one piece each: `reader` (a links
file's lines become URL records), `waits` (which links files wait on which URLs), `fetch` (one
URL's download), `handoff` (its upload through the scheduler, and how it ended) and `report` (the
report and `.done`). A links file is read at most once per change (events for it coalesce).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from pathlib import Path

from chunkd.errors import StoreError
from chunkd.links.download import Downloader
from chunkd.links.fetch import UrlFetcher
from chunkd.links.handoff import SubmitUpload, UploadHandoff
from chunkd.links.parse import parse_links_bytes
from chunkd.links.reader import LinksFileReader
from chunkd.links.report import LinksFileSettler
from chunkd.links.waits import LinkWaits
from chunkd.model.states import UrlState
from chunkd.pipeline.engine import Engine

logger = logging.getLogger("chunkd.links")


class LinkManager:
    """One thread reads links files (and writes their reports); `download_concurrency` threads
    download URLs and hand them to the scheduler, whose callback records each upload's end."""

    def __init__(self, engine: Engine, downloader: Downloader, submit_upload: SubmitUpload) -> None:
        self._engine = engine
        self._files: queue.Queue[tuple[Path, str] | str | None] = queue.Queue()  # to read; a str: to settle
        self._urls: queue.Queue[str | None] = queue.Queue()
        self._lock = threading.Lock()
        self._waiting_files: set[str] = set()  # links files queued for reading (each once)
        self._waits = LinkWaits()
        self._reader = LinksFileReader(engine, queue_url=self._queue_url)
        self._settler = LinksFileSettler(engine, read_again=self.submit, on_settled=self._reader.forget)
        self._fetcher = UrlFetcher(engine, downloader)
        self._handoff = UploadHandoff(engine, submit_upload, on_settled=self._upload_settled)
        self._threads: list[threading.Thread] = []

    def submit(self, path: Path, relpath: str) -> bool:
        """A links file appeared or changed (the watcher's callback): read it on our own thread,
        once however many events arrive before it is read."""
        with self._lock:
            if relpath in self._waiting_files:
                return True
            self._waiting_files.add(relpath)
        self._files.put((path, relpath))
        return True

    def resume(self) -> int:
        """Queue every URL a previous run (or `chunkd retry --failed`) left unsettled."""
        records = self._engine.store.list_urls(
            [UrlState.PENDING, UrlState.DOWNLOADING, UrlState.DOWNLOADED, UrlState.UPLOADING]
        )
        for record in records:
            self._queue_url(record.url, record.links_file)
        return len(records)

    def start(self) -> None:
        workers = [threading.Thread(target=self._read_files, name="chunkd-links", daemon=True)]
        for index in range(self._engine.settings.download_concurrency):
            workers.append(threading.Thread(target=self._work_urls, name=f"chunkd-download-{index}", daemon=True))
        for thread in workers:
            thread.start()
        self._threads = workers

    def stop(self, timeout: float) -> None:
        self._files.put(None)
        for _ in self._threads[1:]:
            self._urls.put(None)
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    def _queue_url(self, url: str, links_file: str) -> None:
        """Queue a URL once; `links_file` is settled when the last URL it waits for is."""
        if self._waits.wait_for(url, links_file):
            self._urls.put(url)

    # -- the links thread ----------------------------------------------------------------------

    def _read_files(self) -> None:
        while True:
            item = self._files.get()
            if item is None or self._engine.stop.is_set():
                return
            if isinstance(item, str):
                self._settler.settle_quietly(item)
                continue
            path, relpath = item
            with self._lock:
                self._waiting_files.discard(relpath)
            try:
                self._read_file(path, relpath)
            except Exception:  # one bad links file must not stop the others
                logger.exception("could not process links file", extra={"relpath": relpath})

    def _read_file(self, path: Path, relpath: str) -> None:
        try:
            data = self._read_bounded(path, relpath)
        except FileNotFoundError:
            return  # renamed to .done meanwhile
        if data is None:
            return
        self._waits.hold(relpath)  # the read itself: no download settles the file meanwhile
        try:
            self._reader.admit_lines(parse_links_bytes(data), relpath)
        finally:
            ready = self._waits.release(relpath)
        if ready:  # else the last of its URLs to settle settles the file
            self._settler.settle(path, relpath)

    def _read_bounded(self, path: Path, relpath: str) -> bytes | None:
        """The file's bytes, or None (said once per version of the file) when it is too big."""
        return self._reader.read_bounded(path, relpath)

    # -- the download threads ------------------------------------------------------------------

    def _work_urls(self) -> None:
        while True:
            url = self._urls.get()
            if url is None or self._engine.stop.is_set():
                return
            uploading = False
            try:
                uploading = self._process(url)
            except StoreError as exc:
                logger.error("state store unavailable while handling a download: %s", exc)
            except Exception:  # one URL's bug must not stop the others
                logger.exception("unexpected error while handling a download")
            if not uploading:  # else the scheduler's callback settles it
                for links_file in self._waits.url_settled(url):
                    self._settler.settle_quietly(links_file)

    def _process(self, url: str) -> bool:
        """Download the URL unless it is already; True once the scheduler took its upload."""
        record = self._engine.store.get_url(url)
        if record is None or record.state.terminal:
            return False
        staged = self._fetcher.staged(record)
        return staged is not None and self._handoff.send(record, staged)

    def _upload_settled(self, url: str) -> None:
        """On the scheduler's worker: a links file this settles is reported on the links thread,
        since that reads every line's record."""
        for links_file in self._waits.url_settled(url):
            self._files.put(links_file)
