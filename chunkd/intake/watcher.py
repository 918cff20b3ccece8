"""Watcher: turns filesystem events, a startup scan and periodic rescans into "look at this path".

The watchdog handler only records paths (it runs under the observer's lock); checks and decisions
happen on our own thread, and everything about a file's state is decided downstream.

What it guarantees under hostile input:

* Memory is bounded whatever the event rate: pending paths are coalesced (a path waits once) and
  capped at `MAX_PENDING`; past that, events are dropped and a full rescan is asked for instead.
* A rescan offers only files that are new or changed since they were last handed over, so a
  folder holding 50,000 finished files does not queue 50,000 no-op jobs every period; each file
  is still offered again about once an hour (`REOFFER_SECONDS`, spread out), the deeper safety
  net. Rescans take at most about a tenth of the time: after one that took T seconds, the next
  waits at least 10 T.
* A refused path (symlink out of the folder, loop, FIFO, device) is logged once, not per rescan.
* The input folder may vanish (deleted, unmounted) and come back: that is logged once, the daemon
  stays up, and watching resumes on the new folder. If inotify cannot watch (watch or instance
  limit), that is logged and files are still found by the rescans.
"""

from __future__ import annotations

import collections
import errno
import logging
import os
import random
import stat as stat_module
import threading
import time
from collections.abc import Callable
from pathlib import Path

from watchdog.events import (
    FileClosedNoWriteEvent,
    FileOpenedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer

from chunkd.intake.paths import PathFilter, Verdict, check_file, relpath_of, walk

logger = logging.getLogger("chunkd.watcher")

Submit = Callable[[Path, str], object]
Offered = tuple[int, float]  # hash of (device, inode, size, mtime_ns) handed over; when to offer again anyway

MAX_PENDING = 10_000  # paths waiting to be looked at; past this a rescan finds them instead
MAX_REFUSED = 10_000  # refused paths remembered so each is logged once
REOFFER_SECONDS = 3600.0  # an unchanged file handed over is offered again after 0.5-1.5 times this
ROOT_CHECK_SECONDS = 1.0  # how often the input folder's presence is checked
SCAN_SHARE = 10  # the pause after a rescan is at least this many times as long as the rescan took
_QUIET_EVENTS = (FileOpenedEvent, FileClosedNoWriteEvent)  # reading a file (we do, to upload it)
_OVERFLOW_LOGGER = "watchdog.observers.inotify_c"


class _Pending:
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


class _Enqueue(FileSystemEventHandler):
    def __init__(self, pending: _Pending, root: Path) -> None:
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


class _OverflowAlarm(logging.Handler):
    """watchdog only logs that the kernel dropped events; that is our cue to rescan at once."""

    def __init__(self, pending: _Pending) -> None:
        super().__init__(logging.WARNING)
        self._pending = pending

    def emit(self, record: logging.LogRecord) -> None:
        if "overflow" in record.getMessage().lower():
            self._pending.request_scan()


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
        self._pending = _Pending(MAX_PENDING)
        self._observer: Observer | None = None  # type: ignore[valid-type]
        self._root_id: tuple[int, int] | None = None  # the folder being watched (device, inode)
        self._root_missing = False
        self._watch_failed_at: float | None = None
        self._offered: dict[str, Offered] = {}  # handed over, unchanged since: not offered on rescans
        self._refused: dict[str, str] = {}  # relpath -> refusal already logged
        self._folders_warned = False
        self._random = random.Random()
        self._stop = threading.Event()
        self._alarm = _OverflowAlarm(self._pending)
        self._thread = threading.Thread(target=self._pump, name="chunkd-watcher", daemon=True)

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        logging.getLogger(_OVERFLOW_LOGGER).addHandler(self._alarm)
        self._check_root()
        self._thread.start()
        self._pending.request_scan()  # startup scan: whatever arrived while we were down

    def stop(self) -> None:
        self._stop.set()
        self._pending.request_scan()  # wake the pump
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        self._unwatch()
        logging.getLogger(_OVERFLOW_LOGGER).removeHandler(self._alarm)

    @property
    def alive(self) -> bool:
        """The watcher's thread runs. It also runs while the input folder is missing (waiting for
        it) or inotify cannot watch it (rescans only): neither is fixed by a restart."""
        return self._thread.is_alive() and not self._stop.is_set()

    @property
    def watching(self) -> bool:
        """Filesystem events are arriving from the input folder (not only rescans)."""
        observer = self._observer
        return observer is not None and observer.is_alive() and _emitters_alive(observer)

    @property
    def root_present(self) -> bool:
        return not self._root_missing

    # -- the input folder itself ---------------------------------------------------------------

    def _check_root(self) -> None:
        """Notice the input folder vanishing or being replaced, and (re)watch the one that is there."""
        try:
            info = os.stat(self.root)
            present = stat_module.S_ISDIR(info.st_mode)
        except OSError:
            present = False
        if not present:
            if not self._root_missing:
                self._root_missing = True
                logger.warning("input folder %s disappeared; waiting for it", self.root)
                self._unwatch()
                self._offered.clear()
            return
        current = (info.st_dev, info.st_ino)
        came_back = self._root_missing
        if came_back:
            self._root_missing = False
            logger.info("input folder %s is back; watching it again", self.root)
            self._pending.request_scan()
        if current == self._root_id and self.watching:
            return
        failed_lately = self._watch_failed_at is not None and (
            time.monotonic() - self._watch_failed_at < max(self._rescan_seconds, 30.0)
        )
        if failed_lately and current == self._root_id:
            return  # watching this very folder failed lately: rescans carry on, try again later
        if self._root_id is not None and current != self._root_id:
            if not came_back:
                logger.warning("input folder %s was replaced by another folder; watching the new one", self.root)
            self._offered.clear()  # a new folder: nothing in it has been handed over
            self._pending.request_scan()
        elif self._root_id is not None and self._watch_failed_at is None and not came_back:
            logger.warning("the filesystem watch on %s stopped; starting it again", self.root)
            self._pending.request_scan()  # events may have been lost meanwhile
        self._watch(current)

    def _watch(self, root_id: tuple[int, int]) -> None:
        self._unwatch()
        if self._stop.is_set():
            return
        self._root_id = root_id
        observer = Observer()
        try:
            observer.schedule(_Enqueue(self._pending, self.root), str(self.root), recursive=True)
            observer.start()
        except Exception as exc:  # noqa: BLE001 - watch limit, a tree too deep for watchdog, …
            self._watch_failed_at = time.monotonic()
            _stop_observer(observer)
            logger.error(
                "cannot watch %s for changes (%s); new files are found by the rescan every %.0fs",
                self.root, _watch_error(exc), self._rescan_seconds,
            )
            return
        self._watch_failed_at = None
        self._observer = observer

    def _unwatch(self) -> None:
        observer, self._observer = self._observer, None
        if observer is not None:
            _stop_observer(observer)

    # -- offering paths ------------------------------------------------------------------------

    def scan(self, *, everything: bool = True) -> int:
        """Offer every file below the root (only new or changed ones unless `everything`);
        returns how many were handed over."""
        offered, seen, folders = 0, set(), [0]
        for found in walk(self.root, folders=folders):
            if self._stop.is_set():
                return offered
            seen.add(found.relpath)
            if self._offer(found.path, found.relpath, found.verdict, cached=not everything):
                offered += 1
        for gone in self._offered.keys() - seen:
            del self._offered[gone]
        for gone in self._refused.keys() - seen:
            del self._refused[gone]
        self._warn_about_watch_limit(folders[0])
        return offered

    def offer(self, path: Path, *, cached: bool = True) -> bool:
        """Hand a path to its consumer if it is ours and safe; True if the consumer took it."""
        relpath = relpath_of(self.root, path)
        if relpath is None:
            return False
        return self._offer(path, relpath, None, cached=cached)

    def _offer(self, path: Path, relpath: str, verdict: Verdict | None, *, cached: bool) -> bool:
        submit, is_links = self._submit, False
        if self._links is not None and self._links[0].wants(relpath):
            submit, is_links = self._links[1], True
        elif not self._filter.wants(relpath):
            return False
        if verdict is None:
            verdict = check_file(self.root, path)
        if not verdict.ok:
            self._offered.pop(relpath, None)
            self._note_refusal(relpath, verdict)
            return False
        self._refused.pop(relpath, None)
        signature = _signature(verdict)
        now = time.monotonic()
        if cached and not is_links and signature is not None:
            offered = self._offered.get(relpath)
            if offered is not None and offered[0] == signature and now < offered[1]:
                return False
        taken = bool(submit(path, relpath))
        # Refused as already queued or in progress counts as handed over too: that job looks at
        # the file as it is when it runs. (A change in the last instant before such a job ends is
        # what the hourly re-offer is for.)
        if not is_links and signature is not None:
            self._offered[relpath] = (signature, now + REOFFER_SECONDS * self._random.uniform(0.5, 1.5))
        return taken

    def _note_refusal(self, relpath: str, verdict: Verdict) -> None:
        if verdict.refusal is None or verdict.refusal.quiet:
            self._refused.pop(relpath, None)
            return
        reason = str(verdict)
        if self._refused.get(relpath) == reason:
            return
        if len(self._refused) >= MAX_REFUSED:
            self._refused.clear()
        self._refused[relpath] = reason
        logger.warning("ignoring %s: %s", relpath, reason, extra={"relpath": relpath, "reason": verdict.refusal.name})

    def _warn_about_watch_limit(self, folders: int) -> None:
        limit = _max_user_watches()
        if self._folders_warned or limit is None or folders <= limit:
            return
        self._folders_warned = True
        logger.warning(
            "%d folders below %s but fs.inotify.max_user_watches is %d: files in some folders are "
            "found only by the rescan every %.0fs", folders, self.root, limit, self._rescan_seconds,
        )

    # -- the pump ------------------------------------------------------------------------------

    def _pump(self) -> None:
        next_scan = float("inf")  # periodic; the startup scan is asked for by start()
        earliest = 0.0  # no scan, asked for or not, before this: rescans take ~1/SCAN_SHARE of the time
        asked = False
        next_root_check = time.monotonic() + ROOT_CHECK_SECONDS
        while not self._stop.is_set():
            now = time.monotonic()
            due = max(earliest, min(next_scan, now if asked else next_scan))
            timeout = max(0.05, min(due, next_root_check) - now)
            path, scan_asked, root_asked = self._pending.take(timeout)
            if self._stop.is_set():
                return
            asked = asked or scan_asked
            try:
                now = time.monotonic()
                if root_asked or now >= next_root_check:
                    next_root_check = now + ROOT_CHECK_SECONDS
                    self._check_root()
                # Rescan on request (startup, a folder moved in, events dropped), and periodically
                # even under a steady stream of events: the safety net for events the kernel lost.
                if (asked or now >= next_scan) and now >= earliest:
                    took = self._periodic_scan(full=asked)
                    asked = False
                    finished = time.monotonic()
                    earliest = finished + SCAN_SHARE * took  # 50,000 files take seconds to walk
                    next_scan = finished + max(self._rescan_seconds, SCAN_SHARE * took) if self._rescan_seconds \
                        else float("inf")
                if path is not None:
                    self.offer(path)
            except Exception:  # noqa: BLE001 - a bad path must not stop the watcher
                logger.exception("error while looking at %s", path)

    def _periodic_scan(self, *, full: bool) -> float:
        """Rescan; returns how long it took."""
        if self._root_missing:
            return 0.0
        began = time.monotonic()
        offered = self.scan(everything=False)
        took = time.monotonic() - began
        logger.debug("scan offered %d files", offered, extra={"requested": full, "duration": round(took, 3)})
        return took


def _signature(verdict: Verdict) -> int | None:
    """What identifies this version of the file, as one int: 50,000 of them cost ~10 MiB, not ~20."""
    info = verdict.info
    if info is None:
        return None
    return hash((info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns))


def _emitters_alive(observer: Observer) -> bool:  # type: ignore[valid-type]
    emitters = list(observer.emitters)
    return bool(emitters) and all(emitter.is_alive() for emitter in emitters)


def _stop_observer(observer: Observer) -> None:  # type: ignore[valid-type]
    try:
        observer.stop()
        if observer.is_alive():
            observer.join(timeout=5)
    except Exception:  # noqa: BLE001 - a broken observer is being thrown away anyway
        logger.debug("error while stopping the filesystem observer", exc_info=True)


def _watch_error(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        limit = _max_user_watches()
        return f"inotify watch limit reached (fs.inotify.max_user_watches={limit})"
    if isinstance(exc, OSError) and exc.errno == errno.EMFILE:
        return "inotify instance limit reached (fs.inotify.max_user_instances)"
    if isinstance(exc, RecursionError):
        return "folder tree too deep to watch"
    return str(exc) or type(exc).__name__


def _max_user_watches() -> int | None:
    try:
        return int(Path("/proc/sys/fs/inotify/max_user_watches").read_text().strip())
    except (OSError, ValueError):
        return None
