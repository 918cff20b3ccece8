"""SQLite checkpoint store: one file next to the daemon, no server to run.

Single host, single daemon: the daemon takes an exclusive lock on `<db>.lock` (see `exclusive`),
and leases live in this process's memory. Several daemons need the Redis store. The stream reads
are one class (sqlite_reads.py) that `SqliteStore` composes and hands them to, as RedisStore does.
"""

from __future__ import annotations

import fcntl
import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from chunkd.errors import LeaseLostError, StoreError, StoreFullError
from chunkd.model.node import Scope
from chunkd.model.states import (
    PartRecord,
    StreamRecord,
    StreamState,
    UrlRecord,
    UrlState,
)
from chunkd.store.guard import cancelled, check_not_finished
from chunkd.store.lease import Lease, Renewal
from chunkd.store.sqlite_reads import SqliteStreamReader, state_filter, stream_record

_SCHEMA = """
CREATE TABLE IF NOT EXISTS streams (
    id TEXT PRIMARY KEY,
    relpath TEXT NOT NULL,
    state TEXT NOT NULL,
    discovered_at REAL NOT NULL,
    data TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS streams_by_discovery ON streams (discovered_at, id);
CREATE INDEX IF NOT EXISTS streams_by_state ON streams (state, discovered_at, id);
CREATE INDEX IF NOT EXISTS streams_by_relpath ON streams (relpath, discovered_at, id);
CREATE INDEX IF NOT EXISTS streams_by_key ON streams (json_extract(data, '$.bucket'), json_extract(data, '$.key'));
CREATE TABLE IF NOT EXISTS parts (
    stream_id TEXT NOT NULL,
    number INTEGER NOT NULL,
    data TEXT NOT NULL,
    PRIMARY KEY (stream_id, number)
);
CREATE TABLE IF NOT EXISTS content (
    sha256 TEXT PRIMARY KEY,
    stream_id TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS content_sizes (
    size INTEGER PRIMARY KEY
);
CREATE TABLE IF NOT EXISTS urls (
    url TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    created_at REAL NOT NULL,
    data TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    ts REAL NOT NULL,
    data TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_by_ts ON events (ts);
CREATE TABLE IF NOT EXISTS nodes (
    node TEXT PRIMARY KEY,
    expires_at REAL NOT NULL,
    data TEXT NOT NULL
);
"""

_SAVE_STREAM = """
INSERT INTO streams (id, relpath, state, discovered_at, data) VALUES (?, ?, ?, ?, ?)
ON CONFLICT (id) DO UPDATE SET
    relpath = excluded.relpath, state = excluded.state,
    discovered_at = excluded.discovered_at, data = excluded.data
"""

_RECORD_PART = """
INSERT INTO parts (stream_id, number, data) VALUES (?, ?, ?)
ON CONFLICT (stream_id, number) DO UPDATE SET data = excluded.data
"""

# Keeps the newest `maxlen` rows. Ids grow by one per event (AUTOINCREMENT, and rows only ever go
# from the bottom), so "maxlen rows down from the newest" is an id range: a seek, not the walk of
# `maxlen` rows an ORDER BY ... OFFSET makes on every append.
_PRUNE_EVENTS = "DELETE FROM events WHERE id <= ?"


class SqliteStore:
    """CheckpointStore on a SQLite file, shared by every thread of the daemon.

    One connection guarded by a lock: SQLite serialises writers anyway, and a single connection
    keeps each call one transaction without per-thread connection bookkeeping.
    """

    def __init__(self, path: str, *, exclusive: bool = False) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._lock_file = _take_lock(path) if exclusive and path != ":memory:" else None
        self._conn = self._connect(path)
        self.reads = SqliteStreamReader(self._read)
        self._leases: dict[str, tuple[str, int, float]] = {}  # name -> (owner, token, expires)
        self._fences: dict[str, int] = {}

    @staticmethod
    def _connect(path: str) -> sqlite3.Connection:
        try:
            if path != ":memory:":
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            # isolation_level=None: we issue BEGIN/COMMIT ourselves, so a call is exactly one transaction.
            conn = sqlite3.connect(path, timeout=30.0, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            # NORMAL in WAL mode: a commit survives the process being killed (kill -9, OOM), and
            # only a power cut or kernel crash can lose the last commits. Resume repairs exactly that
            # from the bucket: parts the ledger lacks are adopted by MD5 (ListParts), an upload id it
            # lacks is found with ListMultipartUploads, a completed file by its manifest. FULL would
            # fsync each of the ~8 commits a small file makes (2.6 ms each here, under one lock).
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.executescript(_SCHEMA)
            return conn
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"sqlite {path}: cannot open state database: {exc}") from exc

    @contextmanager
    def _transaction(self, action: str) -> Iterator[sqlite3.Connection]:
        with self._lock, self._errors(action):
            # IMMEDIATE takes the write lock up front, so another process's writer makes us wait
            # (busy timeout) instead of failing halfway through with SQLITE_BUSY.
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
                self._conn.execute("COMMIT")
            except BaseException:
                # Also after a failed COMMIT, or the next BEGIN would find a transaction still open.
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                raise

    @contextmanager
    def _read(self, action: str) -> Iterator[sqlite3.Connection]:
        with self._lock, self._errors(action):
            yield self._conn

    @contextmanager
    def _errors(self, action: str) -> Iterator[None]:
        try:
            yield
        except sqlite3.Error as exc:
            kind = StoreFullError if _disk_full(exc) else StoreError
            raise kind(f"sqlite {self.path}: {action} failed: {exc}") from exc

    def save_stream(
        self, record: StreamRecord, *, fence: Lease | None = None, guard: bool = False, index: bool = False
    ) -> None:
        with self._transaction(f"save stream {record.id}") as conn:
            self._check_fence(fence)
            if guard:
                check_not_finished(_stored(conn, record.id), record)
            conn.execute(_SAVE_STREAM, _stream_row(record))
            if index and record.sha256:
                _index(conn, record.sha256, record.id, record.size)

    def cancel_stream(self, stream_id: str, reason: str) -> StreamRecord | None:
        with self._transaction(f"cancel stream {stream_id}") as conn:
            record = cancelled(_stored(conn, stream_id), reason)
            if record is not None:
                conn.execute(_SAVE_STREAM, _stream_row(record))
        return record

    # stream reads (see sqlite_reads)

    def get_stream(self, stream_id: str) -> StreamRecord | None:
        return self.reads.get_stream(stream_id)

    def find_by_relpath(self, relpath: str, *, scope: Scope | None = None) -> StreamRecord | None:
        return self.reads.find_by_relpath(relpath, scope=scope)

    def find_by_key(self, bucket: str, key: str) -> list[StreamRecord]:
        return self.reads.find_by_key(bucket, key)

    def list_streams(
        self, states: Iterable[StreamState] | None = None, *, discovered_before: float | None = None
    ) -> list[StreamRecord]:
        return self.reads.list_streams(states, discovered_before=discovered_before)

    def newest_streams(
        self, states: Iterable[StreamState] | None = None, *, limit: int, offset: int = 0
    ) -> list[StreamRecord]:
        return self.reads.newest_streams(states, limit=limit, offset=offset)

    def count_streams(self, states: Iterable[StreamState] | None = None) -> int:
        return self.reads.count_streams(states)

    def list_parts(self, stream_id: str) -> list[PartRecord]:
        return self.reads.list_parts(stream_id)

    def record_part(self, stream_id: str, part: PartRecord, *, fence: Lease | None = None) -> None:
        with self._transaction(f"record part {part.number} of stream {stream_id}") as conn:
            self._check_fence(fence)
            conn.execute(_RECORD_PART, (stream_id, part.number, json.dumps(part.to_dict())))

    def drop_parts(
        self, stream_id: str, numbers: Iterable[int] | None = None, *, fence: Lease | None = None
    ) -> None:
        with self._transaction(f"drop parts of stream {stream_id}") as conn:
            self._check_fence(fence)
            if numbers is None:
                conn.execute("DELETE FROM parts WHERE stream_id = ?", (stream_id,))
            else:
                rows = [(stream_id, int(number)) for number in numbers]
                conn.executemany("DELETE FROM parts WHERE stream_id = ? AND number = ?", rows)

    def index_content(self, sha256: str, stream_id: str, *, size: int | None = None) -> None:
        with self._transaction(f"index content of stream {stream_id}") as conn:
            _index(conn, sha256, stream_id, size)

    def may_hold_size(self, size: int) -> bool:
        with self._read("look up content size") as conn:
            if conn.execute("SELECT 1 FROM content_sizes WHERE size = ?", (size,)).fetchone():
                return True
            # Content indexed before sizes were kept: cannot rule it out.
            sizes_kept = conn.execute("SELECT 1 FROM content_sizes LIMIT 1").fetchone()
            return not sizes_kept and conn.execute("SELECT 1 FROM content LIMIT 1").fetchone() is not None

    def find_by_content(self, sha256: str) -> StreamRecord | None:
        query = "SELECT s.data FROM content c JOIN streams s ON s.id = c.stream_id WHERE c.sha256 = ?"
        with self._read("find stream by content") as conn:
            row = conn.execute(query, (sha256,)).fetchone()
        return stream_record(row[0]) if row else None

    def forget_content(self, sha256: str) -> None:
        with self._transaction("forget content") as conn:
            conn.execute("DELETE FROM content WHERE sha256 = ?", (sha256,))

    def delete_stream(self, stream_id: str) -> None:
        with self._transaction(f"delete stream {stream_id}") as conn:
            conn.execute("DELETE FROM parts WHERE stream_id = ?", (stream_id,))
            conn.execute("DELETE FROM content WHERE stream_id = ?", (stream_id,))
            conn.execute("DELETE FROM streams WHERE id = ?", (stream_id,))

    def append_event(self, event: dict[str, Any], *, maxlen: int) -> None:
        row = (float(event.get("ts") or time.time()), json.dumps(event))
        with self._transaction("append event") as conn:
            newest = conn.execute("INSERT INTO events (ts, data) VALUES (?, ?)", row).lastrowid or 0
            conn.execute(_PRUNE_EVENTS, (newest - max(1, maxlen),))

    def list_events(self, *, since: float | None = None, limit: int = 1000) -> list[dict[str, Any]]:
        query = "SELECT data FROM events WHERE ts >= ? ORDER BY id DESC LIMIT ?"
        with self._read("list events") as conn:
            rows = conn.execute(query, (float("-inf") if since is None else since, max(0, limit))).fetchall()
        return [json.loads(data) for (data,) in reversed(rows)]

    def save_url(self, record: UrlRecord) -> None:
        row = (record.url, record.state.value, record.created_at, json.dumps(record.to_dict()))
        with self._transaction(f"save url {record.display}") as conn:
            conn.execute("INSERT OR REPLACE INTO urls (url, state, created_at, data) VALUES (?, ?, ?, ?)", row)

    def get_url(self, url: str) -> UrlRecord | None:
        with self._read("get url") as conn:
            row = conn.execute("SELECT data FROM urls WHERE url = ?", (url,)).fetchone()
        return UrlRecord.from_dict(json.loads(row[0])) if row else None

    def list_urls(self, states: Iterable[UrlState] | None = None) -> list[UrlRecord]:
        where, args = state_filter(states, UrlState)
        with self._read("list urls") as conn:
            rows = conn.execute(f"SELECT data FROM urls{where} ORDER BY created_at, url", args).fetchall()
        return [UrlRecord.from_dict(json.loads(data)) for (data,) in rows]

    def beat(self, node: str, info: dict[str, Any], *, ttl: float) -> None:
        """A row per node (one box: this daemon's, and `chunkd nodes` reading it)."""
        now = time.time()
        row = (node, now + ttl, json.dumps({**info, "node": node, "seen_at": now}))
        with self._transaction(f"heartbeat of node {node}") as conn:
            conn.execute("INSERT OR REPLACE INTO nodes (node, expires_at, data) VALUES (?, ?, ?)", row)

    def list_nodes(self) -> list[dict[str, Any]]:
        query = "SELECT data FROM nodes WHERE expires_at > ? ORDER BY node"
        with self._read("list nodes") as conn:
            rows = conn.execute(query, (time.time(),)).fetchall()
        return [json.loads(data) for (data,) in rows]

    # leases: in memory, as only this process may use the database (see `exclusive`)

    def _check_fence(self, fence: Lease | None) -> None:
        """Called with the store lock held, inside the write's transaction."""
        if fence is not None and self._fences.get(fence.name) != fence.token:
            raise LeaseLostError(f"a newer lease on {fence.name!r} was issued")

    def acquire_lease(self, name: str, owner: str, ttl: float, *, steal_from: str | None = None) -> int | None:
        with self._lock:
            held = self._leases.get(name)
            if held is not None and held[2] > time.monotonic() and held[0] != steal_from:
                return None
            token = self._fences.get(name, 0) + 1
            self._fences[name] = token
            self._leases[name] = (owner, token, time.monotonic() + ttl)
            return token

    def lease_owner(self, name: str) -> str | None:
        with self._lock:
            held = self._leases.get(name)
            return held[0] if held is not None and held[2] > time.monotonic() else None

    def renew_lease(self, lease: Lease, ttl: float) -> Renewal:
        with self._lock:
            if self._fences.get(lease.name) != lease.token:
                return Renewal.LOST
            self._leases[lease.name] = (lease.owner, lease.token, time.monotonic() + ttl)
            return Renewal.HELD

    def release_lease(self, lease: Lease) -> None:
        with self._lock:
            held = self._leases.get(lease.name)
            if held is not None and held[:2] == (lease.owner, lease.token):
                del self._leases[lease.name]

    def forget_lease(self, name: str) -> bool:
        with self._lock:
            held = self._leases.get(name)
            if held is not None and held[2] > time.monotonic():
                return False
            self._leases.pop(name, None)
            self._fences.pop(name, None)
            return True

    def ping(self) -> None:
        with self._read("ping") as conn:
            conn.execute("SELECT 1").fetchone()

    def data_mark(self) -> str:
        """Constant: the database is the daemon's own file (locked), not a server that can lose it."""
        return f"sqlite:{self.path}"

    def close(self) -> None:
        with self._lock, self._errors("close"):
            self._conn.close()
        if self._lock_file is not None:
            self._lock_file.close()  # closing the descriptor drops the flock


def _take_lock(path: str) -> Any:
    """Refuse a second daemon on this database: SQLite state is for one daemon on one host."""
    lock_path = f"{path}.lock"
    try:
        Path(lock_path).parent.mkdir(parents=True, exist_ok=True)
        handle = open(lock_path, "a+")  # noqa: SIM115 - held open for the store's lifetime
    except OSError as exc:
        raise StoreError(f"sqlite {path}: cannot open lock file {lock_path}: {exc.strerror}") from exc
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.seek(0)
        holder = handle.read().strip() or "?"
        handle.close()
        raise StoreError(
            f"sqlite {path} is in use by another chunkd daemon (pid {holder}); SQLite state is for one "
            "daemon on one host — run several daemons against Redis (CHUNKD_STATE_URL=redis://…)"
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(str(os.getpid()))
    handle.flush()
    return handle


def _disk_full(exc: sqlite3.Error) -> bool:
    """SQLITE_FULL: a write found no room on the database's filesystem (ENOSPC, EDQUOT). Reads still work."""
    code = getattr(exc, "sqlite_errorcode", None)
    return (code is not None and code & 0xFF == sqlite3.SQLITE_FULL) or "database or disk is full" in str(exc)


def _stream_row(record: StreamRecord) -> tuple[str, str, str, float, str]:
    return record.id, record.relpath, record.state.value, record.discovered_at, json.dumps(record.to_dict())


def _index(conn: sqlite3.Connection, sha256: str, stream_id: str, size: int | None) -> None:
    """Inside a write's transaction: these bytes are held by this stream (the newest wins)."""
    conn.execute("INSERT OR REPLACE INTO content (sha256, stream_id) VALUES (?, ?)", (sha256, stream_id))
    if size is not None:
        conn.execute("INSERT OR IGNORE INTO content_sizes (size) VALUES (?)", (size,))


def _stored(conn: sqlite3.Connection, stream_id: str) -> StreamRecord | None:
    """Inside a write's transaction, the record that write is checked against."""
    row = conn.execute("SELECT data FROM streams WHERE id = ?", (stream_id,)).fetchone()
    return stream_record(row[0]) if row else None
