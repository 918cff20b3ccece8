"""Checkpoint store backends behind one Protocol (made of small role Protocols); `open_store`
picks one from a URL."""

from __future__ import annotations

from chunkd.errors import ConfigError
from chunkd.store.protocol import (
    CheckpointStore,
    ContentIndex,
    EventLog,
    JobLedger,
    LeaseStore,
    NodeRegistry,
    StoreConnection,
    StreamHistory,
    StreamLedger,
    StreamReader,
    UrlLedger,
)

REDIS_SCHEMES = ("redis://", "rediss://", "unix://", "redis+sentinel://", "rediss+sentinel://")
STATE_SCHEMES = (*REDIS_SCHEMES, "sqlite:///")

__all__ = [
    "CheckpointStore",
    "ContentIndex",
    "EventLog",
    "JobLedger",
    "LeaseStore",
    "NodeRegistry",
    "StoreConnection",
    "StreamHistory",
    "StreamLedger",
    "StreamReader",
    "UrlLedger",
    "open_store",
]


def open_store(url: str, *, exclusive: bool = False) -> CheckpointStore:
    """Open `redis://…`, `rediss://…` (TLS), `redis+sentinel://host:port,…/service/db` (the primary
    Sentinel names, followed across failovers) or `sqlite:///path` (relative to the working dir).

    `exclusive` is for the daemon: a SQLite database then refuses a second daemon (Redis is shared
    by design; leases coordinate its users)."""
    if url.startswith(REDIS_SCHEMES):
        from chunkd.store.redis import RedisStore

        return RedisStore.from_url(url)
    if url.startswith("sqlite:///"):
        from chunkd.store.sqlite import SqliteStore

        return SqliteStore(url[len("sqlite:///") :], exclusive=exclusive)
    raise ConfigError("CHUNKD_STATE_URL", f"unsupported scheme in {url.split('://')[0]!r}; use redis://, rediss://, redis+sentinel:// or sqlite:///")
