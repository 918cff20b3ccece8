"""The daemon's HTTP endpoint: /healthz and /readyz for orchestrators, /metrics for Prometheus,
/status for people.

A stdlib ThreadingHTTPServer on a daemon thread: no framework, nothing to install. With a token
set, /metrics and /status want `Authorization: Bearer <token>`; the health probes stay open for
container health checks and so only ever say ok and the names of their checks.
"""

from __future__ import annotations

import errno
import hmac
import json
import logging
import socket
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from chunkd.observe.metrics import Metrics

logger = logging.getLogger("chunkd.http")

REQUEST_TIMEOUT = 10.0  # seconds a client may take to send its request; a stuck one holds a thread
JSON = "application/json"


@dataclass
class Check:
    """A probe's verdict. `detail` maps check name -> True when it passes, or anything else
    (False, an error message) when it does not; only the names and pass/fail go over HTTP."""

    ok: bool
    detail: dict[str, Any]
    ages: dict[str, float] = field(default_factory=dict)  # seconds since a background check's last answer


def parse_addr(addr: str) -> tuple[str, int]:
    """'host:port' or '[v6]:port' -> (host, port); port 0 asks the OS for a free one."""
    host, sep, port = addr.strip().rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ValueError(f"http address {addr!r} is not host:port (example: 127.0.0.1:8765)")
    return host, int(port)


class HttpServer:
    def __init__(
        self,
        addr: str,
        *,
        token: str | None,
        metrics: Metrics,
        health: Callable[[], Check],
        ready: Callable[[], Check],
        status: Callable[[], list[dict[str, Any]]],
        fleet_status: Callable[[str | None], list[dict[str, Any]]] | None = None,
        poll_interval: float = 0.5,
        any_free_port: bool = False,
    ) -> None:
        self._bind = parse_addr(addr)
        self._any_free_port = any_free_port  # --dev: a second daemon on the host takes another port
        self._poll_interval = poll_interval  # how long stop() may wait for the serving loop to notice
        self._token = token.encode() if token else None
        self._metrics = metrics
        self._health = health
        self._ready = ready
        self._status = status  # this daemon's streams
        self._fleet_status = fleet_status  # one node's (a name) or every node's (None): /status?node=, ?all_nodes=1
        self._last_ok: dict[str, bool] = {}
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> tuple[str, int]:
        """The bound (host, port); the real port when 0 was asked for."""
        if self._server is None:
            raise RuntimeError("HTTP server is not running")
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    def start(self) -> None:
        if self._server is not None:
            raise RuntimeError("HTTP server already started")
        host, port = self._bind
        server_class = _Server6 if ":" in host else _Server
        handler = type("Handler", (_Handler,), {"app": self})
        busy = ""
        try:
            self._server = server_class((host, port), handler)
        except OSError as exc:
            if not (self._any_free_port and exc.errno == errno.EADDRINUSE):
                raise OSError(exc.errno, f"cannot listen on {host}:{port} (CHUNKD_HTTP_ADDR): {exc.strerror}") from exc
            self._server = server_class((host, 0), handler)
            busy = f"; port {port} was busy"
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": self._poll_interval},
            name="chunkd-http",
            daemon=True,
        )
        self._thread.start()
        host, port = self.address
        access = "need a bearer token" if self._token else "open"
        where = f"[{host}]" if ":" in host else host
        logger.info("HTTP endpoint on http://%s:%d (/healthz /readyz /metrics /status; /metrics and /status %s%s)",
                    where, port, access, busy)

    def stop(self) -> None:
        """Stop serving and close the socket; the port is free when this returns."""
        server, thread = self._server, self._thread
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if thread is not None:
            thread.join()
        self._server = self._thread = None

    # -- routing (called on request threads) ------------------------------------------------

    def respond(self, path: str, authorization: str | None, query: str = "") -> tuple[int, bytes, str, dict[str, str]]:
        """(status, body, content type, extra headers) for a GET of `path`?`query`."""
        if path == "/healthz":
            return self._probe("healthz", self._health)
        if path == "/readyz":
            return self._probe("readyz", self._ready)
        if path not in ("/metrics", "/status"):
            return _json(404, {"error": "not found"})
        if not self._authorized(authorization):
            return _json(401, {"error": "unauthorized"}, {"WWW-Authenticate": 'Bearer realm="chunkd"'})
        if path == "/metrics":
            body, content_type = self._metrics.render()
            return 200, body, content_type, {}
        return self._status_of(parse_qs(query))

    def _status_of(self, params: dict[str, list[str]]) -> tuple[int, bytes, str, dict[str, str]]:
        """/status: this daemon's streams; `?node=NAME` another node's, `?all_nodes=1` the fleet's."""
        every = params.get("all_nodes", ["0"])[-1].lower() in ("1", "true", "yes")
        node = params.get("node", [None])[-1]
        if self._fleet_status is None or not (every or node):
            return _json(200, self._status())
        return _json(200, self._fleet_status(None if every else node))

    def _authorized(self, authorization: str | None) -> bool:
        if self._token is None:
            return True
        scheme, _, credentials = (authorization or "").partition(" ")
        if scheme.lower() != "bearer":
            return False
        return hmac.compare_digest(credentials.strip().encode(), self._token)

    def _probe(self, name: str, probe: Callable[[], Check]) -> tuple[int, bytes, str, dict[str, str]]:
        check = probe()
        failing = {key: value for key, value in check.detail.items() if value is not True}
        if self._last_ok.get(name, True) != check.ok:  # log changes, not every probe
            if check.ok:
                logger.info("%s: ok again", name)
            else:
                logger.warning("%s: failing: %s", name, failing)
        self._last_ok[name] = check.ok
        public: dict[str, Any] = {key: value is True for key, value in check.detail.items() if key != "ok"}
        if check.ages:
            public["age_seconds"] = check.ages
        return _json(200 if check.ok else 503, {"ok": check.ok, **public})


def _json(status: int, data: Any, headers: dict[str, str] | None = None) -> tuple[int, bytes, str, dict[str, str]]:
    return status, (json.dumps(data) + "\n").encode(), JSON, headers or {}


DISCONNECTS = (BrokenPipeError, ConnectionResetError)  # a client that gave up: its business, not an error


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        """socketserver prints a traceback to stderr for any exception; a client hanging up is normal."""
        exc = sys.exc_info()[1]
        if isinstance(exc, DISCONNECTS):
            logger.debug("HTTP client %s went away: %s", client_address, exc)
            return
        logger.error("HTTP request from %s failed", client_address, exc_info=exc)

    def server_bind(self) -> None:
        # HTTPServer.server_bind would call getfqdn(), a reverse DNS lookup that can stall start-up.
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.socket.bind(self.server_address)
        self.server_address = self.socket.getsockname()
        self.server_name, self.server_port = str(self.server_address[0]), int(self.server_address[1])


class _Server6(_Server):
    address_family = socket.AF_INET6


class _Handler(BaseHTTPRequestHandler):
    app: HttpServer  # set on the per-server subclass
    server_version = "chunkd"
    timeout = REQUEST_TIMEOUT

    def version_string(self) -> str:
        return self.server_version  # no Python version in the Server header

    def do_GET(self) -> None:
        parts = urlsplit(self.path)
        path = parts.path
        try:
            status, body, content_type, headers = self.app.respond(path, self.headers.get("Authorization"), parts.query)
        except Exception:
            logger.exception("HTTP %s failed", path)
            status, body, content_type, headers = _json(500, {"error": "internal error"})
        self._send(status, body, content_type, headers)

    def _not_allowed(self) -> None:
        status, body, content_type, _ = _json(405, {"error": "method not allowed"})
        self._send(status, body, content_type, {"Allow": "GET"})

    do_POST = do_PUT = do_DELETE = do_PATCH = _not_allowed

    def _send(self, status: int, body: bytes, content_type: str, headers: dict[str, str]) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        for name, value in headers.items():
            self.send_header(name, value)
        try:
            self.end_headers()
            self.wfile.write(body)
        except DISCONNECTS as exc:
            logger.debug("HTTP client %s went away: %s", self.address_string(), exc)
            self.close_connection = True

    def log_message(self, format: str, *args: Any) -> None:
        # The request line only (never headers, so never the token), and at DEBUG: probes are chatty.
        logger.debug("%s %s", self.address_string(), format % args)
