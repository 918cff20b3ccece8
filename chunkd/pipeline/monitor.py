"""Stream monitor: notices growth, shrinking, replacement and the quiet period that means "done".

Idle detection stands on its own (size and mtime unchanged for `idle_seconds`), because the
"file closed" event exists only on Linux and writers may close and reopen between bursts.
"""

from __future__ import annotations

import enum
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from chunkd.errors import SourceGoneError
from chunkd.pipeline.partreader import FileIdentity


@dataclass(frozen=True)
class Snapshot:
    size: int
    mtime_ns: int
    identity: FileIdentity
    # Moved or renamed back in, chmod, touch: a file handled since it was uploaded (see discovery).
    ctime_ns: int = field(default=0, compare=False)

    @property
    def mtime(self) -> float:
        return self.mtime_ns / 1e9


class Change(enum.Enum):
    UNCHANGED = "unchanged"
    GREW = "grew"
    TOUCHED = "touched"  # same size, new mtime: rewritten in place, or just touched
    SHRANK = "shrank"
    REPLACED = "replaced"  # a different inode under the same name


def take_snapshot(path: Path) -> Snapshot:
    try:
        stat = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        raise SourceGoneError(f"{path} no longer exists") from None
    return Snapshot(stat.st_size, stat.st_mtime_ns, FileIdentity.of(stat), stat.st_ctime_ns)


def compare(before: Snapshot, after: Snapshot) -> Change:
    if before.identity != after.identity:
        return Change.REPLACED
    if after.size < before.size:
        return Change.SHRANK
    if after.size > before.size:
        return Change.GREW
    if after.mtime_ns != before.mtime_ns:
        return Change.TOUCHED
    return Change.UNCHANGED


class IdleTracker:
    """Says when a file has been quiet long enough to finalize.

    A file first seen with an old mtime (dropped while the daemon was down, or copied with its
    times preserved) counts as quiet since that mtime, so it need not wait a full period again.
    A change is dated by the file's mtime too, never earlier than the look before that saw no
    change: the quiet period starts at the last write, not up to one poll interval after it.
    """

    def __init__(
        self,
        idle_seconds: float,
        first: Snapshot,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._idle_seconds = idle_seconds
        self._clock = clock
        self._wall = wall
        self._last = first
        self._changed_at = self._written_at(first)
        self._looked_at = clock()

    def observe(self, snapshot: Snapshot) -> Change:
        change = compare(self._last, snapshot)
        now = self._clock()
        if change is not Change.UNCHANGED:
            self._changed_at = max(self._looked_at, self._written_at(snapshot))
            self._last = snapshot
        self._looked_at = now
        return change

    def _written_at(self, snapshot: Snapshot) -> float:
        """When the snapshot's last write was, on our clock (now, for an mtime in the future)."""
        return self._clock() - max(0.0, self._wall() - snapshot.mtime)

    @property
    def last(self) -> Snapshot:
        return self._last

    @property
    def quiet_for(self) -> float:
        return self._clock() - self._changed_at

    @property
    def idle(self) -> bool:
        return self.quiet_for >= self._idle_seconds
