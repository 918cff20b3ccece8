"""What a Redis failure looks like to the daemon: a StoreError that names the server and the
action, and never the password (redis-py may quote the URL it was given, secrets and all)."""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import redis

from chunkd.errors import StoreError, StoreFullError

# Replies of a Redis that answers reads but refuses every write, and what each means. MISCONF: a
# snapshot (or an AOF write) failed, typically on a full disk, and `stop-writes-on-bgsave-error`
# holds writes (PING too) until a save succeeds. OOM: `maxmemory` reached under a noeviction policy.
_REFUSALS = {"MISCONF": "Redis cannot save to its disk", "OOM": "Redis is out of memory (maxmemory)"}


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
            refused = write_refusal(exc)
            if refused is not None:
                why, said = refused
                raise StoreFullError(f"redis {self._where()}: {action} refused: {self._scrub(said)}", why=why) from exc
            raise StoreError(f"redis {self._where()}: {action} failed: {self._scrub(str(exc))}{self._hint(exc)}") from exc

    def _hint(self, exc: redis.RedisError) -> str:
        """A TLS server that wants a client certificate drops a client without one, and the TLS
        library says so only some of the time ("certificate required"; else a bare "EOF occurred in
        violation of protocol"): name the likely cause when the URL gave none."""
        pool = self._client.connection_pool
        tls = issubclass(getattr(pool, "connection_class", object), redis.SSLConnection)
        if not tls or connection_kwargs(self._client).get("ssl_certfile") or not isinstance(exc, redis.ConnectionError):
            return ""
        said = str(exc).lower()
        if "certificate required" in said or "eof occurred in violation of protocol" in said:
            return (" (if the server requires client certificates, `tls-auth-clients yes`, add ssl_certfile= "
                    "and ssl_keyfile= to the URL)")
        return ""

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


def write_refusal(exc: redis.RedisError) -> tuple[str, str] | None:
    """(what it means, what Redis said) when `exc` is Redis refusing writes it would take again
    later (see _REFUSALS). What it said is its reply's first sentence with its code: not the
    pipeline's "Command # 1 (HSET … <the record>) of pipeline caused error:" nor a script's name."""
    code = getattr(exc, "status_code", None)
    if isinstance(exc, redis.exceptions.OutOfMemoryError):
        code = "OOM"
    if not isinstance(exc, redis.ResponseError) or code not in _REFUSALS:
        return None
    reply = str(exc).partition("caused error: ")[2] or str(exc)
    reply = reply if reply.startswith(f"{code} ") else f"{code} {reply}"  # redis-py strips some codes (OOM)
    first, stop, _ = reply.partition(". ")
    return _REFUSALS[code], first + stop.strip()


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
    to host:port. No such file or directory.`, which reads as if the server were missing; and a key
    without its certificate (ssl_certfile) as a `TypeError` traceback."""
    for name, kind in TLS_FILES.items():
        value = kwargs.get(name)
        if not value:
            continue
        path = Path(value)
        found = path.is_dir() if kind == "folder" else path.is_file()
        if not (found and os.access(path, os.R_OK)):
            raise StoreError(f"invalid redis URL {redact_redis_url(url)}: {name}={value} is not a readable {kind}")
    if kwargs.get("ssl_keyfile") and not kwargs.get("ssl_certfile"):
        raise StoreError(f"invalid redis URL {redact_redis_url(url)}: ssl_keyfile without ssl_certfile "
                         "(a client certificate needs both)")
