"""links.txt batches: each line becomes a URL record, each URL is downloaded once into the staging
folder and then uploaded by the normal engine; a links file whose lines are all settled gets a
report beside it and is renamed `<name>.done`.

URL records are keyed by the normalized URL, so a URL that shows up again in a later links file is
neither downloaded nor uploaded again: the report names the object it already is.
"""

from __future__ import annotations

import hashlib
import json
import logging
import queue
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from chunkd.downloader import Downloader, DownloadError
from chunkd.engine import Engine
from chunkd.errors import StoreError
from chunkd.links import LinkLine, check_host, parse_links_bytes, redact_url
from chunkd.paths import free_name
from chunkd.states import UrlRecord, UrlState
from chunkd.stream import Outcome

logger = logging.getLogger("chunkd.links")

ORIGIN_FIELDS = ("url", "webpage_url", "extractor", "title", "uploader", "upload_date")
PROGRESS_EVERY = 1.0  # seconds between progress writes to the store
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")

UploadRunner = Callable[[Path, str, dict[str, Any]], tuple[Outcome, str | None]]


@dataclass(frozen=True)
class ReportLine:
    line: int
    url: str
    state: str  # COMPLETED | FAILED | PENDING… | REJECTED | DUPLICATE
    key: str | None = None
    error: str | None = None
    duplicate_of_line: int | None = None
    already_uploaded: bool = False


def name_hint(url: str) -> str:
    """A safe, unique staging name: the URL's last path segment plus a short hash of the URL."""
    stem = PurePosixPath(url.split("?", 1)[0].split("#", 1)[0]).stem or "download"
    digest = hashlib.sha256(url.encode()).hexdigest()[:8]
    return f"{_UNSAFE.sub('_', stem)[:80]}-{digest}"


class LinkManager:
    def __init__(self, engine: Engine, downloader: Downloader, upload: UploadRunner) -> None:
        self._engine = engine
        self._downloader = downloader
        self._upload = upload
        self._files: queue.Queue[tuple[Path, str] | None] = queue.Queue()
        self._urls: queue.Queue[str | None] = queue.Queue()
        self._active: set[str] = set()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []

    # -- intake ------------------------------------------------------------------------------

    def submit(self, path: Path, relpath: str) -> bool:
        """A links file appeared or changed (the watcher's callback): read it on our own thread."""
        self._files.put((path, relpath))
        return True

    def resume(self) -> int:
        """Queue every URL a previous run (or `chunkd retry --failed`) left unsettled."""
        records = self._engine.store.list_urls(
            [UrlState.PENDING, UrlState.DOWNLOADING, UrlState.DOWNLOADED, UrlState.UPLOADING]
        )
        for record in records:
            self._queue_url(record.url)
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

    def _queue_url(self, url: str) -> None:
        with self._lock:
            if url in self._active:
                return
            self._active.add(url)
        self._urls.put(url)

    # -- links files -------------------------------------------------------------------------

    def _read_files(self) -> None:
        while True:
            item = self._files.get()
            if item is None or self._engine.stop.is_set():
                return
            path, relpath = item
            try:
                self._read_file(path, relpath)
            except Exception:  # noqa: BLE001 - one bad links file must not stop the others
                logger.exception("could not process links file", extra={"relpath": relpath})

    def _read_file(self, path: Path, relpath: str) -> None:
        try:
            lines = parse_links_bytes(path.read_bytes())
        except FileNotFoundError:
            return  # renamed to .done meanwhile
        seen: dict[str, int] = {}
        for line in lines:
            if line.url is None:
                logger.warning("links file line %d rejected: %s", line.lineno, line.error, extra={"relpath": relpath})
                continue
            if line.url in seen:
                continue
            seen[line.url] = line.lineno
            self._admit(line, relpath)
        self._settle(path, relpath)

    def _admit(self, line: LinkLine, links_relpath: str) -> None:
        assert line.url is not None
        store = self._engine.store
        record = store.get_url(line.url)
        if record is not None:
            if not record.state.terminal:
                self._queue_url(record.url)
            return
        folder = str(PurePosixPath(links_relpath).parent)
        hint = name_hint(line.url)
        record = UrlRecord(
            url=line.url, display=redact_url(line.url), links_file=links_relpath,
            relpath=hint if folder == "." else f"{folder}/{hint}",
        )
        refused = check_host(line.url, allow_private=self._engine.settings.allow_private_urls)
        if refused:
            record.move_to(UrlState.FAILED, error=refused)
            store.save_url(record)
            logger.warning("refused %s: %s", record.display, refused, extra={"relpath": links_relpath})
            return
        store.save_url(record)
        self._queue_url(record.url)

    # -- one URL: download, then upload ------------------------------------------------------

    def _work_urls(self) -> None:
        while True:
            url = self._urls.get()
            if url is None or self._engine.stop.is_set():
                return
            try:
                self._process(url)
            except StoreError as exc:
                logger.error("state store unavailable while handling a download: %s", exc)
            except Exception:  # noqa: BLE001 - one URL's bug must not stop the others
                logger.exception("unexpected error while handling a download")
            finally:
                with self._lock:
                    self._active.discard(url)

    def _process(self, url: str) -> None:
        store = self._engine.store
        record = store.get_url(url)
        if record is None or record.state.terminal:
            return
        staged = Path(record.staged_path) if record.staged_path else None
        if record.state in (UrlState.PENDING, UrlState.DOWNLOADING) or staged is None or not staged.exists():
            staged = self._download(record)
            if staged is None:
                self._settle_links_file(record)
                return
        self._send(record, staged)
        self._settle_links_file(record)

    def _download(self, record: UrlRecord) -> Path | None:
        store = self._engine.store
        refused = check_host(record.url, allow_private=self._engine.settings.allow_private_urls)
        if refused:  # checked again: a retried URL, or DNS that changed since the links file was read
            record.move_to(UrlState.FAILED, error=refused)
            store.save_url(record)
            return None
        record.attempts += 1
        record.move_to(UrlState.DOWNLOADING)
        store.save_url(record)
        logger.info("downloading %s", record.display, extra={"relpath": record.relpath})
        last_write = [0.0]

        def progress(done: int, total: int | None) -> None:
            self._engine.metrics.download_bytes.inc(max(0, done - record.bytes_done))
            record.bytes_done, record.size = done, total
            if time.monotonic() - last_write[0] >= PROGRESS_EVERY:
                last_write[0] = time.monotonic()
                store.save_url(record)

        try:
            result = self._downloader.download(
                record.url, name_hint=PurePosixPath(record.relpath).name, stop=self._engine.stop, on_progress=progress
            )
        except DownloadError as exc:
            record.move_to(UrlState.FAILED, error=str(exc))
            store.save_url(record)
            logger.error("download failed for %s: %s", record.display, exc, extra={"relpath": record.relpath})
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

    def _send(self, record: UrlRecord, staged: Path) -> None:
        store = self._engine.store
        record.move_to(UrlState.UPLOADING)
        store.save_url(record)
        outcome, key = self._upload(staged, record.relpath, dict(record.info))
        if outcome is Outcome.COMPLETED:
            record.key = key
            record.move_to(UrlState.COMPLETED)
            staged.unlink(missing_ok=True)  # the staged download was the only copy; the object is verified
            record.staged_path = None
        elif outcome in (Outcome.FAILED, Outcome.QUARANTINED):
            stream = store.find_by_relpath(record.relpath)
            record.move_to(UrlState.FAILED, error=(stream.last_error if stream else None) or outcome.value)
        else:
            record.move_to(UrlState.DOWNLOADED)  # interrupted or set aside: uploaded on the next pass
        store.save_url(record)

    # -- links file lifecycle ----------------------------------------------------------------

    def _settle_links_file(self, record: UrlRecord) -> None:
        path = self._engine.input_dir / record.links_file
        if path.exists():
            self._settle(path, record.links_file)

    def _settle(self, path: Path, relpath: str) -> None:
        """Once every line is terminal: write `<name>.report.json` and rename to `<name>.done`."""
        with self._lock:
            try:
                lines = parse_links_bytes(path.read_bytes())
            except FileNotFoundError:
                return
            report = self._report(lines, relpath)
            if any(entry.state not in ("COMPLETED", "FAILED", "REJECTED", "DUPLICATE") for entry in report):
                return
            body = {"links_file": relpath, "lines": [_entry_dict(entry) for entry in report]}
            done = free_name(path.with_name(path.name + ".done"))
            done.with_name(done.name.removesuffix(".done") + ".report.json").write_text(json.dumps(body, indent=2) + "\n")
            path.rename(done)
        failed = sum(entry.state != "COMPLETED" for entry in report)
        logger.info("links file done: %d line(s), %d not uploaded", len(report), failed, extra={"relpath": relpath})

    def _report(self, lines: list[LinkLine], relpath: str) -> list[ReportLine]:
        report: list[ReportLine] = []
        seen: dict[str, int] = {}
        for line in lines:
            if line.url is None:
                report.append(ReportLine(line.lineno, redact_url(line.raw), "REJECTED", error=line.error))
                continue
            shown = redact_url(line.url)
            if line.url in seen:
                report.append(ReportLine(line.lineno, shown, "DUPLICATE", duplicate_of_line=seen[line.url]))
                continue
            seen[line.url] = line.lineno
            record = self._engine.store.get_url(line.url)
            if record is None:
                report.append(ReportLine(line.lineno, shown, "PENDING"))
                continue
            # Asked for by an earlier links file: not fetched again, the report names the object.
            already = record.state is UrlState.COMPLETED and record.links_file != relpath
            report.append(
                ReportLine(line.lineno, shown, record.state.value, key=record.key, error=record.last_error,
                           already_uploaded=already)
            )
        return report


def _entry_dict(entry: ReportLine) -> dict[str, Any]:
    data = {"line": entry.line, "url": entry.url, "state": entry.state, "key": entry.key, "error": entry.error}
    if entry.duplicate_of_line is not None:
        data["duplicate_of_line"] = entry.duplicate_of_line
    if entry.already_uploaded:
        data["already_uploaded"] = True
    return data
