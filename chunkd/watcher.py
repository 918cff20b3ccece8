"""Watcher: turns filesystem events, a startup scan and periodic rescans into "look at this path".

The watchdog handler only enqueues (it runs under the observer's lock); checks and decisions
happen on our own thread, and everything about a file's state is decided downstream.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from pathlib import Path

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

from chunkd.paths import PathFilter, relpath_of, safe_regular_file, walk_files

logger = logging.getLogger("chunkd.watcher")

Submit = Callable[[Path, str], object]


class _Enqueue(FileSystemEventHandler):
    def __init__(self, sink: queue.Queue[Path | None]) -> None:
        self._sink = sink

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.is_directory and event.event_type != "moved":
            return
        target = getattr(event, "dest_path", "") or event.src_path
        self._sink.put(Path(str(target)))
        if event.is_directory:  # a folder moved in: its files produce no events of their own
            self._sink.put(None)


class Watcher:
    def __init__(
        self,
        root: Path,
        path_filter: PathFilter,
        submit: Submit,
        *,
        rescan_seconds: float = 60.0,
        links: tuple[PathFilter, Submit] | None = None,
    ) -> None:
        self.root = root
        self._filter = path_filter
        self._submit = submit
        self._links = links  # links files go to their own consumer
        self._rescan_seconds = rescan_seconds
        self._events: queue.Queue[Path | None] = queue.Queue()
        self._observer = Observer()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._pump, name="chunkd-watcher", daemon=True)

    def start(self) -> None:
        self._observer.schedule(_Enqueue(self._events), str(self.root), recursive=True)
        self._observer.start()
        self._thread.start()
        self._events.put(None)  # startup scan: whatever arrived while we were down

    def stop(self) -> None:
        self._stop.set()
        self._events.put(None)  # wake the pump
        self._observer.stop()
        self._observer.join(timeout=5)
        self._thread.join(timeout=5)

    @property
    def alive(self) -> bool:
        return self._observer.is_alive() and self._thread.is_alive()

    def scan(self) -> int:
        """Offer every file below the root; returns how many were submitted."""
        return sum(1 for path in walk_files(self.root) if self.offer(path))

    def offer(self, path: Path) -> bool:
        relpath = relpath_of(self.root, path)
        if relpath is None:
            return False
        submit = self._submit
        if self._links is not None and self._links[0].wants(relpath):
            submit = self._links[1]
        elif not self._filter.wants(relpath):
            return False
        if not safe_regular_file(self.root, path):
            return False
        return bool(submit(path, relpath))

    def _pump(self) -> None:
        last_scan = float("-inf")
        while not self._stop.is_set():
            timeout = max(0.05, last_scan + self._rescan_seconds - time.monotonic()) if self._rescan_seconds else None
            try:
                item = self._events.get(timeout=timeout)
            except queue.Empty:
                item = None
            if self._stop.is_set():
                return
            # Rescan on request, and periodically even under a steady stream of events: the
            # safety net for events the kernel dropped (inotify overflow).
            rescan_due = bool(self._rescan_seconds) and time.monotonic() - last_scan >= self._rescan_seconds
            try:
                if item is None or rescan_due:
                    last_scan = time.monotonic()
                    logger.debug("scan offered %d files", self.scan())
                if item is not None:
                    self.offer(item)
            except Exception:  # noqa: BLE001 - a bad path must not stop the watcher
                logger.exception("error while looking at %s", item)
