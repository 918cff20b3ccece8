"""Which links files wait on which URLs: each URL is queued once however many links files name it,
and a links file is settled when the last thing it waits for is."""

from __future__ import annotations

import collections
import threading


class LinkWaits:
    """A URL is active from the moment it is queued until it is settled (downloaded and uploaded,
    or failed); every links file that names it meanwhile waits on it. A links file being read also
    waits on its own reading, so no download settles a file whose lines are still being admitted."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._active: dict[str, set[str]] = {}  # URL queued, in progress or uploading -> links files waiting on it
        self._outstanding: collections.Counter[str] = collections.Counter()  # links file -> things it waits on

    def wait_for(self, url: str, links_file: str) -> bool:
        """`links_file` waits on `url`; True when the URL was not active yet, so it is to be queued."""
        with self._lock:
            waiting = self._active.get(url)
            if waiting is not None:
                if links_file not in waiting:
                    waiting.add(links_file)
                    self._outstanding[links_file] += 1
                return False
            self._active[url] = {links_file}
            self._outstanding[links_file] += 1
            return True

    def hold(self, links_file: str) -> None:
        """`links_file` waits on one more thing (its reading) until `release`."""
        with self._lock:
            self._outstanding[links_file] += 1

    def release(self, links_file: str) -> bool:
        """What `hold` took is done; True when `links_file` now waits on nothing."""
        with self._lock:
            return self._release(links_file)

    def url_settled(self, url: str) -> list[str]:
        """The links files that waited on `url` and now wait on nothing."""
        with self._lock:
            return [links_file for links_file in self._active.pop(url, ()) if self._release(links_file)]

    def _release(self, links_file: str) -> bool:
        """Under the lock."""
        self._outstanding[links_file] -= 1
        if self._outstanding[links_file] > 0:
            return False
        del self._outstanding[links_file]
        return True
