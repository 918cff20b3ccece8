"""Poster frames for the status page, fetched from the bucket by the daemon and kept in a small cache.

The browser asks the daemon (`/thumbnail/<stream id>`), never the bucket: it gets no credential
and no presigned URL, and a page left open on a wall screen costs S3 one GET per poster, not one
per refresh. The cache is bounded in bytes; a poster that is not there (yet) is remembered as
missing for a few seconds only, since a page asks again when a file completes.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable

from chunkd.errors import ChunkdError
from chunkd.model.states import StreamState
from chunkd.store import StreamReader

logger = logging.getLogger("chunkd.http")

MAX_THUMBNAIL_BYTES = 2 * 1024 * 1024  # a 640 px wide JPEG is tens of KiB; anything this big is not one
_STREAM_ID = re.compile(r"[A-Za-z0-9_.-]{1,128}")

Fetch = Callable[[str, str, int], "bytes | None"]  # (bucket, key, limit) -> bytes, None for no such key


class Thumbnails:
    """Poster frame bytes by stream id: from the cache, else from the bucket."""

    def __init__(
        self,
        store: StreamReader,
        fetch: Fetch,
        *,
        budget: int = 16 * 1024 * 1024,
        miss_seconds: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self._fetch = fetch
        self._budget = budget
        self._miss_seconds = miss_seconds
        self._clock = clock
        self._images: OrderedDict[tuple[str, str], bytes] = OrderedDict()  # least recently used first
        self._misses: dict[tuple[str, str], float] = {}  # -> when the miss stops counting
        self._used = 0
        self._lock = threading.Lock()

    def get(self, stream_id: str) -> bytes | None:
        """The JPEG of a completed stream's poster frame; None when there is none (or S3 could not
        say: that is logged, and not remembered)."""
        if not _STREAM_ID.fullmatch(stream_id):
            return None
        record = self._store.get_stream(stream_id)
        if record is None or record.state is not StreamState.COMPLETED or record.thumbnail_key is None:
            return None  # no poster was made (not a video, or made before posters): no GET for it
        where = (record.bucket, record.thumbnail_key)
        with self._lock:
            if where in self._images:
                self._images.move_to_end(where)
                return self._images[where]
            if self._misses.get(where, 0.0) > self._clock():
                return None
        return self._load(where)

    def _load(self, where: tuple[str, str]) -> bytes | None:
        try:
            data = self._fetch(where[0], where[1], MAX_THUMBNAIL_BYTES)
        except ChunkdError as exc:
            logger.warning("could not fetch the poster frame %s: %s", where[1], exc)
            return None
        if data is not None and len(data) > MAX_THUMBNAIL_BYTES:
            logger.warning("poster frame %s is over %d bytes: not served", where[1], MAX_THUMBNAIL_BYTES)
            data = None
        with self._lock:
            if data is None:
                self._forget_old_misses()
                self._misses[where] = self._clock() + self._miss_seconds
            else:
                self._keep(where, data)
        return data

    def _keep(self, where: tuple[str, str], data: bytes) -> None:
        self._misses.pop(where, None)
        if where in self._images or len(data) > self._budget:
            return
        self._images[where] = data
        self._used += len(data)
        while self._used > self._budget:
            _, dropped = self._images.popitem(last=False)
            self._used -= len(dropped)

    def _forget_old_misses(self) -> None:
        now = self._clock()
        for where in [where for where, until in self._misses.items() if until <= now]:
            del self._misses[where]
