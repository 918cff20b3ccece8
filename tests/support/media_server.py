"""A local HTTP server for media files, with the faults real hosts show: dropped connections, 429
with Retry-After, error statuses, slow links. Every request is logged so a test can check what
the client asked for (`Range`), what it got, and when. It also answers requests in absolute form
(`GET http://any.host/v/a.mp4`), so it can stand in as the HTTP proxy a downloader is pointed at.

Files are served from memory (`path -> bytes`) the way a plain static server or a CDN does:
`Content-Type` by extension, `Content-Length`, `Accept-Ranges: bytes`, 206 + `Content-Range` for
`bytes=N-`, `bytes=N-M` and `bytes=-N`, 416 for a range past the end, HEAD, 404 for anything else.

Fault knobs are set per path and may be changed while a client is downloading:

- `drop_after(path, n)`: the next GET sends its headers and n body bytes, then closes the
  connection (a FIN, as when a proxy times out or a server restarts) — the client sees a short
  body. Once.
- `answer_429(path, times, retry_after=s)`: the next `times` requests get 429 with Retry-After.
- `fail_status(path, code, times=None, retry_after=None)`: requests get `code` (every one until
  `clear_faults`, or the next `times`), with Retry-After when one is given.
  Both take `method="GET"` (or "HEAD") to fault only that method.
- `pace(path, bytes_per_second)`: bodies are sent at about that rate, so a test can act mid-download.
- `ignore_range(path)`: 200 and the whole file whatever Range asks, as servers without Range do.
"""

from __future__ import annotations

import mimetypes
import re
import socket
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, NamedTuple, Self
from urllib.parse import urlsplit

CHUNK = 64 * 1024
SETTLE_SECONDS = 2.0
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")
_EXTRA_TYPES = {".mp4": "video/mp4", ".m4v": "video/mp4", ".mov": "video/quicktime", ".webm": "video/webm",
                ".mkv": "video/x-matroska", ".ts": "video/mp2t"}


class LoggedRequest(NamedTuple):
    time: float  # time.monotonic() when the request arrived
    method: str
    path: str
    range: str | None  # the Range header as sent
    status: int
    bytes_sent: int  # body bytes the kernel accepted; a dropped or reset response counts what went out


@dataclass
class _Faults:
    drop_after: int | None = None
    status: int | None = None
    status_times: int | None = None  # None: every request until cleared
    status_method: str | None = None  # None: any method
    retry_after: float | None = None
    bytes_per_second: float | None = None
    ignore_range: bool = False


class MediaServer:
    """`with MediaServer({"/v/a.mp4": data}) as server: server.url_for("/v/a.mp4")`."""

    def __init__(self, files: Mapping[str, bytes] | None = None, *, host: str = "127.0.0.1") -> None:
        self._files: dict[str, tuple[bytes, str]] = {}
        self._faults: dict[str, _Faults] = {}
        self._log: list[LoggedRequest] = []
        self._lock = threading.Condition()
        self._answering = 0  # requests whose response is being written
        self._host = host
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        for path, data in (files or {}).items():
            self.add(path, data)

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> Self:
        if self._httpd is not None:
            return self
        self._httpd = _QuietServer((self._host, 0), _handler_for(self))
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, name="media-server", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is None:
            return
        self._httpd.shutdown()
        self._httpd.server_close()
        assert self._thread is not None
        self._thread.join(timeout=5)
        self._httpd = self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._httpd is None:
            raise RuntimeError("the media server is not running")
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        return f"http://{self._host}:{self.port}"

    def url_for(self, path: str) -> str:
        return self.url + path

    # -- content and faults --------------------------------------------------------------------

    def add(self, path: str, data: bytes, *, content_type: str | None = None) -> None:
        if not path.startswith("/"):
            raise ValueError(f"paths start with '/': {path!r}")
        guessed = content_type or _content_type(path)
        with self._lock:
            self._files[path] = (bytes(data), guessed)

    def drop_after(self, path: str, n_bytes: int) -> None:
        with self._lock:
            self._faults.setdefault(path, _Faults()).drop_after = n_bytes

    def answer_429(
        self, path: str, times: int = 1, *, retry_after: float | None = None, method: str | None = None
    ) -> None:
        self.fail_status(path, 429, times=times, retry_after=retry_after, method=method)

    def fail_status(
        self,
        path: str,
        code: int,
        *,
        times: int | None = None,
        retry_after: float | None = None,
        method: str | None = None,
    ) -> None:
        """`method` ("GET", "HEAD") limits the fault to that method; other requests pass untouched."""
        with self._lock:
            faults = self._faults.setdefault(path, _Faults())
            faults.status, faults.status_times, faults.retry_after = code, times, retry_after
            faults.status_method = method.upper() if method else None

    def pace(self, path: str, bytes_per_second: float | None) -> None:
        with self._lock:
            self._faults.setdefault(path, _Faults()).bytes_per_second = bytes_per_second

    def ignore_range(self, path: str, ignore: bool = True) -> None:
        """Answer every GET with 200 and the whole file, as servers without Range support do."""
        with self._lock:
            self._faults.setdefault(path, _Faults()).ignore_range = ignore

    def clear_faults(self, path: str | None = None) -> None:
        with self._lock:
            if path is None:
                self._faults.clear()
            else:
                self._faults.pop(path, None)

    # -- the log -------------------------------------------------------------------------------

    @property
    def log(self) -> list[LoggedRequest]:
        """Every finished request, in order of arrival.

        Waits up to SETTLE_SECONDS for responses still being written: a client may have read the
        last byte of a response a moment before the server thread gets to log it.
        """
        with self._lock:
            self._lock.wait_for(lambda: self._answering == 0, timeout=SETTLE_SECONDS)
            return sorted(self._log, key=lambda entry: entry.time)

    def requests_for(self, path: str, method: str | None = None) -> list[LoggedRequest]:
        return [r for r in self.log if r.path == path and (method is None or r.method == method)]

    def bytes_served(self, path: str) -> int:
        return sum(r.bytes_sent for r in self.requests_for(path))

    def clear_log(self) -> None:
        with self._lock:
            self._log.clear()

    # -- used by the handler -------------------------------------------------------------------

    def _take_fault(self, path: str, method: str) -> tuple[int | None, float | None, int | None, _Faults]:
        """(status, retry_after, drop_after, the path's faults) for this request, consuming one-shot faults."""
        with self._lock:
            faults = self._faults.get(path)
            if faults is None:
                return None, None, None, _Faults()
            status = retry_after = None
            if faults.status is not None and faults.status_method in (None, method):
                status, retry_after = faults.status, faults.retry_after
                if faults.status_times is not None:
                    faults.status_times -= 1
                    if faults.status_times <= 0:
                        faults.status = faults.status_times = faults.retry_after = faults.status_method = None
            drop = None
            if status is None and method == "GET" and faults.drop_after is not None:
                drop, faults.drop_after = faults.drop_after, None
            return status, retry_after, drop, _Faults(**vars(faults))

    def _file(self, path: str) -> tuple[bytes, str] | None:
        with self._lock:
            return self._files.get(path)

    def _answering_one(self) -> None:
        with self._lock:
            self._answering += 1

    def _record(self, entry: LoggedRequest) -> None:
        with self._lock:
            self._log.append(entry)
            self._answering -= 1
            self._lock.notify_all()


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exception(), (ConnectionError, TimeoutError)):
            return  # a client hanging up on a keep-alive connection is not news
        super().handle_error(request, client_address)


def _content_type(path: str) -> str:
    suffix = "." + path.rsplit(".", 1)[-1].lower() if "." in path.rsplit("/", 1)[-1] else ""
    return _EXTRA_TYPES.get(suffix) or mimetypes.guess_type(path)[0] or "application/octet-stream"


def parse_range(header: str | None, size: int) -> tuple[int, int] | None | bool:
    """(first, last) inclusive for a satisfiable single range; None: serve the whole file; False: 416."""
    if header is None:
        return None
    match = _RANGE.match(header.strip())
    if not match or (not match.group(1) and not match.group(2)):
        return None  # multiple or malformed ranges: a server may ignore Range and send everything
    first_text, last_text = match.groups()
    if not first_text:  # bytes=-N: the last N bytes
        suffix = int(last_text)
        if suffix == 0 or size == 0:
            return False
        return max(0, size - suffix), size - 1
    first = int(first_text)
    last = min(int(last_text), size - 1) if last_text else size - 1
    if first >= size or last < first:
        return False
    return first, last


def _handler_for(server: MediaServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "MediaServer/1"

        def log_message(self, format: str, *args: object) -> None:
            pass  # the request log replaces the stderr access log

        def do_GET(self) -> None:
            self._serve(body=True)

        def do_HEAD(self) -> None:
            self._serve(body=False)

        def _serve(self, *, body: bool) -> None:
            arrived = time.monotonic()
            path = urlsplit(self.path).path  # absolute-form too ("GET http://host/x"), as a proxy is asked
            range_header = self.headers.get("Range")
            status, sent = 500, 0
            server._answering_one()
            try:
                status, sent = self._respond(path, range_header, body=body)
            finally:
                server._record(LoggedRequest(arrived, self.command, path, range_header, status, sent))

        def _respond(self, path: str, range_header: str | None, *, body: bool) -> tuple[int, int]:
            fault_status, retry_after, drop, faults = server._take_fault(path, self.command)
            found = server._file(path)
            if fault_status is not None:
                return self._error(fault_status, retry_after=retry_after, body=body)
            if found is None:
                return self._error(404, body=body)
            data, content_type = found
            wanted = None if faults.ignore_range else parse_range(range_header, len(data))
            if wanted is False:
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return 416, 0
            first, last = wanted if wanted else (0, len(data) - 1)
            status = 206 if wanted else 200
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(last - first + 1))
            self.send_header("Accept-Ranges", "bytes")
            if wanted:
                self.send_header("Content-Range", f"bytes {first}-{last}/{len(data)}")
            if drop is not None:
                self.send_header("Connection", "close")
            self.end_headers()
            if not body:
                return status, 0
            payload = memoryview(data)[first : last + 1]
            if drop is not None:
                payload = payload[:drop]
            sent = self._send_body(payload, faults.bytes_per_second)
            if drop is not None:
                self._hang_up()
            return status, sent

        def _send_body(self, payload: memoryview, rate: float | None) -> int:
            sent = 0
            started = time.monotonic()
            try:
                while sent < len(payload):
                    chunk = payload[sent : sent + (min(CHUNK, max(1, int(rate / 10))) if rate else CHUNK)]
                    self.wfile.write(chunk)
                    sent += len(chunk)
                    if rate:
                        ahead = started + sent / rate - time.monotonic()
                        if ahead > 0:
                            time.sleep(ahead)
                self.wfile.flush()
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True  # the client hung up; what went out before that counts
            return sent

        def _hang_up(self) -> None:
            self.close_connection = True
            try:
                self.wfile.flush()
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

        def _error(self, code: int, *, retry_after: float | None = None, body: bool) -> tuple[int, int]:
            text = f"{code} {self.responses.get(code, ('error',))[0]}\n".encode()
            self.send_response(code)
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Content-Length", str(len(text)))
            if retry_after is not None:
                self.send_header("Retry-After", f"{retry_after:g}")
            self.end_headers()
            if body:
                self.wfile.write(text)
                return code, len(text)
            return code, 0

    return Handler
