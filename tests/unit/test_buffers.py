"""The shared part buffers: bounded by their budget, reused, handed out in turn, and always given
back, also when a part's request fails."""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path
from typing import Any

import botocore.exceptions as bexc
import pytest

from chunkd.errors import TransferError
from chunkd.model.planner import Part
from chunkd.pipeline.buffers import BufferPool
from chunkd.pipeline.partreader import RangeReader
from chunkd.s3.client import payload_sha256_of
from chunkd.s3.retry import RetryPolicy
from chunkd.s3.uploader import Uploader
from tests.support.daemon import wait_for
from tests.support.sizes import MiB

SIZE = 4096


def acquire_in_thread(pool: BufferPool, size: int) -> tuple[threading.Thread, list[bytearray | None]]:
    got: list[bytearray | None] = []
    thread = threading.Thread(target=lambda: got.append(pool.acquire(size)), daemon=True)
    thread.start()
    return thread, got


def test_a_part_beyond_the_budget_waits_for_a_buffer_given_back_and_gets_that_very_buffer() -> None:
    pool = BufferPool(2 * SIZE, pooled_from=0)
    first, second = pool.acquire(SIZE), pool.acquire(SIZE)
    assert first is not None and second is not None and first is not second
    assert (pool.held, pool.lent) == (2 * SIZE, 2)

    thread, got = acquire_in_thread(pool, SIZE)
    wait_for(lambda: pool.waiting == 1, timeout=5, interval=0.01, what="the third part to queue")
    assert got == []  # queued, so not served: nothing was given back yet

    pool.release(first)
    thread.join(timeout=5)
    assert got == [first]  # reused, not allocated: the bytes held stay at the budget
    assert (pool.held, pool.lent, pool.waiting) == (2 * SIZE, 2, 0)


def test_parts_waiting_for_a_buffer_are_served_in_the_order_they_asked() -> None:
    pool = BufferPool(SIZE, pooled_from=0)
    held = pool.acquire(SIZE)
    assert held is not None
    early, early_got = acquire_in_thread(pool, SIZE)
    wait_for(lambda: pool.waiting == 1, timeout=5, interval=0.01, what="the first waiter")
    late, late_got = acquire_in_thread(pool, SIZE)
    wait_for(lambda: pool.waiting == 2, timeout=5, interval=0.01, what="the second waiter")

    pool.release(held)
    early.join(timeout=5)
    assert (early_got, late_got, pool.waiting) == ([held], [], 1)

    pool.release(held)
    late.join(timeout=5)
    assert late_got == [held]


def test_a_part_larger_than_the_whole_budget_gets_no_buffer_at_once() -> None:
    pool = BufferPool(SIZE, pooled_from=0)
    assert pool.acquire(SIZE + 1) is None
    assert BufferPool(0).acquire(1) is None
    assert (pool.held, pool.waiting) == (0, 0)


def test_free_buffers_of_another_size_make_room_for_a_new_one() -> None:
    pool = BufferPool(2 * SIZE, pooled_from=0)
    with pool.lease(SIZE), pool.lease(SIZE):
        pass
    assert pool.held == 2 * SIZE
    with pool.lease(SIZE + 100) as odd:  # a file's last part
        assert odd is not None and len(odd) == SIZE + 100
        assert pool.held == 2 * SIZE + 100 - SIZE  # one idle buffer dropped, one kept
    with pool.lease(SIZE) as again:
        assert again is not None and pool.held <= pool.budget


def test_a_lease_gives_its_buffer_back_when_the_block_fails() -> None:
    pool = BufferPool(SIZE, pooled_from=0)
    with pytest.raises(RuntimeError), pool.lease(SIZE):
        raise RuntimeError("send failed")
    assert (pool.lent, pool.held) == (0, SIZE)


# --- the gateway -----------------------------------------------------------------------------------


class FailingClient:
    """Refuses every part with a 500, noting what it was handed and what the pool lent meanwhile."""

    def __init__(self, pool: BufferPool) -> None:
        self.pool = pool
        self.bodies: list[tuple[Any, bytes, int]] = []

    def upload_part(self, **kwargs: Any) -> dict[str, Any]:
        body = kwargs["Body"]
        self.bodies.append((body, bytes(body), self.pool.lent))
        raise bexc.ClientError({"Error": {"Code": "InternalError"}, "ResponseMetadata": {"HTTPStatusCode": 500}},
                               "UploadPart")


def test_a_failed_send_gives_the_buffer_back_and_the_retry_reads_into_the_same_one(tmp_path: Path) -> None:
    path = tmp_path / "clip.mp4"
    data = os.urandom(SIZE)
    path.write_bytes(data)
    pool = BufferPool(SIZE, pooled_from=0)
    fake = FailingClient(pool)
    uploader = Uploader(fake, RetryPolicy(max_attempts=2, sleep=lambda _: None), buffers=pool)  # type: ignore[arg-type]

    with pytest.raises(TransferError):
        uploader.upload_part("bucket", "clip.mp4", "u", path, Part(1, 0, SIZE), None)

    (first, first_bytes, lent_first), (second, second_bytes, lent_second) = fake.bodies
    assert first is second and isinstance(first, bytearray)  # one buffer, lent twice
    assert first_bytes == second_bytes == data
    assert (lent_first, lent_second) == (1, 1)  # held while the client had it
    assert (pool.lent, pool.held) == (0, SIZE)  # and given back after the failure


class RecordingClient:
    def __init__(self) -> None:
        self.body: Any = None
        self.sha256: str | None = None

    def upload_part(self, **kwargs: Any) -> dict[str, Any]:
        self.body, self.sha256 = kwargs["Body"], payload_sha256_of(kwargs["Body"])
        return {"ETag": '"' + "0" * 32 + '"'}


def test_a_part_larger_than_the_budget_is_streamed_from_the_file(tmp_path: Path) -> None:
    path = tmp_path / "clip.mp4"
    data = os.urandom(SIZE)
    path.write_bytes(data)
    fake = RecordingClient()
    uploader = Uploader(fake, RetryPolicy(max_attempts=1), buffers=BufferPool(SIZE - 1, pooled_from=0))  # type: ignore[arg-type]

    record = uploader.upload_part("bucket", "clip.mp4", "u", path, Part(1, 0, SIZE), None)

    assert isinstance(fake.body, RangeReader)
    assert fake.sha256 == record.sha256 == hashlib.sha256(data).hexdigest()


def test_a_body_smaller_than_any_part_gets_a_fresh_buffer_outside_the_pool() -> None:
    pool = BufferPool(budget=16 * MiB)
    with pool.lease(300 * 1024) as first, pool.lease(300 * 1024) as second:
        assert first is not None and second is not None and first is not second
        assert len(first) == 300 * 1024
        assert pool.held == 0 and pool.lent == 0
    with pool.lease(8 * MiB) as part:
        assert part is not None and pool.held == 8 * MiB
