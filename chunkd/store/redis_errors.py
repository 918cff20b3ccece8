"""What a Redis failure looks like to the daemon: a StoreError that names the server and the
action, and never the password (redis-py may quote the URL it was given, secrets and all)."""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import redis

from chunkd.errors import StoreError


class RedisErrors:
    """`with errors("save url"):` turns a RedisError into a StoreError; every Redis piece of the
    store shares one."""

    def __init__(self, client: redis.Redis, *, where: str | None = None, secrets: tuple[str, ...] = ()) -> None:
        self._client = client
        self._named = where  # a Sentinel-managed client has no fixed host: say which service it is
        self._secrets = secrets  # passwords the client's own kwargs do not hold (a sentinel's)

    @contextmanager
    def __call__(self, action: str) -> Iterator[None]:
        try:
            yield
        except redis.RedisError as exc:
            raise StoreError(f"redis {self._where()}: {action} failed: {self._scrub(str(exc))}") from exc

    def _where(self) -> str:
        if self._named is not None:
            primary = getattr(self._client.connection_pool, "master_address", None)
            return self._named + (f" (primary {primary[0]}:{primary[1]})" if primary else "")
        kwargs = connection_kwargs(self._client)
        if kwargs.get("path"):
            return f"unix://{kwargs['path']}"
        return f"{kwargs.get('host', '?')}:{kwargs.get('port', '?')}/{kwargs.get('db', 0)}"

    def _scrub(self, message: str) -> str:
        password = connection_kwargs(self._client).get("password")
        for secret in (password, *self._secrets):
            if secret:
                message = message.replace(secret, "***")
        return message


def connection_kwargs(client: redis.Redis) -> dict[str, Any]:
    """What the client connects with (`get_connection_kwargs`, which the stubs leave untyped)."""
    kwargs: dict[str, Any] = client.connection_pool.connection_kwargs
    return kwargs


def redact_redis_url(url: str) -> str:
    """The URL without userinfo or query (`?password=` is legal too), safe for error messages."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return "<unparseable>"
    netloc, slash, path = rest.split("?")[0].partition("/")
    return f"{scheme}://{netloc.rpartition('@')[2]}{slash}{path}"


# The TLS files a `rediss://` URL may name (redis-py's own query parameters), and what each must be.
TLS_FILES = {"ssl_ca_certs": "file", "ssl_certfile": "file", "ssl_keyfile": "file", "ssl_ca_path": "folder"}


def check_tls_files(kwargs: Mapping[str, Any], url: str) -> None:
    """Refuse a URL naming a TLS file that cannot be read (`kwargs`: what the connections get).
    redis-py opens them at the first connection and reports a missing one as `Error 2 connecting
    to host:port. No such file or directory.`, which reads as if the server were missing."""
    for name, kind in TLS_FILES.items():
        value = kwargs.get(name)
        if not value:
            continue
        path = Path(value)
        found = path.is_dir() if kind == "folder" else path.is_file()
        if not (found and os.access(path, os.R_OK)):
            raise StoreError(f"invalid redis URL {redact_redis_url(url)}: {name}={value} is not a readable {kind}")
