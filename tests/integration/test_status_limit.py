"""`chunkd status` on a long history: the newest streams, every active one, and a line for the rest."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from chunkd.model.states import StreamRecord, StreamState
from chunkd.store import CheckpointStore
from chunkd.store.redis import RedisStore
from chunkd.store.sqlite import SqliteStore
from tests.support.cli import run_chunkd

NODE = "box-1"
T0 = 1_750_000_000.0


@pytest.fixture(params=["sqlite", "redis"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, CheckpointStore]]:
    """The state URL the command is given, and a store on the same data to seed it."""
    if request.param == "sqlite":
        path = tmp_path / "state.db"
        url, store = f"sqlite:///{path}", SqliteStore(str(path))
    else:
        url = request.getfixturevalue("redis_url")
        store = RedisStore.from_url(url)
    yield url, store
    store.close()


def record(n: int, state: StreamState = StreamState.COMPLETED, *, node: str = NODE) -> StreamRecord:
    return StreamRecord(
        id=f"id{n:03d}", relpath=f"cam/clip{n:03d}.mp4", source_path=f"/in/cam/clip{n:03d}.mp4",
        bucket="videos", key=f"cam/clip{n:03d}.mp4", schedule={}, state=state, size=1000, node=node,
        discovered_at=T0 + n, updated_at=T0 + n, completed_at=T0 + n if state is StreamState.COMPLETED else None,
    )


def status(url: str, *args: str) -> list[str]:
    env = {name: value for name, value in os.environ.items() if not name.startswith("CHUNKD_")}
    result = run_chunkd("status", "--state-url", url, *args, env={**env, "CHUNKD_NODE": NODE})
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


def left_out(url: str, count: int) -> str:
    """The last line. One box's SQLite holds only its streams: the count is exact. A fleet's Redis
    counts every node's by its index, so a node's own count is a bound until all were read."""
    bound = "" if url.startswith("sqlite") else "up to "
    return f"… {bound}{count} older streams not shown (--all, or --limit N)"


def ids(lines: list[str]) -> list[str]:
    return [line.split()[1] for line in lines[1:] if not line.startswith("…")]


def seed(store: CheckpointStore, count: int) -> None:
    """`count` completed streams, and an upload stuck since before all of them."""
    store.save_stream(record(0, StreamState.UPLOADING))
    for n in range(1, count + 1):
        store.save_stream(record(n))


def test_status_shows_the_newest_fifty_every_active_one_and_says_how_many_it_left_out(
    backend: tuple[str, CheckpointStore],
) -> None:
    url, store = backend
    seed(store, 120)
    lines = status(url)
    # Oldest first, as without a limit: the stuck upload, then the newest 50 completed.
    assert ids(lines) == ["id000", *[f"id{n:03d}" for n in range(71, 121)]]
    assert lines[-1] == left_out(url, 70)


def test_status_limit_and_all(backend: tuple[str, CheckpointStore]) -> None:
    url, store = backend
    seed(store, 60)
    limited = status(url, "--limit", "3")
    assert ids(limited) == ["id000", "id058", "id059", "id060"]
    assert limited[-1] == left_out(url, 57)
    every = status(url, "--all")
    assert ids(every) == [f"id{n:03d}" for n in range(61)] and not every[-1].startswith("…")
    assert ids(status(url, "--limit", "2", "--state", "completed")) == ["id059", "id060"]
    assert status(url, "--limit", "2", "--state", "uploading")[-1].split()[1] == "id000"  # nothing left out


def test_status_json_is_complete_unless_limited(backend: tuple[str, CheckpointStore]) -> None:
    url, store = backend
    seed(store, 60)
    assert len(json.loads("\n".join(status(url, "--json")))) == 61
    rows = json.loads("\n".join(status(url, "--json", "--limit", "2")))
    assert sorted(row["id"] for row in rows) == ["id000", "id059", "id060"]


def test_status_limit_shows_and_counts_this_nodes_streams(backend: tuple[str, CheckpointStore]) -> None:
    url, store = backend
    seed(store, 10)
    for n in range(11, 21):
        store.save_stream(record(n, node="box-2"))
    lines = status(url, "--limit", "4")
    if url.startswith("sqlite"):  # one box's database: every record in it is this box's
        assert ids(lines) == ["id000", "id017", "id018", "id019", "id020"]
        assert lines[-1] == "… 16 older streams not shown (--all, or --limit N)"
    else:
        # Another node's newer streams are read past, and counted out: every record was looked at.
        assert ids(lines) == ["id000", "id007", "id008", "id009", "id010"]
        assert lines[-1] == "… 6 older streams not shown (--all, or --limit N)"
    every = status(url, "--all-nodes", "--limit", "2")
    assert [line.split()[1] for line in every[1:-1]] == ["id000", "id019", "id020"]
    assert every[-1] == "… 18 older streams not shown (--all, or --limit N)"
