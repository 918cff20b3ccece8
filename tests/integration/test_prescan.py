"""A file that grew and went quiet is read during its idle period (the prescan), once, and never
at the cost of an object that differs from the file: any write after the prescan began makes
finalizing read the file again, and parts rewritten before it are sent again."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from chunkd.pipeline.engine import Engine
from chunkd.pipeline.hashing import Scan
from chunkd.pipeline.job import Outcome
from tests.support.bucket import read_manifest, sha256_object
from tests.support.daemon import wait_for
from tests.support.engine import run_in_thread, run_job
from tests.support.files import sha256_file
from tests.support.sizes import MiB

IDLE = 2.0


@pytest.fixture
def scans(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """The thread of every whole-file read, in order ("chunkd-prescan" for prescans)."""
    threads: list[str] = []
    real = Scan.run

    def counted(self: Scan) -> Any:
        threads.append(threading.current_thread().name)
        return real(self)

    monkeypatch.setattr(Scan, "run", counted)
    yield threads


def grow(path: Path, chunks: int, size: int = 3 * MiB, pause: float = 0.2) -> None:
    with open(path, "ab") as handle:
        for _ in range(chunks):
            handle.write(os.urandom(size))
            handle.flush()
            time.sleep(pause)


def grow_then_rewrite(engine: Engine, when: Callable[[], object], timeout: float) -> tuple[Path, list[Outcome]]:
    """Upload live.ts while it grows; once `when` holds, overwrite its first 4 KiB with other bytes,
    same size (a muxer patching its header). Returns the file and the job's outcome once it ended."""
    path = engine.input_dir / "live.ts"
    path.write_bytes(b"")
    thread, outcome = run_in_thread(engine, "live.ts")
    grow(path, 5)
    wait_for(when, timeout=timeout)
    with open(path, "r+b") as handle:
        handle.write(os.urandom(4096))
    thread.join(timeout=60)
    return path, outcome


def parts_sent(engine: Engine) -> int:
    """UploadPart requests the engine's client made so far (counted by the `make_engine` fixture)."""
    return int(engine.requests["UploadPart"])  # type: ignore[attr-defined]


def test_a_quiet_file_is_read_once_during_its_idle_period(
    make_engine: Callable[..., Engine], client: Any, scans: list[str]
) -> None:
    engine = make_engine(idle_seconds=IDLE)
    path = engine.input_dir / "live.ts"
    path.write_bytes(b"")
    thread, outcome = run_in_thread(engine, "live.ts")
    grow(path, 5)
    thread.join(timeout=60)
    assert outcome == [Outcome.COMPLETED]
    assert scans == ["chunkd-prescan"]
    assert sha256_object(client, "live.ts") == sha256_file(path)


def test_a_write_after_the_prescan_began_makes_finalize_read_again(
    make_engine: Callable[..., Engine], client: Any, scans: list[str]
) -> None:
    engine = make_engine(idle_seconds=IDLE)
    path, outcome = grow_then_rewrite(engine, lambda: scans, timeout=IDLE * 2)
    assert outcome == [Outcome.COMPLETED]
    assert len(scans) >= 2
    assert sha256_object(client, "live.ts") == sha256_file(path)


def test_a_part_rewritten_before_the_quiet_period_is_sent_again(
    make_engine: Callable[..., Engine], client: Any, scans: list[str]
) -> None:
    engine = make_engine(idle_seconds=IDLE)
    path, outcome = grow_then_rewrite(engine, lambda: parts_sent(engine) >= 2, timeout=30)  # part 1 sent with other bytes
    assert outcome == [Outcome.COMPLETED]
    assert scans == ["chunkd-prescan"]  # the rewrite came before the quiet period began
    assert sha256_object(client, "live.ts") == sha256_file(path)


def test_a_file_of_one_put_that_cannot_be_a_duplicate_is_read_only_by_its_put(
    make_engine: Callable[..., Engine], client: Any, scans: list[str]
) -> None:
    engine = make_engine()
    path = engine.input_dir / "small.ts"
    path.write_bytes(os.urandom(300 * 1024))
    assert run_job(engine, "small.ts") == Outcome.COMPLETED
    assert scans == []  # no read of its own before the PutObject
    record = engine.store.find_by_relpath("small.ts")
    assert record is not None and record.sha256 == sha256_file(path)
    assert sha256_object(client, "small.ts") == sha256_file(path)
    manifest = read_manifest(client, "small.ts")
    assert manifest is not None and manifest["sha256"] == sha256_file(path)


def test_a_part_sent_with_content_md5_and_rewritten_is_caught_by_its_md5(
    make_engine: Callable[..., Engine], client: Any, scans: list[str]
) -> None:
    """Parts sent with Content-MD5 carry no SHA-256 of their own: the rewrite is caught by comparing
    the local bytes' MD5 with the one sent, and the part is sent again."""
    engine = make_engine(idle_seconds=IDLE, content_md5="on")
    path, outcome = grow_then_rewrite(engine, lambda: parts_sent(engine) >= 2, timeout=30)  # part 1 sent with other bytes
    assert outcome == [Outcome.COMPLETED]
    assert sha256_object(client, "live.ts") == sha256_file(path)
    record = engine.store.find_by_relpath("live.ts")
    assert record is not None
    parts = engine.store.list_parts(record.id)
    assert parts and all(part.md5 and not part.sha256 for part in parts)
    # part 1 sent again (rclone serve s3 refuses to replace a part: there, every part is)
    assert engine.requests["UploadPart"] > len(parts)  # type: ignore[attr-defined]
