"""Reading a Server-Sent Events response (/events) with http.client, frame by frame, as an
EventSource does."""

from __future__ import annotations

import http.client


class EventStream:
    """GET `path` on host:port and read its frames; the caller closes it."""

    def __init__(self, host: str, port: int, path: str = "/events", headers: dict[str, str] | None = None,
                 *, timeout: float = 10) -> None:
        self.connection = http.client.HTTPConnection(host, port, timeout=timeout)
        self.connection.request("GET", path, headers=headers or {})
        self.response = self.connection.getresponse()

    def next_frame(self) -> list[str]:
        """The lines of the next frame (up to its blank line), comments included; EOFError at the end."""
        lines: list[str] = []
        while True:
            line = self.response.readline().decode()
            if not line:
                raise EOFError("stream closed")
            if line == "\n":
                if lines:
                    return lines
                continue
            lines.append(line.rstrip("\n"))

    def next_event(self) -> dict[str, str]:
        """The fields (id, event, data) of the next frame that is an event, skipping comments."""
        while True:
            frame = self.next_frame()
            fields = dict(line.split(": ", 1) for line in frame if not line.startswith(":") and ": " in line)
            if "event" in fields:
                return fields

    def close(self) -> None:
        self.connection.close()
