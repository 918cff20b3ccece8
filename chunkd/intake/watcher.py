"""Watcher: turns filesystem events, a startup scan and periodic rescans into "look at this path".

The watchdog handler only records paths (it runs under the observer's lock; see `backlog`);
checks and decisions happen on our own thread, and everything about a file's state is decided
downstream. Keeping the observer on the input folder is `folderwatch`'s job.

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

import logging
import random
import threading
import time
from collections.abc import Callable
from pathlib import Path

from chunkd.intake.backlog import OverflowAlarm, PendingPaths
from chunkd.intake.folderwatch import FolderWatch
from chunkd.intake.paths import PathFilter, Verdict, check_file, relpath_of, walk

logger = logging.getLogger("chunkd.watcher")

Submit = Callable[[Path, str], object]
Offered = tuple[int, float]  # hash of (device, inode, size, mtime_ns) handed over; when to offer again anyway

MAX_PENDING = 10_000  # paths waiting to be looked at; past this a rescan finds them instead
MAX_REFUSED = 10_000  # refused paths remembered so each is logged once
REOFFER_SECONDS = 3600.0  # an unchanged file handed over is offered again after 0.5-1.5 times this
ROOT_CHECK_SECONDS = 1.0  # how often the input folder's presence is checked
SCAN_SHARE = 10  # the pause after a rescan is at least this many times as long as the rescan took


class Watcher:
    """Offers what is below `root` to `submit` (links files to `links`), from its own thread."""

    def __init__(
        self,
        root: Path,
        path_filter: PathFilter,
        submit: Submit,
        *,
        rescan_seconds: float = 60.0,
        links: tuple[PathFilter, Submit] | None = None,
        reoffer_seconds: float = REOFFER_SECONDS,
    ) -> None:
        self.root = root
        self._filter = path_filter
        self._submit = submit
        self._links = links  # links files go to their own consumer
        self._rescan_seconds = rescan_seconds
        self._reoffer_seconds = reoffer_seconds
        self._pending = PendingPaths(MAX_PENDING)
        self._stop = threading.Event()
        self._folder = FolderWatch(root, self._pending, rescan_seconds=rescan_seconds, stop=self._stop)
        self._offered: dict[str, Offered] = {}  # handed over, unchanged since: not offered on rescans
        self._forget_offered = threading.Event()  # set from another thread: the pump clears _offered
        self._refused: dict[str, str] = {}  # relpath -> refusal already logged
        self._random = random.Random()
        self._alarm = OverflowAlarm(self._pending)
        self._thread = threading.Thread(target=self._pump, name="chunkd-watcher", daemon=True)

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        self._alarm.attach()
        self._check_root()
        self._thread.start()
        self._pending.request_scan()  # startup scan: whatever arrived while we were down

    def stop(self) -> None:
        self._stop.set()
        self._pending.request_scan()  # wake the pump
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        self._folder.close()
        self._alarm.detach()

    @property
    def alive(self) -> bool:
        """The watcher's thread runs. It also runs while the input folder is missing (waiting for
        it) or inotify cannot watch it (rescans only): neither is fixed by a restart."""
        return self._thread.is_alive() and not self._stop.is_set()

    @property
    def watching(self) -> bool:
        """Filesystem events are arriving from the input folder (not only rescans)."""
        return self._folder.watching

    @property
    def root_present(self) -> bool:
        return self._folder.present

    def _check_root(self) -> None:
        if self._folder.check():
            self._offered.clear()  # a new folder (or none): nothing in it has been handed over

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
        self._folder.warn_if_too_many_folders(folders[0])
        return offered

    def offer_everything_again(self) -> None:
        """Rescan soon and hand over every file, as at start: the store lost its records, so files
        handed over before are not known to be done any more (their jobs restore the records)."""
        self._forget_offered.set()
        self._pending.request_scan()

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
            self._offered[relpath] = (signature, now + self._reoffer_seconds * self._random.uniform(0.5, 1.5))
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
            except Exception:  # a bad path must not stop the watcher
                logger.exception("error while looking at %s", path)

    def _periodic_scan(self, *, full: bool) -> float:
        """Rescan; returns how long it took."""
        if not self._folder.present:
            return 0.0
        if self._forget_offered.is_set():
            self._forget_offered.clear()
            self._offered.clear()
        began = time.monotonic()
        offered = self.scan(everything=False)
        took = time.monotonic() - began
        logger.debug("scan offered %d files", offered, extra={"requested": full, "duration": round(took, 3)})
        return took


def _signature(verdict: Verdict) -> int | None:
    """What identifies this version of the file, as one int: 50,000 of them cost ~10 MiB, not ~20.
    The ctime too: a file moved out and dropped in again is offered again (see discovery)."""
    info = verdict.info
    if info is None:
        return None
    return hash((info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns))

