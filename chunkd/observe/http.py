"""The daemon's HTTP endpoint: /healthz and /readyz for orchestrators, /metrics for Prometheus,
/status for scripts, and for people the status page: / (one HTML file), /events (its live
updates, Server-Sent Events) and /thumbnail/<stream id> (poster frames, from the bucket).

A stdlib ThreadingHTTPServer on a daemon thread: no framework, nothing to install. With a token
set, everything but the health probes wants `Authorization: Bearer <token>`, or `?token=` in the
URL: a browser cannot put a header on a page it opens, an EventSource or an image. The health
probes stay open for container health checks and so only ever say ok and the names of their checks.
An /events client holds a request thread for as long as it listens: their number is capped.
"""

from __future__ import annotations

import errno
import hmac
import json
import logging
import re
import socket
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any, Protocol
from urllib.parse import parse_qs, urlsplit

from chunkd.observe.live import EventFeed, Subscription
from chunkd.observe.metrics import Metrics

logger = logging.getLogger("chunkd.http")

REQUEST_TIMEOUT = 10.0  # seconds a client may take to send its request; a stuck one holds a thread
JSON = "application/json"
GUARDED = ("/", "/metrics", "/status")  # and /thumbnail/<id>; /events checks for itself (serve_events)
THUMBNAIL = "/thumbnail/"
HEARTBEAT = 15.0  # seconds between keep-alive comments on an idle /events stream (proxies drop silent ones)
MAX_EVENT_CLIENTS = 8  # /events streams at once; each holds a request thread
# The page runs only its own inline script and style, loads images only from here, and tells no
# other site its address (which may hold ?token=).
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
                               "img-src 'self'; connect-src 'self'; base-uri 'none'; form-action 'none'",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
}
Reply = tuple[int, bytes, str, dict[str, str]]


class StatusSource(Protocol):
    """This daemon's streams as /status lists them; the newest `limit` only when given."""

    def __call__(self, *, limit: int | None = None) -> list[dict[str, Any]]: ...


class FleetStatusSource(Protocol):
    """One node's streams (`node`), or every node's (None)."""

    def __call__(self, node: str | None, *, limit: int | None = None) -> list[dict[str, Any]]: ...


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
        status: StatusSource,
        feed: EventFeed | None = None,
        thumbnails: Callable[[str], bytes | None] | None = None,
        fleet_status: FleetStatusSource | None = None,
        poll_interval: float = 0.5,
        any_free_port: bool = False,
        heartbeat: float = HEARTBEAT,
        max_event_clients: int = MAX_EVENT_CLIENTS,
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
        self._feed = feed
        self._thumbnails = thumbnails
        self._heartbeat = heartbeat
        self._event_slots = threading.BoundedSemaphore(max_event_clients)
        self._streams: set[Subscription] = set()  # the open /events streams, ended by stop()
        self._streams_lock = threading.Lock()
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
        logger.info("HTTP endpoint on http://%s:%d (/ the status page, /healthz /readyz /metrics /status /events; "
                    "all but the probes %s%s)",
                    where, port, access, busy)

    def stop(self) -> None:
        """Stop serving and close the socket; the port is free when this returns. Open /events
        streams end at once (their browsers see the connection close)."""
        server, thread = self._server, self._thread
        if server is None:
            return
        server.shutdown()
        with self._streams_lock:
            streams = list(self._streams)
        for subscription in streams:
            subscription.close()
        server.server_close()
        if thread is not None:
            thread.join()
        self._server = self._thread = None

    # -- routing (called on request threads) ------------------------------------------------

    def respond(self, path: str, authorization: str | None, query: str = "") -> Reply:
        """(status, body, content type, extra headers) for a GET of `path`?`query` (not /events)."""
        if path == "/healthz":
            return self._probe("healthz", self._health)
        if path == "/readyz":
            return self._probe("readyz", self._ready)
        if path not in GUARDED and not path.startswith(THUMBNAIL):
            return _json(404, {"error": "not found"})
        if not self._authorized(authorization, _query_token(query)):
            return _unauthorized()
        if path == "/metrics":
            body, content_type = self._metrics.render()
            return 200, body, content_type, {}
        if path == "/":
            return 200, _page(), "text/html; charset=utf-8", PAGE_HEADERS
        if path.startswith(THUMBNAIL):
            return self._thumbnail(path.removeprefix(THUMBNAIL))
        return self._status_of(parse_qs(query))

    def _status_of(self, params: dict[str, list[str]]) -> Reply:
        """/status: this daemon's streams; `?node=NAME` another node's, `?all_nodes=1` the fleet's;
        `?limit=N` the newest N of them (the status page asks for the rows it shows)."""
        every = params.get("all_nodes", ["0"])[-1].lower() in ("1", "true", "yes")
        node = params.get("node", [None])[-1]
        wanted = params.get("limit", [""])[-1]
        if wanted and not (wanted.isdigit() and int(wanted) > 0):
            return _json(400, {"error": "limit must be a positive whole number"})
        limit = int(wanted) if wanted else None
        asked = {} if limit is None else {"limit": limit}
        if self._fleet_status is None or not (every or node):
            return _json(200, self._status(**asked))
        return _json(200, self._fleet_status(None if every else node, **asked))

    def _authorized(self, authorization: str | None, query_token: str | None = None) -> bool:
        """The bearer token in the header, or in the query; compared in constant time."""
        if self._token is None:
            return True
        if query_token is not None and hmac.compare_digest(query_token.encode(), self._token):
            return True
        scheme, _, credentials = (authorization or "").partition(" ")
        if scheme.lower() != "bearer":
            return False
        return hmac.compare_digest(credentials.strip().encode(), self._token)

    def _thumbnail(self, stream_id: str) -> Reply:
        image = self._thumbnails(stream_id) if self._thumbnails is not None else None
        if image is None:
            return _json(404, {"error": "no poster frame"})
        # The poster of a completed file does not change: the browser may keep it (this user only).
        return 200, image, "image/jpeg", {"Cache-Control": "private, max-age=3600", "X-Content-Type-Options": "nosniff"}

    # -- /events (on the request thread, for as long as the client listens) ----------------------

    def serve_events(self, handler: _Handler, authorization: str | None, query_token: str | None) -> None:
        """Stream the feed's events to one client until it goes away or the server stops."""
        if not self._authorized(authorization, query_token):
            handler.send_reply(*_unauthorized())
            return
        if self._feed is None:
            handler.send_reply(*_json(404, {"error": "not found"}))
            return
        if not self._event_slots.acquire(blocking=False):
            handler.send_reply(*_json(503, {"error": "too many /events clients"}, {"Retry-After": "10"}))
            return
        subscription = self._feed.subscribe(handler.headers.get("Last-Event-ID"))
        with self._streams_lock:
            self._streams.add(subscription)
        try:
            self._stream(handler, subscription)
        except (*DISCONNECTS, TimeoutError) as exc:  # gone, or not reading for REQUEST_TIMEOUT
            logger.debug("/events client %s went away: %s", handler.address_string(), exc)
        finally:
            subscription.close()
            with self._streams_lock:
                self._streams.discard(subscription)
            self._event_slots.release()
            handler.close_connection = True

    def _stream(self, handler: _Handler, subscription: Subscription) -> None:
        handler.send_response(200)
        handler.send_header("Content-Type", "text/event-stream; charset=utf-8")
        handler.send_header("Cache-Control", "no-store")
        handler.send_header("X-Accel-Buffering", "no")  # a proxy in front passes each event on at once
        handler.end_headers()
        handler.wfile.write(b"retry: 2000\n: connected\n\n")  # reconnect after 2 s if cut off
        while True:
            event = subscription.get(self._heartbeat)
            if subscription.closed:
                return
            handler.wfile.write(b": keep-alive\n\n" if event is None else event.frame())

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


def _json(status: int, data: Any, headers: dict[str, str] | None = None) -> Reply:
    return status, (json.dumps(data) + "\n").encode(), JSON, headers or {}


def _unauthorized() -> Reply:
    return _json(401, {"error": "unauthorized"}, {"WWW-Authenticate": 'Bearer realm="chunkd"'})


@cache
def _page() -> bytes:
    """The status page: one file with its style and script inline, shipped as package data."""
    return resources.files("chunkd.observe").joinpath("page", "index.html").read_bytes()


def _query_token(query: str) -> str | None:
    values = parse_qs(query, keep_blank_values=True).get("token")
    return values[-1] if values else None


_QUERY = re.compile(r"\?[^\s\"']*")  # what follows a `?` in a request line: it may hold the token


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
        url = urlsplit(self.path)
        path, token, authorization = url.path, _query_token(url.query), self.headers.get("Authorization")
        if path == "/events":
            self.app.serve_events(self, authorization, token)
            return
        try:
            status, body, content_type, headers = self.app.respond(path, authorization, url.query)
        except Exception:
            logger.exception("HTTP %s failed", path)
            status, body, content_type, headers = _json(500, {"error": "internal error"})
        self.send_reply(status, body, content_type, headers)

    def _not_allowed(self) -> None:
        status, body, content_type, _ = _json(405, {"error": "method not allowed"})
        self.send_reply(status, body, content_type, {"Allow": "GET"})

    do_POST = do_PUT = do_DELETE = do_PATCH = _not_allowed

    def send_reply(self, status: int, body: bytes, content_type: str, headers: dict[str, str]) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        if "Cache-Control" not in headers:
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
        # The request line only, without its query (never headers): never the token. At DEBUG: probes are chatty.
        logger.debug("%s %s", self.address_string(), _QUERY.sub("?…", format % args))
