"""links.txt batches: each line becomes a URL record, each URL is downloaded once into the staging
folder and then handed to the scheduler like a dropped file (its priority, size classes and
`file_concurrency` apply), which reports back when the upload is done; a links file whose lines are
all settled gets a report beside it and is renamed `<name>.done`.

URL records are keyed by the normalized URL, so a URL that shows up again in a later links file is
neither downloaded nor uploaded again: the report names the object it already is.

Big files stay linear: a links file is read at most once per change (events for it coalesce), and
its report is built once, when the last URL it waits for is settled, not after every download. A
file larger than `MAX_LINKS_FILE_BYTES` is not read at all (one error line says so), and only the
first `REJECTS_LOGGED` rejected lines of a file are logged one by one; the report lists them all.
"""

from __future__ import annotations

import collections
import hashlib
import json
import logging
import os
import queue
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Protocol

from chunkd.errors import DownloadError, StoreError
from chunkd.intake.paths import free_name, local_path
from chunkd.intake.scheduler import JobResult
from chunkd.links.download import Downloader
from chunkd.links.parse import LinkLine, check_host, parse_links_bytes, redact_url
from chunkd.model.states import StreamRecord, StreamState, UrlRecord, UrlState
from chunkd.pipeline.engine import Engine
from chunkd.pipeline.job import Outcome

logger = logging.getLogger("chunkd.links")

ORIGIN_FIELDS = ("url", "webpage_url", "extractor", "title", "uploader", "upload_date")
PROGRESS_EVERY = 1.0  # seconds between progress writes to the store
MAX_LINKS_FILE_BYTES = 32 * 1024 * 1024  # ~300,000 URLs; a bigger file is refused, not read
REJECTS_LOGGED = 10  # rejected or refused lines logged one by one per links file; the rest summarized
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")



class SubmitUpload(Protocol):
    """The scheduler's `submit`: True if it took the file, and then `on_done` hears the result."""

    def __call__(
        self, path: Path, relpath: str, *, final: bool, origin: dict[str, Any] | None,
        on_done: Callable[[JobResult], None],
    ) -> bool: ...


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
    def __init__(self, engine: Engine, downloader: Downloader, submit_upload: SubmitUpload) -> None:
        self._engine = engine
        self._downloader = downloader
        self._submit_upload = submit_upload
        self._files: queue.Queue[tuple[Path, str] | str | None] = queue.Queue()  # to read; a str: to settle
        self._urls: queue.Queue[str | None] = queue.Queue()
        self._waiting_files: set[str] = set()  # links files queued for reading (each once)
        self._active: dict[str, set[str]] = {}  # URL queued, in progress or uploading -> links files waiting on it
        self._outstanding: collections.Counter[str] = collections.Counter()  # links file -> URLs it waits on
        self._logged: dict[str, tuple[int, int]] = {}  # links file -> (last line judged, lines logged)
        self._refused_size: dict[str, tuple[int, int]] = {}  # links file -> (size, mtime_ns) refused as too big
        self._rechecks: set[str] = set()  # links files with a read-again timer running
        self._lock = threading.Lock()
        self._settle_lock = threading.Lock()
        self._threads: list[threading.Thread] = []

    # -- intake ------------------------------------------------------------------------------

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
        with self._lock:
            waiting = self._active.get(url)
            if waiting is not None:
                if links_file not in waiting:
                    waiting.add(links_file)
                    self._outstanding[links_file] += 1
                return
            self._active[url] = {links_file}
            self._outstanding[links_file] += 1
        self._urls.put(url)

    def _url_settled(self, url: str) -> list[str]:
        """The links files that waited on `url` and now wait on nothing."""
        with self._lock:
            return [links_file for links_file in self._active.pop(url, ()) if self._release(links_file)]

    def _release(self, links_file: str) -> bool:
        """One thing `links_file` waited on is done; True when nothing is left (under the lock)."""
        self._outstanding[links_file] -= 1
        if self._outstanding[links_file] > 0:
            return False
        del self._outstanding[links_file]
        return True

    # -- links files -------------------------------------------------------------------------

    def _read_files(self) -> None:
        while True:
            item = self._files.get()
            if item is None or self._engine.stop.is_set():
                return
            if isinstance(item, str):
                self._settle_quietly(item)
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
        with self._lock:
            self._outstanding[relpath] += 1  # the read itself: no download settles the file meanwhile
        try:
            self._admit_lines(parse_links_bytes(data), relpath)
        finally:
            with self._lock:
                ready = self._release(relpath)
        if ready:  # else the last of its URLs to settle settles the file
            self._settle(path, relpath)

    def _admit_lines(self, lines: list[LinkLine], relpath: str) -> None:
        log = self._reject_log(relpath)
        seen: set[str] = set()
        for line in lines:
            if line.url is None:
                log(line.lineno, "links file line %d rejected: %s", line.lineno, line.error)
            elif line.url not in seen:
                seen.add(line.url)
                self._admit(line, relpath, log)
        log.close()

    def _read_bounded(self, path: Path, relpath: str) -> bytes | None:
        """The file's bytes, or None (logged once per version of the file) when it is too big."""
        info = path.stat()
        if info.st_size <= MAX_LINKS_FILE_BYTES:
            self._refused_size.pop(relpath, None)
            return path.read_bytes()
        version = (info.st_size, info.st_mtime_ns)
        if self._refused_size.get(relpath) != version:
            self._refused_size[relpath] = version
            logger.error(
                "links file is %d bytes, more than the %d MiB limit: not read; split it into smaller files",
                info.st_size, MAX_LINKS_FILE_BYTES // (1024 * 1024), extra={"relpath": relpath},
            )
        return None

    def _reject_log(self, relpath: str) -> _RejectLog:
        last_line, logged = self._logged.get(relpath, (0, 0))
        return _RejectLog(relpath, last_line, logged, lambda state: self._logged.__setitem__(relpath, state))

    def _admit(self, line: LinkLine, links_relpath: str, log: _RejectLog) -> None:
        assert line.url is not None
        store = self._engine.store
        record = store.get_url(line.url)
        if record is not None:
            if not record.state.terminal:
                self._queue_url(record.url, links_relpath)
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
            log(line.lineno, "refused %s: %s", record.display, refused)
            return
        store.save_url(record)
        self._queue_url(record.url, links_relpath)

    # -- one URL: download, then upload ------------------------------------------------------

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
                self._url_done(url)

    def _url_done(self, url: str) -> None:
        for links_file in self._url_settled(url):
            self._settle_quietly(links_file)

    def _process(self, url: str) -> bool:
        """Download the URL unless it is already; True once the scheduler took its upload."""
        store = self._engine.store
        record = store.get_url(url)
        if record is None or record.state.terminal:
            return False
        staged = Path(record.staged_path) if record.staged_path else None
        if record.state in (UrlState.PENDING, UrlState.DOWNLOADING) or staged is None or not staged.exists():
            staged = self._download(record)
            if staged is None:
                return False
        return self._send(record, staged)

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

    def _send(self, record: UrlRecord, staged: Path) -> bool:
        """Hand the staged file to the scheduler; True if it took it. UPLOADING is saved first: a
        stop before the upload ran leaves it so, and `resume` sends it again on the next start."""
        store = self._engine.store
        record.move_to(UrlState.UPLOADING)
        store.save_url(record)
        taken = self._submit_upload(
            staged, record.relpath, final=True, origin=dict(record.info),
            on_done=lambda result: self._uploaded(record, staged, result),
        )
        if not taken:  # stopping, or that relpath is in the scheduler already: sent on the next pass
            record.move_to(UrlState.DOWNLOADED)
            store.save_url(record)
        return taken

    def _uploaded(self, record: UrlRecord, staged: Path, result: JobResult) -> None:
        """The scheduler is done with the upload (called on its worker): record how it ended."""
        try:
            self._record_upload(record, staged, result)
        except StoreError as exc:
            logger.error("state store unavailable while handling a download: %s", exc)
        finally:
            # A links file it settles is reported on our thread: that reads every line's record.
            for links_file in self._url_settled(record.url):
                self._files.put(links_file)

    def _record_upload(self, record: UrlRecord, staged: Path, result: JobResult) -> None:
        store, outcome = self._engine.store, result.outcome
        if outcome is Outcome.COMPLETED:
            record.key = result.key
            record.move_to(UrlState.COMPLETED)
            staged.unlink(missing_ok=True)  # the staged download was the only copy; the object is verified
            record.staged_path = None
        elif outcome in (Outcome.FAILED, Outcome.QUARANTINED):
            stream = store.find_by_relpath(record.relpath)
            error = (stream.last_error if stream else None) or result.error or outcome.value
            record.move_to(UrlState.FAILED, error=error)
        elif outcome is Outcome.SKIPPED and (stream := store.find_by_relpath(record.relpath)) and stream.state.terminal:
            # Nothing new to upload: its stream already ended (a failure stays one until `chunkd
            # retry`); say so instead of sending the same file again and again.
            self._settle_from_stream(record, stream, staged)
        else:
            record.move_to(UrlState.DOWNLOADED)  # interrupted or set aside: uploaded on the next pass
        store.save_url(record)

    @staticmethod
    def _settle_from_stream(record: UrlRecord, stream: StreamRecord, staged: Path) -> None:
        if stream.state is StreamState.COMPLETED:
            record.key = stream.key
            record.move_to(UrlState.COMPLETED)
            staged.unlink(missing_ok=True)
            record.staged_path = None
        else:
            record.move_to(UrlState.FAILED, error=stream.last_error or stream.state.value)

    # -- links file lifecycle ----------------------------------------------------------------

    def _settle_quietly(self, links_file: str) -> None:
        try:
            path = local_path(self._engine.input_dir, links_file)
            if path.exists():
                self._settle(path, links_file)
        except StoreError as exc:
            logger.error("state store unavailable while settling a links file: %s", exc, extra={"relpath": links_file})
        except Exception:  # the next read of the file tries again
            logger.exception("could not settle links file", extra={"relpath": links_file})

    def _settle(self, path: Path, relpath: str) -> None:
        """Once every line is terminal and the file has been quiet for `idle_seconds` (a writer
        may not be done with it yet): write `<name>.report.json` and rename to `<name>.done`."""
        with self._settle_lock:
            try:
                quiet_for = time.time() - path.stat().st_mtime
                if quiet_for < self._engine.settings.idle_seconds:
                    self._read_again_later(path, relpath, self._engine.settings.idle_seconds - quiet_for)
                    return
                lines = parse_links_bytes(path.read_bytes())
            except FileNotFoundError:
                return
            report = self._report(lines, relpath)
            if report is None:
                return
            done = free_name(path.with_name(path.name + ".done"))
            _write_report(done.with_name(done.name.removesuffix(".done") + ".report.json"), relpath, report)
            path.rename(done)
            self._logged.pop(relpath, None)
        failed = sum(entry.state != "COMPLETED" for entry in report)
        logger.info("links file done: %d line(s), %d not uploaded", len(report), failed, extra={"relpath": relpath})

    def _read_again_later(self, path: Path, relpath: str, delay: float) -> None:
        """One timer per file: whatever was appended by then is read, then the file settles."""
        with self._lock:
            if relpath in self._rechecks or self._engine.stop.is_set():
                return
            self._rechecks.add(relpath)

        def again() -> None:
            with self._lock:
                self._rechecks.discard(relpath)
            self.submit(path, relpath)

        timer = threading.Timer(max(0.05, delay + 0.05), again)
        timer.daemon = True
        timer.start()

    def _report(self, lines: list[LinkLine], relpath: str) -> list[ReportLine] | None:
        """One entry per line, or None as soon as a line turns out not to be settled yet."""
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
            if record is None or not record.state.terminal:
                return None
            # Asked for by an earlier links file: not fetched again, the report names the object.
            already = record.state is UrlState.COMPLETED and record.links_file != relpath
            report.append(
                ReportLine(line.lineno, shown, record.state.value, key=record.key, error=record.last_error,
                           already_uploaded=already)
            )
        return report


class _RejectLog:
    """Logs a links file's rejected and refused lines: each line once (lines already judged in an
    earlier read of the file are not logged again), the first `REJECTS_LOGGED` one by one, the
    rest as one count per read."""

    def __init__(self, relpath: str, last_line: int, logged: int, save: Callable[[tuple[int, int]], None]) -> None:
        self._relpath = relpath
        self._last_line = last_line
        self._logged = logged
        self._save = save
        self._unlogged = 0
        self._newest = last_line

    def __call__(self, lineno: int, message: str, *args: Any) -> None:
        if lineno <= self._last_line:
            return
        self._newest = max(self._newest, lineno)
        if self._logged < REJECTS_LOGGED:
            self._logged += 1
            logger.warning(message, *args, extra={"relpath": self._relpath})
        else:
            self._unlogged += 1

    def close(self) -> None:
        if self._unlogged:
            logger.warning(
                "links file: %d more line(s) rejected or refused, not logged one by one (the report lists them)",
                self._unlogged, extra={"relpath": self._relpath},
            )
        self._save((self._newest, self._logged))


def _write_report(target: Path, relpath: str, report: list[ReportLine]) -> None:
    """The report as JSON, one line per entry, written to a temporary name and renamed into place:
    a reader never sees half a report, and 100,000 entries never sit in memory as one string."""
    temporary = target.with_name(target.name + ".tmp")
    with open(temporary, "w", encoding="utf-8") as handle:
        handle.write('{\n  "links_file": ' + json.dumps(relpath) + ',\n  "lines": [')
        handle.writelines(
            ("\n    " if index == 0 else ",\n    ") + json.dumps(_entry_dict(entry)) for index, entry in enumerate(report)
        )
        handle.write("\n  ]\n}\n")
    os.replace(temporary, target)


def _entry_dict(entry: ReportLine) -> dict[str, Any]:
    data = {"line": entry.line, "url": entry.url, "state": entry.state, "key": entry.key, "error": entry.error}
    if entry.duplicate_of_line is not None:
        data["duplicate_of_line"] = entry.duplicate_of_line
    if entry.already_uploaded:
        data["already_uploaded"] = True
    return data
