"""A GET (or another method) against a test's HttpServer, or a URL, that returns error replies rather than raising."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

from chunkd.observe.http import HttpServer


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def get(server: HttpServer, path: str, *, token: str | None = None, method: str = "GET") -> Response:
    host, port = server.address
    request = urllib.request.Request(f"http://{host}:{port}{path}", method=method)
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=5) as reply:
            return Response(reply.status, dict(reply.headers), reply.read())
    except urllib.error.HTTPError as error:
        with error:
            return Response(error.code, dict(error.headers), error.read())


def http_get(url: str, *, timeout: float = 10.0) -> tuple[int, str]:
    """(status, body) of a GET of `url`; (0, "") while nothing answers there (a daemon starting or gone)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError:
        return 0, ""
