"""Stream reads on SQLite: a record by id, the newest for a path, those of an object, all (or some
states') in discovery order, a page of the newest and their count, and a stream's parts. Kept apart
from the writes and the other roles (sqlite.py), as redis_reads.py is from redis.py."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from enum import Enum
from typing import Any

from chunkd.model.node import Scope
from chunkd.model.states import PartRecord, StreamRecord, StreamState

# `with read("doing what") as conn:` the store's connection, under its lock, errors made StoreErrors.
Reading = Callable[[str], AbstractContextManager[sqlite3.Connection]]


class SqliteStreamReader:
    """StreamHistory on SQLite; SqliteStore hands its stream reads here."""

    def __init__(self, read: Reading) -> None:
        self._read = read

    def get_stream(self, stream_id: str) -> StreamRecord | None:
        with self._read(f"get stream {stream_id}") as conn:
            row = conn.execute("SELECT data FROM streams WHERE id = ?", (stream_id,)).fetchone()
        return stream_record(row[0]) if row else None

    def find_by_relpath(self, relpath: str, *, scope: Scope | None = None) -> StreamRecord | None:
        # Newest by discovery, not by last save: re-saving an old stream (a retry of a failed
        # upload) must not take the path back from the file that replaced it.
        query = "SELECT data FROM streams WHERE relpath = ? ORDER BY discovered_at DESC, id DESC"
        with self._read(f"find stream for {relpath!r}") as conn:
            rows = conn.execute(query, (relpath,)).fetchall()
        records = map(stream_record, (data for (data,) in rows))
        return next((r for r in records if scope is None or scope.holds(r)), None)

    def find_by_key(self, bucket: str, key: str) -> list[StreamRecord]:
        # Looked for once per new stream: the expression index streams_by_key keeps it off a scan.
        query = (
            "SELECT data FROM streams WHERE json_extract(data, '$.bucket') = ? AND json_extract(data, '$.key') = ?"
            " ORDER BY discovered_at DESC, id DESC"
        )
        with self._read(f"find streams for s3://{bucket}/{key}") as conn:
            rows = conn.execute(query, (bucket, key)).fetchall()
        return [stream_record(row[0]) for row in rows]

    def list_streams(
        self, states: Iterable[StreamState] | None = None, *, discovered_before: float | None = None
    ) -> list[StreamRecord]:
        where, states_args = state_filter(states, StreamState)
        args: list[str | float] = [*states_args]
        if discovered_before is not None:
            where = f"{where} AND discovered_at < ?" if where else " WHERE discovered_at < ?"
            args.append(discovered_before)
        with self._read("list streams") as conn:
            rows = conn.execute(f"SELECT data FROM streams{where} ORDER BY discovered_at, id", args).fetchall()
        return [stream_record(data) for (data,) in rows]

    def newest_streams(
        self, states: Iterable[StreamState] | None = None, *, limit: int, offset: int = 0
    ) -> list[StreamRecord]:
        # streams_by_discovery, walked backwards: the skipped rows are never decoded.
        where, args = state_filter(states, StreamState)
        query = f"SELECT data FROM streams{where} ORDER BY discovered_at DESC, id DESC LIMIT ? OFFSET ?"
        with self._read("list the newest streams") as conn:
            rows = conn.execute(query, [*args, max(0, limit), max(0, offset)]).fetchall()
        return [stream_record(data) for (data,) in rows]

    def count_streams(self, states: Iterable[StreamState] | None = None) -> int:
        where, args = state_filter(states, StreamState)
        with self._read("count streams") as conn:
            return int(conn.execute(f"SELECT COUNT(*) FROM streams{where}", args).fetchone()[0])

    def list_parts(self, stream_id: str) -> list[PartRecord]:
        query = "SELECT data FROM parts WHERE stream_id = ? ORDER BY number"
        with self._read(f"list parts of stream {stream_id}") as conn:
            rows = conn.execute(query, (stream_id,)).fetchall()
        return [PartRecord.from_dict(json.loads(data)) for (data,) in rows]


def state_filter(states: Iterable[Any] | None, kind: type[Enum]) -> tuple[str, list[str]]:
    """` WHERE state IN (?, …)` and its arguments, or nothing when every state is wanted."""
    if states is None:
        return "", []
    args = [kind(state).value for state in states]
    return f" WHERE state IN ({', '.join('?' * len(args))})", args


def stream_record(data: str) -> StreamRecord:
    """A stream's record from its `data` column."""
    return StreamRecord.from_dict(json.loads(data))
