"""The part buffers every upload shares: reused, and bounded by a memory budget.

A part sent from memory needs a buffer of its size for as long as its request runs. With a fresh
buffer per part, the peak RSS followed file_concurrency × part_concurrency × part size and then
some: 224–259 MB for 4 files × 4 parts of 8 MiB, ~40 MB past the runtime plus the 128 MiB in
flight (most likely glibc: after the first large block is freed, it raises its mmap threshold, so later buffers
come from per-thread malloc arenas, which keep what they held). Here a buffer is allocated once,
filled again and again (`os.preadv` straight into it), and the bytes held are capped at the
budget (`CHUNKD_BUFFER_MEMORY`) whatever the concurrency settings add up to.

A part that finds the budget spent waits its turn (first come, first served): every holder gives
its buffer back when its request ends, so the wait is short and cannot deadlock, and a part
waiting costs no CPU, where reading it from the file twice would. A part larger than the whole
budget gets no buffer (`lease` yields None) and is streamed from the file instead.
"""

from __future__ import annotations

import contextlib
import threading
from collections import deque
from collections.abc import Iterator

DEFAULT_BUFFER_MEMORY = 32 * 1024 * 1024  # four 8 MiB parts: see README "Part buffers"
POOLED_FROM = 5 * 1024 * 1024  # S3's smallest part: below it, a small file's single PUT


class BufferPool:
    """Reusable bytearrays, one per part in flight, holding at most `budget` bytes in all."""

    def __init__(self, budget: int = DEFAULT_BUFFER_MEMORY, *, pooled_from: int = POOLED_FROM) -> None:
        self.budget = budget
        self._pooled_from = pooled_from
        self._free: dict[int, list[bytearray]] = {}
        self._held = 0  # bytes of every buffer allocated, free or lent
        self._lent = 0
        self._queue: deque[object] = deque()  # parts waiting, oldest first
        self._changed = threading.Condition()

    @property
    def held(self) -> int:
        """Bytes allocated, lent or free: never more than the budget."""
        return self._held

    @property
    def lent(self) -> int:
        """Buffers out on a part right now."""
        return self._lent

    @property
    def waiting(self) -> int:
        """Parts waiting for a buffer."""
        return len(self._queue)

    @contextlib.contextmanager
    def lease(self, size: int) -> Iterator[bytearray | None]:
        """A buffer of exactly `size` bytes for the block, given back however it ends (after a
        failed request too, when nothing reads it any more); None when `size` exceeds the budget.

        Below `pooled_from` (S3's smallest part) the buffer is a fresh one, never pooled: small files come in every
        size, so pooled buffers would rarely fit the next one, and dropping and allocating them
        churned the heap (RSS 157 MB for 5,000 small files, against 91 MB with fresh buffers)."""
        if size < self._pooled_from:
            yield bytearray(size)
            return
        buffer = self.acquire(size)
        try:
            yield buffer
        finally:
            if buffer is not None:
                self.release(buffer)

    def acquire(self, size: int) -> bytearray | None:
        """A free buffer of `size` bytes, a new one while the budget allows, else the first one
        given back after every part that asked earlier was served."""
        if size > self.budget:
            return None
        ticket = object()
        with self._changed:
            self._queue.append(ticket)
            try:
                while True:
                    if self._queue[0] is ticket:
                        buffer = self._take(size)
                        if buffer is not None:
                            self._lent += 1
                            return buffer
                    self._changed.wait()
            finally:
                self._queue.remove(ticket)
                self._changed.notify_all()  # the next in line may go now

    def release(self, buffer: bytearray) -> None:
        with self._changed:
            self._lent -= 1
            self._free.setdefault(len(buffer), []).append(buffer)
            self._changed.notify_all()

    def _take(self, size: int) -> bytearray | None:
        """A free buffer of that size, or a new one once free buffers of other sizes (a file's last
        part, a small file) are dropped to make room; None while lent buffers fill the budget."""
        free = self._free.get(size)
        if free:
            return free.pop()
        while self._held + size > self.budget and self._drop_free():
            pass
        if self._held + size > self.budget:
            return None
        self._held += size
        return bytearray(size)

    def _drop_free(self) -> bool:
        for size, buffers in self._free.items():
            if buffers:
                buffers.pop()
                self._held -= size
                return True
        return False


_shared = BufferPool()


def shared_pool() -> BufferPool:
    """The process's pool: every gateway built without one of its own draws from it."""
    return _shared

