"""A loopback HTTP proxy in front of an S3 test server, as the tests' FaultProxy and the chaos
bench's ObservingProxy both need one: a threaded server on 127.0.0.1 (a free port) handing every
request to the proxy's `relay`, and the rules for passing a request on and its answer back.

Requests go on unchanged, Host header included, so SigV4 signatures stay valid; only hop-by-hop
headers stay behind. An answer is passed back whole with its own Content-Length.
"""

from __future__ import annotations

import http.client
import threading
from collections.abc import Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self
from urllib.parse import urlsplit

HOP_HEADERS = frozenset({"connection", "keep-alive", "expect", "transfer-encoding", "proxy-connection"})


class LoopbackProxy:
    """Started, it serves on `endpoint_url`; a subclass says in `relay` what becomes of a request.
    `upstream` is the server's (host, port). Usable as a context manager."""

    thread_name = "loopback-proxy"

    def __init__(self, upstream_url: str) -> None:
        parts = urlsplit(upstream_url)
        self.upstream = (parts.hostname or "127.0.0.1", parts.port or 80)
        self._server: ThreadingHTTPServer | None = None

    @property
    def endpoint_url(self) -> str:
        assert self._server is not None, "proxy not started"
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> Self:
        handler = type("Handler", (RelayHandler,), {"proxy": self})  # this proxy's requests come to it
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                         name=self.thread_name, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def relay(self, handler: RelayHandler) -> None:
        raise NotImplementedError


class RelayHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, and `Expect: 100-continue` answered here
    proxy: LoopbackProxy

    def handle(self) -> None:
        try:
            super().handle()
        except OSError:  # a reset, or the client went away (or was killed) with the connection open
            self.close_connection = True

    def do_GET(self) -> None:
        self.proxy.relay(self)

    do_PUT = do_POST = do_DELETE = do_HEAD = do_GET

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: faults and kills cut connections on purpose."""


def put_request(handler: RelayHandler, upstream: http.client.HTTPConnection) -> None:
    """Begin the client's request on `upstream`: its method, path and headers; the caller ends the
    headers and sends the body."""
    upstream.putrequest(handler.command, handler.path, skip_host=True, skip_accept_encoding=True)
    for name, value in handler.headers.items():
        if name.lower() not in HOP_HEADERS:
            upstream.putheader(name, value)


def send_answer(handler: RelayHandler, status: int, reason: str, headers: Iterable[tuple[str, str]],
                body: bytes) -> None:
    """Pass the server's answer back to the client; a HEAD answer keeps the server's Content-Length."""
    handler.send_response_only(status, reason)
    for name, value in headers:
        if name.lower() not in HOP_HEADERS and (handler.command == "HEAD" or name.lower() != "content-length"):
            handler.send_header(name, value)
    if handler.command != "HEAD":
        handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    if handler.command != "HEAD":
        handler.wfile.write(body)
    handler.wfile.flush()
