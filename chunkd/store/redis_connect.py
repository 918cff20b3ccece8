"""A Redis client from a state URL: `redis://`, `rediss://` (TLS), `unix://` or `redis+sentinel://`
(redis_sentinel.py), with the timeouts every store connection needs. Kept apart from the store
(redis.py), which is handed the client and keeps to the stream writes and the roles it composes."""

from __future__ import annotations

from typing import Any

import redis

from chunkd.errors import StoreError
from chunkd.store.redis_errors import RedisErrors, check_tls_files, connection_kwargs, redact_redis_url
from chunkd.store.redis_sentinel import SCHEMES as SENTINEL_SCHEMES
from chunkd.store.redis_sentinel import parse_sentinel_url, sentinel_client


def connect(url: str) -> tuple[redis.Redis, RedisErrors | None]:
    """The client, and the errors that name a Sentinel-managed one (None: the client's own host)."""
    options: dict[str, Any] = {
        "decode_responses": True,
        "socket_connect_timeout": 5,
        # Without a read timeout a half-dead server would hang a worker forever.
        "socket_timeout": 30,
        "health_check_interval": 30,
    }
    if url.startswith(SENTINEL_SCHEMES):
        try:
            parsed = parse_sentinel_url(url)
        except ValueError as exc:  # our own message, which never quotes the URL
            raise StoreError(f"invalid redis URL {redact_redis_url(url)}: {exc}") from None
        check_tls_files(parsed.tls, url)
        client = sentinel_client(parsed, **options)
        return client, RedisErrors(client, where=parsed.where, secrets=parsed.secrets)
    try:
        client = redis.Redis.from_url(url, **options)
    except ValueError as exc:  # malformed URL; the message may quote it, password and all
        raise StoreError(f"invalid redis URL {redact_redis_url(url)}") from exc
    check_tls_files(connection_kwargs(client), url)
    return client, None
