"""A watchdog observer kept on the input folder while the folder vanishes, comes back, is replaced
by another, or cannot be watched at all.

Who notices, kept apart from what is done about it: this module knows watchdog's observer and
inotify's limits; the watcher decides what to offer. When watching fails (watch or instance
limit, a tree too deep), that is logged and the rescans still find files; the watch is tried
again later.
"""

from __future__ import annotations

import errno
import logging
import os
import stat as stat_module
import threading
import time
from pathlib import Path

from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver

from chunkd.intake.backlog import EnqueueHandler, PendingPaths

logger = logging.getLogger("chunkd.watcher")


class FolderWatch:
    """The observer on `root`, feeding `pending`; `check` is called from the watcher's thread only."""

    def __init__(
        self, root: Path, pending: PendingPaths, *, rescan_seconds: float, stop: threading.Event
    ) -> None:
        self.root = root
        self.root_id: tuple[int, int] | None = None  # the folder being watched (device, inode)
        self._pending = pending
        self._rescan_seconds = rescan_seconds
        self._stop = stop  # once set, no new observer is started
        self._observer: BaseObserver | None = None
        self._missing = False
        self._failed_at: float | None = None
        self._folders_warned = False

    @property
    def present(self) -> bool:
        return not self._missing

    @property
    def watching(self) -> bool:
        """Filesystem events are arriving from the input folder (not only rescans)."""
        observer = self._observer
        return observer is not None and observer.is_alive() and _emitters_alive(observer)

    def check(self) -> bool:
        """Notice the input folder vanishing or being replaced, and (re)watch the one that is there.

        True when the folder whose files were handed over is gone (vanished, or another in its
        place): nothing in the folder there now has been handed over.
        """
        try:
            info = os.stat(self.root)
            present = stat_module.S_ISDIR(info.st_mode)
        except OSError:
            present = False
        if not present:
            if self._missing:
                return False
            self._missing = True
            logger.warning("input folder %s disappeared; waiting for it", self.root)
            self.close()
            return True
        current = (info.st_dev, info.st_ino)
        came_back = self._missing
        if came_back:
            self._missing = False
            logger.info("input folder %s is back; watching it again", self.root)
            self._pending.request_scan()
        if current == self.root_id and self.watching:
            return False
        failed_lately = self._failed_at is not None and (
            time.monotonic() - self._failed_at < max(self._rescan_seconds, 30.0)
        )
        if failed_lately and current == self.root_id:
            return False  # watching this very folder failed lately: rescans carry on, try again later
        replaced = self.root_id is not None and current != self.root_id
        if replaced:
            if not came_back:
                logger.warning("input folder %s was replaced by another folder; watching the new one", self.root)
            self._pending.request_scan()
        elif self.root_id is not None and self._failed_at is None and not came_back:
            logger.warning("the filesystem watch on %s stopped; starting it again", self.root)
            self._pending.request_scan()  # events may have been lost meanwhile
        self._watch(current)
        return replaced

    def close(self) -> None:
        observer, self._observer = self._observer, None
        if observer is not None:
            _stop_observer(observer)

    def warn_if_too_many_folders(self, folders: int) -> None:
        """Once: inotify needs a watch per folder, and there are more folders than watches."""
        limit = _max_user_watches()
        if self._folders_warned or limit is None or folders <= limit:
            return
        self._folders_warned = True
        logger.warning(
            "%d folders below %s but fs.inotify.max_user_watches is %d: files in some folders are "
            "found only by the rescan every %.0fs", folders, self.root, limit, self._rescan_seconds,
        )

    def _watch(self, root_id: tuple[int, int]) -> None:
        self.close()
        if self._stop.is_set():
            return
        self.root_id = root_id
        observer: BaseObserver = Observer()
        try:
            observer.schedule(EnqueueHandler(self._pending, self.root), str(self.root), recursive=True)
            observer.start()
        except Exception as exc:  # noqa: BLE001 - watch limit, a tree too deep for watchdog, …
            self._failed_at = time.monotonic()
            _stop_observer(observer)
            logger.error(
                "cannot watch %s for changes (%s); new files are found by the rescan every %.0fs",
                self.root, _watch_error(exc), self._rescan_seconds,
            )
            return
        self._failed_at = None
        self._observer = observer


def _emitters_alive(observer: BaseObserver) -> bool:
    emitters = list(observer.emitters)
    return bool(emitters) and all(emitter.is_alive() for emitter in emitters)


def _stop_observer(observer: BaseObserver) -> None:
    try:
        observer.stop()
        if observer.is_alive():
            observer.join(timeout=5)
    except Exception:  # a broken observer is being thrown away anyway
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
