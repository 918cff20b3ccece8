"""What a small file costs the state store: the writes of one `chunkd upload` file of one PutObject."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import pytest

from chunkd.model.states import StreamRecord, StreamState
from chunkd.pipeline.engine import Engine
from chunkd.pipeline.job import Outcome
from tests.support.bucket import read_manifest
from tests.support.engine import run_job


@pytest.fixture
def saved_states(make_engine: Callable[..., Engine], monkeypatch: pytest.MonkeyPatch) -> tuple[Engine, list[str]]:
    """An engine whose store notes each write: the state of every stream record saved (with
    "+index" when its content is indexed in the same write), and "index" for a write of its own."""
    engine = make_engine()
    states: list[str] = []
    save, index = engine.store.save_stream, engine.store.index_content

    def noted(record: StreamRecord, **kwargs: Any) -> None:
        states.append(record.state.value + ("+index" if kwargs.get("index") else ""))
        save(record, **kwargs)

    def noted_index(sha256: str, stream_id: str, **kwargs: Any) -> None:
        states.append("index")
        index(sha256, stream_id, **kwargs)

    monkeypatch.setattr(engine.store, "save_stream", noted)
    monkeypatch.setattr(engine.store, "index_content", noted_index)
    return engine, states


def test_a_complete_small_file_is_written_when_found_and_when_done(
    saved_states: tuple[Engine, list[str]], client: Any
) -> None:
    engine, states = saved_states
    (engine.input_dir / "small.ts").write_bytes(os.urandom(200 * 1024))

    assert run_job(engine, "small.ts") == Outcome.COMPLETED

    assert states == ["PENDING", "COMPLETED+index"]
    record = engine.store.find_by_relpath("small.ts")
    assert record is not None and record.state is StreamState.COMPLETED and record.sha256
    found = engine.store.find_by_content(record.sha256)
    assert found is not None and found.id == record.id
    assert engine.store.may_hold_size(200 * 1024)
    assert read_manifest(client, "small.ts") is not None


def test_a_file_of_several_parts_is_finalizing_in_the_store_before_it_completes(
    saved_states: tuple[Engine, list[str]],
) -> None:
    engine, states = saved_states
    (engine.input_dir / "big.ts").write_bytes(os.urandom(6 * 1024 * 1024))  # two parts of 5 MiB

    assert run_job(engine, "big.ts") == Outcome.COMPLETED

    assert StreamState.FINALIZING.value in states
    assert states[-1] == "COMPLETED+index"
