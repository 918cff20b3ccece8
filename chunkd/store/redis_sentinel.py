"""Redis behind Sentinel: the client asks the sentinels where the primary is, and asks again after
every lost connection, so a failover costs the daemon a store outage of a few seconds, not a restart.

    redis+sentinel://[[user]:password@]host1:26379,host2:26379[,…]/service[/db][?sentinel_password=…]

The userinfo is the primary's (and replicas') password; sentinels that want one of their own get it
from `sentinel_password` (and `sentinel_username`). `rediss+sentinel://` speaks TLS to the primary
and replicas; `sentinel_ssl=true` to the sentinels too (their `tls-port`: a sentinel may listen on a
plain port, a TLS one or both, so plain stays the default). redis-py's TLS query parameters
(`ssl_ca_certs=/path/ca.pem`, `ssl_certfile`, `ssl_keyfile`, `ssl_cert_reqs`, …, what `rediss://`
takes, parsed by redis-py's own URL parser) apply to every TLS connection of the two.
"""

from __future__ import annotations

import inspect
import logging
import threading
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, unquote, urlencode

import redis
from redis.connection import SSLConnection, parse_url
from redis.sentinel import Sentinel

logger = logging.getLogger("chunkd.store")

SCHEMES = ("redis+sentinel://", "rediss+sentinel://")
# What a TLS connection takes from a `rediss://` URL: redis-py's own `ssl_*` parameters.
TLS_PARAMETERS = frozenset(name for name in inspect.signature(SSLConnection.__init__).parameters if name.startswith("ssl_"))
OWN_PARAMETERS = frozenset({"sentinel_password", "sentinel_username", "sentinel_ssl"})
BOOLEANS = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}


@dataclass(frozen=True)
class SentinelUrl:
    sentinels: tuple[tuple[str, int], ...]
    service: str
    db: int = 0
    username: str | None = None
    password: str | None = None
    sentinel_username: str | None = None
    sentinel_password: str | None = None
    ssl: bool = False  # TLS to the primary and replicas
    sentinel_ssl: bool = False  # TLS to the sentinels
    tls: dict[str, Any] = field(default_factory=dict)  # the ssl_* keyword arguments of every TLS connection

    @property
    def secrets(self) -> tuple[str, ...]:
        return tuple(s for s in (self.password, self.sentinel_password, self.tls.get("ssl_password")) if s)

    @property
    def where(self) -> str:
        """How errors name it: the service and its sentinels, never a password."""
        hosts = ",".join(f"{host}:{port}" for host, port in self.sentinels)
        return f"sentinel {self.service} via {hosts}/{self.db}"


def parse_sentinel_url(url: str) -> SentinelUrl:
    """Raises ValueError with a message that never quotes the URL (it may hold passwords)."""
    scheme, _, rest = url.partition("://")
    rest, _, query = rest.partition("?")
    netloc, _, path = rest.partition("/")
    userinfo, at, hosts = netloc.rpartition("@")
    username, _, password = userinfo.partition(":") if at else ("", "", "")
    names = [segment for segment in path.split("/") if segment]
    if not names or len(names) > 2:
        raise ValueError("a sentinel URL names the service after the hosts: /mymaster or /mymaster/0")
    if len(names) == 2 and not names[1].isdigit():
        raise ValueError("the database after the service name must be a number")
    params = {name: values[-1] for name, values in parse_qs(query).items()}
    unknown = sorted(set(params) - OWN_PARAMETERS - TLS_PARAMETERS)
    if unknown:
        raise ValueError(
            f"unknown sentinel URL parameter(s): {', '.join(unknown)} (it takes sentinel_password, "
            "sentinel_username, sentinel_ssl and the TLS parameters of rediss://: ssl_ca_certs, ssl_certfile, …)"
        )
    ssl, sentinel_ssl = scheme == "rediss+sentinel", _boolean("sentinel_ssl", params.get("sentinel_ssl", "false"))
    tls = _tls_options({name: value for name, value in params.items() if name in TLS_PARAMETERS})
    if tls and not (ssl or sentinel_ssl):
        raise ValueError(f"{', '.join(sorted(tls))} needs TLS: rediss+sentinel:// (primary) or sentinel_ssl=true (sentinels)")
    return SentinelUrl(
        sentinels=tuple(_host_port(entry) for entry in hosts.split(",")),
        service=unquote(names[0]),
        db=int(names[1]) if len(names) == 2 else 0,
        username=unquote(username) or None,
        password=unquote(password) or None,
        sentinel_username=params.get("sentinel_username") or None,
        sentinel_password=params.get("sentinel_password") or None,
        ssl=ssl,
        sentinel_ssl=sentinel_ssl,
        tls=tls,
    )


def _boolean(name: str, value: str) -> bool:
    try:
        return BOOLEANS[value.strip().lower()]
    except KeyError:
        raise ValueError(f"{name} must be true or false") from None


def _tls_options(params: dict[str, str]) -> dict[str, Any]:
    """The `ssl_*` parameters typed as `rediss://` types them: by redis-py's URL parser itself.
    Its errors (`Invalid value for 'ssl_min_version' in connection URL.`) quote no URL."""
    parsed: dict[str, Any] = parse_url(f"rediss://localhost/?{urlencode(params)}")  # type: ignore[no-untyped-call]
    return {name: value for name, value in parsed.items() if name in TLS_PARAMETERS}


def _host_port(entry: str) -> tuple[str, int]:
    host, _, port = entry.strip().rpartition(":")
    if not host:
        host, port = port, "26379"
    if not host or not port.isdigit():
        raise ValueError("sentinel hosts are host:port pairs separated by commas")
    return host.strip("[]"), int(port)


class WatchedSentinel(Sentinel):
    """A Sentinel that says, once per change, when the primary it points clients at moved.

    redis-py asks `discover_master` on every new connection; a failover shows up as a new address.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._lock = threading.Lock()
        self.primary: tuple[str, int] | None = None
        self.failovers = 0  # changes of primary seen: each may have lost the last acknowledged writes

    def discover_master(self, service_name: str) -> tuple[str, int]:
        found = super().discover_master(service_name)
        address = (str(found[0]), int(found[1]))
        with self._lock:
            before, self.primary = self.primary, address
            moved = before is not None and before != address
            self.failovers += moved
        if moved and before is not None:
            logger.warning(
                "state store primary changed from %s to %s (Sentinel failover of %r)",
                _show(before), _show(address), service_name,
            )
        return address


def _show(address: tuple[str, int]) -> str:
    return f"{address[0]}:{address[1]}"


def sentinel_client(parsed: SentinelUrl, **options: Any) -> redis.Redis:
    """The primary's client (`master_for`): its pool rediscovers the primary after a failover."""
    sentinel_kwargs: dict[str, Any] = {
        key: value for key, value in options.items() if key.startswith("socket_")
    }
    if parsed.sentinel_password:
        sentinel_kwargs["password"] = parsed.sentinel_password
    if parsed.sentinel_username:
        sentinel_kwargs["username"] = parsed.sentinel_username
    if parsed.sentinel_ssl:
        sentinel_kwargs.update(ssl=True, **parsed.tls)
    sentinel = WatchedSentinel(list(parsed.sentinels), sentinel_kwargs=sentinel_kwargs)
    tls = {"ssl": True, **parsed.tls} if parsed.ssl else {}
    client: redis.Redis = sentinel.master_for(
        parsed.service, db=parsed.db, username=parsed.username, password=parsed.password, **tls, **options,
    )
    return client
