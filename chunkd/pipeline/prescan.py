"""Reading a quiet file while its idle period runs, so finalize need not read it again.

From half of idle_seconds on, a file that grew and went quiet is read in the background. If it is
still exactly as that read saw it when the period ends, finalize takes the read's hashes; any
change drops the read.
"""

from __future__ import annotations

import dataclasses
import threading
from concurrent.futures import Future

from chunkd.pipeline.hashing import LocalScan, Scan
from chunkd.pipeline.monitor import Change, Snapshot, compare


@dataclasses.dataclass
class Prescan:
    """One background read of a quiet file, as `snap` saw it."""

    snap: Snapshot
    future: Future[LocalScan]
    cancel_event: threading.Event

    @classmethod
    def start(cls, scan: Scan, snap: Snapshot) -> Prescan:
        cancel = threading.Event()
        future: Future[LocalScan] = Future()

        def run() -> None:
            try:
                future.set_result(dataclasses.replace(scan, cancel=cancel).run())
            except BaseException as exc:  # noqa: BLE001 - handed to whoever takes the result
                future.set_exception(exc)

        threading.Thread(target=run, name="chunkd-prescan", daemon=True).start()
        return cls(snap, future, cancel)

    def usable(self) -> bool:
        """Still running, or done without an error (a failed read is simply done again)."""
        return not self.future.done() or self.future.exception() is None

    def cancel(self) -> None:
        self.cancel_event.set()


class PrescanSlot:
    """At most one prescan per stream: started, dropped when the file moves on, taken by finalize."""

    def __init__(self) -> None:
        self._prescan: Prescan | None = None
        self.used = 0

    def start(self, scan: Scan, snap: Snapshot) -> None:
        """Read the file as `snap` saw it, unless a read of exactly that is already under way.

        `scan.part_hashes` must name every part sent or in flight: a part read before a rewrite that
        happened before `snap` is caught by comparing its hash from this read.
        """
        if self._prescan is not None and compare(self._prescan.snap, snap) is Change.UNCHANGED:
            return
        self.drop()
        self._prescan = Prescan.start(scan, snap)

    def drop(self) -> None:
        """The file moved on: the prescan's result can no longer be used."""
        if self._prescan is not None:
            self._prescan.cancel()
            self._prescan = None

    def take(self, snap: Snapshot) -> Prescan | None:
        """The prescan of exactly `snap`, if one ran (or runs) without error."""
        prescan, self._prescan = self._prescan, None
        if prescan is None:
            return None
        if compare(prescan.snap, snap) is not Change.UNCHANGED or not prescan.usable():
            prescan.cancel()
            return None
        self.used += 1
        return prescan
