"""Real S3 HTTP servers for the tests: moto server (in this process, with request counting) and
`rclone serve s3` on a folder (a child process, chunkd's own dev server).

No fixtures here; the fixtures we recommend for tests/conftest.py are at the bottom of the file.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import io
import socket
import threading
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterable
from types import TracebackType
from typing import Any, Self
from urllib.parse import parse_qs, quote, unquote, urlsplit
from xml.sax.saxutils import escape as xml_escape

import boto3
from botocore.config import Config
from moto.server import DomainDispatcherApplication, MotoRequestHandler, ThreadedMotoServer, create_backend_app
from werkzeug.serving import make_server
from werkzeug.wsgi import get_input_stream

from chunkd.s3.devserver import LocalS3Server, free_port
from chunkd.s3.traits import PROBE_NAME

RcloneS3Server = LocalS3Server  # one name for tests that want to say which server they mean

MOTO_ACCESS_KEY = "testing"
MOTO_SECRET_KEY = "testing"
REGION = "us-east-1"


def make_client(endpoint_url: str, access_key: str, secret_key: str, **config: Any) -> Any:
    """A boto3 S3 client as chunkd configures it: path-style, checksums only when required
    (botocore >= 1.36 otherwise adds CRC checksums that S3-compatible servers mishandle)."""
    options: dict[str, Any] = {
        "s3": {"addressing_style": "path"},
        "request_checksum_calculation": "when_required",
        "response_checksum_validation": "when_required",
        "retries": {"total_max_attempts": 2, "mode": "standard"},
    }
    options.update(config)
    return boto3.client(
        "s3",
        endpoint_url=endpoint_url,
        aws_access_key_id=access_key,
        aws_secret_access_key=secret_key,
        region_name=REGION,
        config=Config(**options),
    )


# -- classifying requests --------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class S3Request:
    """One request the server received, as an S3 operation."""

    operation: str
    method: str
    bucket: str
    key: str
    part_number: int | None = None
    upload_id: str | None = None
    status: int | None = None  # filled in once the response starts; None if it never did


def is_probe(request: S3Request) -> bool:
    return PROBE_NAME in request.key.rpartition("/")[2]


def classify(method: str, path: str, query: str, headers: dict[str, str] | None = None) -> S3Request:
    """Name the S3 operation of a path-style request; `path` as sent, still percent-encoded."""
    headers = headers or {}
    params = parse_qs(query, keep_blank_values=True)
    bucket, _, key = unquote(path).lstrip("/").partition("/")
    upload_id = params.get("uploadId", [None])[0]
    part = params.get("partNumber", [None])[0]
    part_number = int(part) if part and part.isdigit() else None
    copy = "x-amz-copy-source" in {name.lower() for name in headers}
    operation = _operation(method.upper(), bucket, key, params, copy)
    return S3Request(operation, method.upper(), bucket, key, part_number, upload_id)


def _operation(method: str, bucket: str, key: str, params: dict[str, list[str]], copy: bool) -> str:
    if not bucket:
        return "ListBuckets" if method == "GET" else f"{method} /"
    if "uploadId" in params:
        if method == "PUT" and "partNumber" in params:
            return "UploadPartCopy" if copy else "UploadPart"
        return {
            "POST": "CompleteMultipartUpload",
            "DELETE": "AbortMultipartUpload",
            "GET": "ListParts",
        }.get(method, f"{method} ?uploadId")
    if method == "POST" and "uploads" in params:
        return "CreateMultipartUpload"
    if not key:
        if method == "GET":
            if "uploads" in params:
                return "ListMultipartUploads"
            return "ListObjectsV2" if params.get("list-type") == ["2"] else "ListObjects"
        if method == "POST" and "delete" in params:
            return "DeleteObjects"
        bucket_ops = {"PUT": "CreateBucket", "DELETE": "DeleteBucket", "HEAD": "HeadBucket"}
        if method in bucket_ops and not params:
            return bucket_ops[method]
        return f"{method} bucket?{'&'.join(sorted(params))}"
    if params:  # tagging, acl, attributes, ...: subresources chunkd does not use
        return f"{method} object?{'&'.join(sorted(params))}"
    return {
        "PUT": "CopyObject" if copy else "PutObject",
        "GET": "GetObject",
        "HEAD": "HeadObject",
        "DELETE": "DeleteObject",
    }.get(method, f"{method} object")


def _raw_path(environ: dict[str, Any]) -> str:
    """The path as the client sent it: PATH_INFO is already decoded (and as latin-1), so a key
    containing '%' or non-ASCII characters would come out wrong from it."""
    raw = environ.get("RAW_URI") or environ.get("REQUEST_URI")
    if raw:
        return urlsplit(raw).path if "://" in raw.split("?", 1)[0] else raw.split("?", 1)[0]
    return quote(environ.get("PATH_INFO", "").encode("latin-1"))


class RequestLog:
    """Every S3 request seen, thread-safe (the server handles each connection on its own thread)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests: list[S3Request] = []

    def add(self, request: S3Request) -> int:
        with self._lock:
            self._requests.append(request)
            return len(self._requests) - 1

    def set_status(self, index: int, status: int) -> None:
        with self._lock:
            if index < len(self._requests):  # a reset may have emptied the log meanwhile
                request = self._requests[index]
                self._requests[index] = dataclasses.replace(request, status=status)

    def snapshot(self) -> list[S3Request]:
        with self._lock:
            return list(self._requests)

    def clear(self) -> None:
        with self._lock:
            self._requests.clear()


class CountingMiddleware:
    """WSGI middleware in front of the moto app: logs each request before moto sees it.

    Reads only the environ, never the body, so moto gets the request untouched. moto's own
    `/moto-api/` calls (reset, state) are not S3 requests and are not logged.
    """

    def __init__(self, app: Callable[..., Any], log: RequestLog) -> None:
        self.app = app
        self.log = log

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = _raw_path(environ)
        if path.startswith("/moto-api"):
            return self.app(environ, start_response)
        headers = {name[5:].replace("_", "-"): value for name, value in environ.items() if name.startswith("HTTP_")}
        index = self.log.add(classify(environ.get("REQUEST_METHOD", ""), path, environ.get("QUERY_STRING", ""), headers))

        def counting_start_response(status: str, *args: Any) -> Any:
            self.log.set_status(index, int(status.split(" ", 1)[0]))
            return start_response(status, *args)

        return self.app(environ, counting_start_response)


class StrictS3Middleware:
    """Makes moto answer like S3 where chunkd's error handling depends on it (moto 5.2):

    * UploadPart and CompleteMultipartUpload for an upload that does not exist (aborted,
      completed, expired, or a key it was not started for) get 404 NoSuchUpload; moto fails
      them with a KeyError, i.e. 500 InternalError, which a client would retry (the same moto
      bug localstack worked around in localstack#8396).
    * A Content-MD5 that does not match the body gets 400 BadDigest (or InvalidDigest when it is
      not a base64 MD5), and a signed payload whose bytes do not hash to its x-amz-content-sha256
      gets 400 XAmzContentSHA256Mismatch; moto checks neither.
    """

    def __init__(self, app: Callable[..., Any]) -> None:
        self.app = app

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = _raw_path(environ)
        if path.startswith("/moto-api"):
            return self.app(environ, start_response)
        request = classify(environ.get("REQUEST_METHOD", ""), path, environ.get("QUERY_STRING", ""))
        missing_upload = request.operation in ("UploadPart", "UploadPartCopy", "CompleteMultipartUpload")
        if missing_upload and _upload_missing(request):
            _drain(environ)
            return _error(start_response, 404, "NoSuchUpload", _NO_SUCH_UPLOAD, UploadId=request.upload_id or "")
        if request.operation in ("UploadPart", "PutObject"):
            problem = _body_problem(environ)
            if problem:
                return _error(start_response, 400, problem, _DIGEST_MESSAGES[problem])
        return self.app(environ, start_response)


_NO_SUCH_UPLOAD = (
    "The specified upload does not exist. The upload ID may be invalid, or the upload may have been aborted or completed."
)
_DIGEST_MESSAGES = {
    "BadDigest": "The Content-MD5 you specified did not match what we received.",
    "InvalidDigest": "The Content-MD5 you specified was invalid.",
    "XAmzContentSHA256Mismatch": "The provided 'x-amz-content-sha256' header does not match what was computed.",
}


def _upload_missing(request: S3Request) -> bool:
    """True only when moto's store positively lacks the upload; unsure means let moto answer."""
    try:
        from moto.core import DEFAULT_ACCOUNT_ID
        from moto.s3.models import s3_backends

        buckets = s3_backends[DEFAULT_ACCOUNT_ID]["aws"].buckets
    except Exception:  # noqa: BLE001 - moto's internals moved: fall back to moto's own answer
        return False
    bucket = buckets.get(request.bucket)
    if bucket is None:
        return False  # moto answers NoSuchBucket itself
    upload = bucket.multiparts.get(request.upload_id or "")
    return upload is None or upload.key_name != request.key


def _body_problem(environ: dict[str, Any]) -> str | None:
    """What S3 would say of the body: a Content-MD5 or a signed payload SHA-256 it does not match."""
    payload_hash = environ.get("HTTP_X_AMZ_CONTENT_SHA256", "")
    signed = len(payload_hash) == 64
    if "HTTP_CONTENT_MD5" not in environ and not signed:
        return None
    if payload_hash.startswith("STREAMING-"):
        return None
    body = _drain(environ)
    environ["wsgi.input"] = io.BytesIO(body)
    environ["CONTENT_LENGTH"] = str(len(body))
    if "HTTP_CONTENT_MD5" in environ:
        problem = _digest_problem(environ["HTTP_CONTENT_MD5"], body)
        if problem:
            return problem
    if signed and hashlib.sha256(body).hexdigest() != payload_hash.lower():
        return "XAmzContentSHA256Mismatch"
    return None


def _digest_problem(header: str, body: bytes) -> str | None:
    try:
        expected = base64.b64decode(header, validate=True)
    except (ValueError, binascii.Error):
        return "InvalidDigest"
    if len(expected) != 16:
        return "InvalidDigest"
    return None if hashlib.md5(body).digest() == expected else "BadDigest"


def _drain(environ: dict[str, Any]) -> bytes:
    """Read the whole request body, so an early answer leaves the connection in step."""
    return get_input_stream(environ).read()


def _error(start_response: Callable[..., Any], status: int, code: str, message: str, **extra: str) -> list[bytes]:
    fields = "".join(f"<{name}>{xml_escape(value)}</{name}>" for name, value in extra.items())
    body = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{code}</Code><Message>{xml_escape(message)}</Message>{fields}"
        "<RequestId>chunkd-tests</RequestId></Error>"
    ).encode()
    reason = {400: "Bad Request", 404: "Not Found"}[status]
    start_response(f"{status} {reason}", [("Content-Type", "application/xml"), ("Content-Length", str(len(body)))])
    return [body]


# -- moto server -----------------------------------------------------------------------------


class _TrackingRequestHandler(MotoRequestHandler):
    """Remembers open connections, so stopping the server can cut keep-alive ones too."""

    def handle(self) -> None:
        connections: set[socket.socket] = self.server.open_connections  # type: ignore[attr-defined]
        connections.add(self.connection)
        try:
            super().handle()
        except OSError:
            pass  # the connection was cut by MotoServer.stop()
        finally:
            connections.discard(self.connection)


class _CountingThreadedMotoServer(ThreadedMotoServer):
    """ThreadedMotoServer with our middleware and request handler in its WSGI server."""

    def __init__(self, host: str, port: int, log: RequestLog, *, strict: bool) -> None:
        super().__init__(ip_address=host, port=port, verbose=False)
        self.log = log
        self.strict = strict
        self.error: BaseException | None = None

    def _server_entry(self) -> None:  # same as moto's, plus the middleware and handler
        moto_app = DomainDispatcherApplication(create_backend_app)
        app = CountingMiddleware(StrictS3Middleware(moto_app) if self.strict else moto_app, self.log)
        try:
            self._server = make_server(
                self._ip_address, self._port, app, threaded=True, request_handler=_TrackingRequestHandler
            )
        except BaseException as exc:  # noqa: BLE001 - e.g. port taken: moto's start() would wait forever
            self.error = exc
            self._server_ready_event.set()
            return
        self._server.open_connections = set()  # type: ignore[attr-defined]
        self._server_ready_event.set()
        self._server.serve_forever(poll_interval=0.05)  # stop() waits up to one poll interval

    def wsgi_server(self) -> Any:
        return self._server


class MotoServer:
    """moto server on 127.0.0.1, in a thread of this process, counting the requests it gets.

    Counting happens in the server, so it also sees requests from a chunkd daemon running as a
    subprocess. `stop()` really takes the endpoint down (listening socket closed, open keep-alive
    connections cut: clients get "connection refused"/"reset"), and `start()` brings it back on
    the same port. moto keeps its data in process-wide globals, so buckets, objects and
    multipart uploads survive a stop/start (a real outage that loses state is `stop()`,
    `reset()`, `start()`). The same globals mean two MotoServers in one process share one store,
    and `reset()` wipes it for both (and for any `mock_aws` in the process). Path-style
    addressing only: the classifier reads the bucket from the path.

    `strict` (the default) puts `StrictS3Middleware` in front of moto, so a vanished upload is
    404 NoSuchUpload and a wrong Content-MD5 is 400 BadDigest, as on S3.
    """

    def __init__(self, host: str = "127.0.0.1", port: int | None = None, *, strict: bool = True) -> None:
        self.host = host
        self._port = port
        self.strict = strict
        self._log = RequestLog()
        self._moto: _CountingThreadedMotoServer | None = None
        self.access_key = MOTO_ACCESS_KEY
        self.secret_key = MOTO_SECRET_KEY

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("MotoServer has no port yet; call start() first")
        return self._port

    @property
    def endpoint_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._moto is not None

    def start(self) -> MotoServer:
        if self._moto is not None:
            return self
        if self._port is None:
            self._port = free_port(self.host)
        moto = _CountingThreadedMotoServer(self.host, self._port, self._log, strict=self.strict)
        moto.start()
        if moto.error is not None:
            raise RuntimeError(f"moto server could not listen on {self.endpoint_url}: {moto.error}") from moto.error
        server = moto.wsgi_server()
        if server is None or not isinstance(server.app, CountingMiddleware):
            moto.stop()
            raise RuntimeError("moto's ThreadedMotoServer changed: request counting is not installed")
        self._moto = moto
        return self

    def stop(self) -> None:
        """Take the endpoint down: no new connections, and open ones are cut."""
        moto, self._moto = self._moto, None
        if moto is None:
            return
        server = moto.wsgi_server()
        moto.stop()  # ends serve_forever; does not close the listening socket
        server.server_close()
        for connection in list(server.open_connections):
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def reset(self) -> None:
        """Forget every bucket, object and upload (moto's global state); counts are kept."""
        request = urllib.request.Request(f"{self.endpoint_url}/moto-api/reset", method="POST")
        with urllib.request.urlopen(request, timeout=10):
            pass

    def client(self, **config: Any) -> Any:
        return make_client(self.endpoint_url, self.access_key, self.secret_key, **config)

    def create_bucket(self, name: str) -> None:
        self.client().create_bucket(Bucket=name)

    # -- counting ---------------------------------------------------------------------------

    def requests(self) -> list[S3Request]:
        """Every S3 request received since the last reset_counts(), in arrival order, but chunkd's
        start-up probes (see probes())."""
        return [request for request in self._log.snapshot() if not is_probe(request)]

    def counts(self) -> Counter[str]:
        """How many requests of each operation were received (attempts, whatever the status), not
        counting chunkd's start-up probe (CHUNKD_CONTENT_MD5=auto; see probes())."""
        return Counter(request.operation for request in self._log.snapshot() if not is_probe(request))

    def probes(self) -> int:
        """Start-up probes of whether the server checks signed SHA-256s: their PUTs (each is
        followed by a DELETE of its key, whatever the answer)."""
        return sum(1 for request in self._log.snapshot() if is_probe(request) and request.operation == "PutObject")

    def uploaded_parts(self, *, key: str | None = None, ok_only: bool = False) -> list[tuple[str, int]]:
        """(key, part number) of every UploadPart received, in arrival order."""
        return [
            (request.key, request.part_number or 0)
            for request in self._log.snapshot()
            if request.operation == "UploadPart"
            and (key is None or request.key == key)
            and (not ok_only or request.status == 200)
        ]

    def reset_counts(self) -> None:
        self._log.clear()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


# -- recommended fixtures for tests/conftest.py ----------------------------------------------
#
# import pytest
# from tests.support.s3_servers import LocalS3Server, MotoServer, make_client
#
# BUCKET = "chunkd"
#
#
# @pytest.fixture(scope="session")
# def moto_server():
#     """One moto server for the session; per-test isolation comes from `moto`."""
#     with MotoServer() as server:
#         yield server
#
#
# @pytest.fixture
# def moto(moto_server):
#     """A clean moto server with an empty `chunkd` bucket and zeroed counts."""
#     if not moto_server.running:  # a fault test stopped it
#         moto_server.start()
#     moto_server.reset()
#     moto_server.create_bucket(BUCKET)
#     moto_server.reset_counts()
#     yield moto_server
#
#
# @pytest.fixture
# def rclone_s3(tmp_path):
#     """A fresh `rclone serve s3` on tmp_path/s3 with a `chunkd` bucket (about 0.1 s to start)."""
#     with LocalS3Server(tmp_path / "s3", buckets=(BUCKET,)) as server:
#         yield server
#
#
# @pytest.fixture(params=["moto", "rclone"])
# def s3_server(request):
#     """Runs a test against both servers; each has endpoint_url, access_key and secret_key."""
#     return request.getfixturevalue("moto" if request.param == "moto" else "rclone_s3")
#
#
# @pytest.fixture
# def s3_client(s3_server):
#     return make_client(s3_server.endpoint_url, s3_server.access_key, s3_server.secret_key)
