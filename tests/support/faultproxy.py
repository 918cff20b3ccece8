"""A fault-injecting HTTP proxy in front of an S3 test server (moto, `rclone serve s3`, Ceph RGW).

Requests pass on unchanged, Host header included, so SigV4 signatures stay valid; each answer is
read whole from the server and passed back. Rules pick requests by method, path and query and fire
a fault a given number of times, for the failures a network or a faulty middlebox causes and a
well-behaved server never does:

- FLIP_BIT: one bit of the request body flipped before it is forwarded (damage in flight);
- DROP_REPLY: forwarded, then the client's connection closed without the answer (the server did
  it, the reply got lost);
- RESET: the connection reset without forwarding anything;
- ERROR_500 / SLOW_DOWN: an error answered by the proxy, without forwarding;
- ACCESS_DENIED: 403 AccessDenied answered by the proxy, as S3 refuses what a bucket policy denies
  (a rule matching on `Seen.headers` plays a policy's Condition).

One upstream connection per request keeps the relay simple; a test's traffic is small.
"""

from __future__ import annotations

import enum
import http.client
import socket
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, unquote

from tests.support.loopback_proxy import LoopbackProxy, RelayHandler, put_request, send_answer
from tests.support.s3_servers import make_client


class Fault(enum.Enum):
    FLIP_BIT = "flip-bit"
    DROP_REPLY = "drop-reply"
    RESET = "reset"
    ERROR_500 = "500"
    SLOW_DOWN = "503"
    ACCESS_DENIED = "403"


@dataclass(frozen=True)
class Seen:
    """A request as the proxy saw it: `path` unquoted ("/bucket/key"), `query` parsed, `headers`
    with lower-case names."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str] = field(default_factory=dict)


Match = Callable[[Seen], bool]


def on(method: str, path: str | None = None, *, prefix: str | None = None, query: str | None = None) -> Match:
    """Requests with this method, exact path (or path prefix), and `query` among their parameters
    ("uploads" for CreateMultipartUpload, "partNumber" for UploadPart)."""

    def matches(seen: Seen) -> bool:
        return (
            seen.method == method
            and (path is None or seen.path == path)
            and (prefix is None or seen.path.startswith(prefix))
            and (query is None or query in seen.query)
        )

    return matches


def without_query(match: Match, *names: str) -> Match:
    """`match`, for requests carrying none of `names` (a PutObject, not an UploadPart)."""
    return lambda seen: match(seen) and not any(name in seen.query for name in names)


@dataclass
class Rule:
    fault: Fault
    match: Match
    times: int = 1
    fired: int = 0


@dataclass(frozen=True)
class Fired:
    """A fault that fired: `status` is the server's answer when the request was forwarded (for
    DROP_REPLY, what the client lost); `original` the body before FLIP_BIT damaged it."""

    fault: Fault
    seen: Seen
    status: int | None = None
    original: bytes | None = None


@dataclass
class _Log:
    lock: threading.Lock = field(default_factory=threading.Lock)
    rules: list[Rule] = field(default_factory=list)
    fired: list[Fired] = field(default_factory=list)
    seen: list[Seen] = field(default_factory=list)


class FaultProxy(LoopbackProxy):
    """`endpoint_url` points clients (and chunkd) at the proxy; `add` arms a rule; `fired` says what
    happened. Usable as a context manager; `upstream` is the server's own address."""

    thread_name = "fault-proxy"

    def __init__(self, upstream_url: str) -> None:
        super().__init__(upstream_url)
        self._log = _Log()

    def add(self, fault: Fault, match: Match, *, times: int = 1) -> Rule:
        rule = Rule(fault, match, times)
        with self._log.lock:
            self._log.rules.append(rule)
        return rule

    @property
    def fired(self) -> list[Fired]:
        with self._log.lock:
            return list(self._log.fired)

    @property
    def seen(self) -> list[Seen]:
        """Every request that reached the proxy, in order of arrival."""
        with self._log.lock:
            return list(self._log.seen)

    # -- the relay -----------------------------------------------------------------------------

    def _take(self, seen: Seen) -> Fault | None:
        """The fault of the first rule that matches and has shots left, counting the shot."""
        with self._log.lock:
            self._log.seen.append(seen)
            for rule in self._log.rules:
                if rule.fired < rule.times and rule.match(seen):
                    rule.fired += 1
                    return rule.fault
        return None

    def _record(self, fault: Fault, seen: Seen, status: int | None = None, original: bytes | None = None) -> None:
        with self._log.lock:
            self._log.fired.append(Fired(fault, seen, status, original))

    def relay(self, handler: RelayHandler) -> None:
        raw_path, _, query = handler.path.partition("?")
        headers = {name.lower(): value for name, value in handler.headers.items()}
        seen = Seen(handler.command, unquote(raw_path), parse_qs(query, keep_blank_values=True), headers)
        fault = self._take(seen)
        if fault is Fault.RESET:
            self._record(fault, seen)
            _reset(handler)
            return
        body = handler.rfile.read(int(handler.headers.get("Content-Length") or 0))
        if fault in _ERRORS:
            self._record(fault, seen)
            _error(handler, fault)
            return
        original = body if fault is Fault.FLIP_BIT else None
        if original:
            middle = len(original) // 2
            body = original[:middle] + bytes([original[middle] ^ 0x01]) + original[middle + 1:]
        status, reason, headers, answer = self._forward(handler, body)
        if fault is not None:
            self._record(fault, seen, status, original)
        if fault is Fault.DROP_REPLY:
            handler.close_connection = True
            return
        send_answer(handler, status, reason, headers, answer)

    def _forward(self, handler: RelayHandler, body: bytes) -> tuple[int, str, list[tuple[str, str]], bytes]:
        upstream = http.client.HTTPConnection(*self.upstream, timeout=120)
        try:
            put_request(handler, upstream)
            upstream.endheaders(body or None)
            response = upstream.getresponse()
            return response.status, response.reason, response.getheaders(), response.read()
        finally:
            upstream.close()


_ERRORS = {
    Fault.ERROR_500: (500, "InternalError", "We encountered an internal error. Please try again."),
    Fault.SLOW_DOWN: (503, "SlowDown", "Please reduce your request rate."),
    Fault.ACCESS_DENIED: (403, "AccessDenied", "Access Denied"),
}


def _reset(handler: RelayHandler) -> None:
    """Close with SO_LINGER 0: the client sees a reset, not an orderly end."""
    handler.close_connection = True
    handler.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    handler.connection.close()


def _error(handler: RelayHandler, fault: Fault) -> None:
    status, code, message = _ERRORS[fault]
    body = (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code><Message>{message}</Message>'
            "<RequestId>fault-proxy</RequestId></Error>").encode()
    handler.send_response_only(status)
    handler.send_header("Content-Type", "application/xml")
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    if handler.command != "HEAD":
        handler.wfile.write(body)
    handler.wfile.flush()


@dataclass(frozen=True)
class Proxied:
    """An S3 test server seen through a FaultProxy: the same credentials, the proxy's endpoint.
    `direct` is the server itself, for checking what it really holds."""

    direct: Any
    proxy: FaultProxy

    @property
    def endpoint_url(self) -> str:
        return self.proxy.endpoint_url

    @property
    def access_key(self) -> str:
        return str(self.direct.access_key)

    @property
    def secret_key(self) -> str:
        return str(self.direct.secret_key)

    def client(self) -> Any:
        """A boto3 client on the server itself, past the proxy."""
        return make_client(self.direct.endpoint_url, self.access_key, self.secret_key)
