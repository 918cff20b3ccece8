"""A stream job and its file's lease: what happens when the store forgets the lease mid-job."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from chunkd.config import load_settings
from chunkd.pipeline.engine import Engine
from chunkd.pipeline.job import Outcome, StreamJob
from chunkd.store import open_store
from chunkd.store.lease import HeldLease, LeaseKeeper


class _NoS3:
    """The job must give up before it reaches S3."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"unexpected S3 call {name}")


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    (tmp_path / "input").mkdir()
    settings = load_settings(env={}, overrides={
        "input_dir": str(tmp_path / "input"), "state_url": f"sqlite:///{tmp_path / 'state.db'}",
    })
    engine = Engine(settings, open_store(settings.state_url), _NoS3(), input_dir=tmp_path / "input")  # type: ignore[arg-type]
    yield engine
    engine.shutdown()
    engine.store.close()


def test_store_reset_then_lease_taken_by_another_daemon_is_busy(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The store restarts empty and another daemon takes the file before this one can take its
    lease again: the job leaves the file to that daemon (BUSY), it does not crash."""
    path = engine.input_dir / "clip.mp4"
    path.write_bytes(b"x" * 1024)
    other = LeaseKeeper(engine.store, 30.0, owner="other-host/1/abcd")
    take = engine.leases.acquire
    taken: list[HeldLease] = []

    def acquire(name: str) -> HeldLease | None:
        held = take(name)
        if held is not None and not taken:
            engine.store.release_lease(held.lease)  # the store forgets the lease...
            theirs = other.acquire(name)  # ...and another daemon takes the file
            assert theirs is not None
            taken.append(theirs)
            held.forgotten = True
            held.lost.set()
        return held

    monkeypatch.setattr(engine.leases, "acquire", acquire)
    assert StreamJob(engine, path, "clip.mp4").run() is Outcome.BUSY
    assert taken, "the scenario did not run"
    assert engine.store.lease_owner("clip.mp4") == other.owner
    other.close()
