"""The paths filesystem events name, waiting for the watcher's own thread to look at them.

watchdog runs its handlers synchronously under the observer's lock, so the handler here only
records a path: no stat, no I/O, no decision. What it records is bounded whatever the event rate:
a path waits once however many events name it, and past `limit` paths events are dropped and a
full rescan is asked for instead. The kernel dropping events (inotify's queue overflowing) asks
for a rescan too.
"""

from __future__ import annotations

import collections
import logging
import os
import threading
from pathlib import Path

from watchdog.events import (
    FileClosedNoWriteEvent,
    FileOpenedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)

logger = logging.getLogger("chunkd.watcher")

_QUIET_EVENTS = (FileOpenedEvent, FileClosedNoWriteEvent)  # reading a file (we do, to upload it)


class PendingPaths:
    """Paths waiting to be looked at, each once, in arrival order, at most `limit` of them."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._order: collections.deque[Path] = collections.deque()
        self._members: set[Path] = set()
        self._scan = False
        self._root_check = False
        self._overflowed = False
        self._cond = threading.Condition()

    def add(self, path: Path) -> None:
        with self._cond:
            if path in self._members:
                return
            if len(self._order) >= self._limit:
                if not self._overflowed:
                    logger.warning("more than %d paths waiting; dropping events and rescanning instead", self._limit)
                self._overflowed = self._scan = True
            else:
                self._order.append(path)
                self._members.add(path)
            self._cond.notify()

    def request_scan(self) -> None:
        with self._cond:
            self._scan = True
            self._cond.notify()

    def request_root_check(self) -> None:
        with self._cond:
            self._root_check = True
            self._cond.notify()

    def take(self, timeout: float) -> tuple[Path | None, bool, bool]:
        """(a path or None, whether a scan was asked for, whether a root check was asked for)."""
        with self._cond:
            if not self._order and not self._scan and not self._root_check:
                self._cond.wait(timeout)
            scan, root_check = self._scan, self._root_check
            self._scan = self._root_check = False
            if scan:
                self._overflowed = False
            path = self._order.popleft() if self._order else None
            if path is not None:
                self._members.discard(path)
            return path, scan, root_check

    def __len__(self) -> int:
        with self._cond:
            return len(self._order)


class EnqueueHandler(FileSystemEventHandler):
    """The watchdog handler: each event becomes a path, a rescan or a root check asked for."""

    def __init__(self, pending: PendingPaths, root: Path) -> None:
        self._pending = pending
        self._root = str(root)

    def on_any_event(self, event: FileSystemEvent) -> None:
        if isinstance(event, _QUIET_EVENTS):
            return
        if event.is_directory and event.event_type != "moved":
            if event.event_type == "deleted" and str(event.src_path) == self._root:
                self._pending.request_root_check()
            return
        target = getattr(event, "dest_path", "") or event.src_path
        if target:
            self._pending.add(Path(os.fsdecode(target)))
        if event.is_directory:  # a folder moved in: its files produce no events of their own
            self._pending.request_scan()


class OverflowAlarm(logging.Handler):
    """watchdog only logs that the kernel dropped events; that is our cue to rescan at once."""

    LOGGER = "watchdog.observers.inotify_c"  # where watchdog logs it

    def __init__(self, pending: PendingPaths) -> None:
        super().__init__(logging.WARNING)
        self._pending = pending

    def attach(self) -> None:
        logging.getLogger(self.LOGGER).addHandler(self)

    def detach(self) -> None:
        logging.getLogger(self.LOGGER).removeHandler(self)

    def emit(self, record: logging.LogRecord) -> None:
        if "overflow" in record.getMessage().lower():
            self._pending.request_scan()
