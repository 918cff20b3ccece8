"""Which keys a bucket folder holds, listed once and kept for a minute.

Recovery asks, for every file older than the run without a record, whether its manifest is in the
bucket; a first run over a folder of thousands of files would cost a GET each. One listing of the
folder (a page per 1,000 keys, the way `rclone copy` compares) answers for all of them, and only
manifests it shows are read.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from chunkd.errors import TransferError
from chunkd.s3.uploader import Uploader

logger = logging.getLogger("chunkd.listing")

MAX_PAGES = 10  # beyond 10,000 keys in a folder, asking about each key is cheaper than listing
TTL_SECONDS = 60.0


class FolderListings:
    """Used only to rule a key out: "not in a listing under a minute old".

    A manifest written after the listing belongs to a file some daemon holds a record of, so only a
    store that loses its data within that minute could make a file go up again (waste, not loss);
    a daemon that sees its store lose its data drops its listings (`forget`). A
    folder too big to list, or a listing that failed, answers "maybe" and the caller asks about the
    key itself.
    """

    def __init__(
        self, uploader: Uploader, *, max_pages: int = MAX_PAGES, ttl: float = TTL_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._uploader = uploader
        self._max_pages, self._ttl, self._clock = max_pages, ttl, clock
        self._listed: dict[tuple[str, str], tuple[float, frozenset[str] | None]] = {}
        self._locks: dict[tuple[str, str], threading.Lock] = {}
        self._guard = threading.Lock()

    def may_hold(self, bucket: str, key: str) -> bool:
        folder = (bucket, key.rpartition("/")[0] + "/" if "/" in key else "")
        with self._guard:
            lock = self._locks.setdefault(folder, threading.Lock())
        with lock:  # one listing per folder, however many workers ask at once
            listed = self._listed.get(folder)
            if listed is None or self._clock() - listed[0] > self._ttl:
                listed = (self._clock(), self._list(*folder))
                self._listed[folder] = listed
        keys = listed[1]
        return keys is None or key in keys

    def forget(self) -> None:
        """Drop every listing: the store lost its records, so manifests written since count now."""
        with self._guard:
            self._listed.clear()

    def _list(self, bucket: str, folder: str) -> frozenset[str] | None:
        try:
            keys = self._uploader.list_folder(bucket, folder, max_pages=self._max_pages)
        except TransferError as exc:
            logger.debug("could not list %r: %s", folder, exc)
            return None
        return None if keys is None else frozenset(keys)
