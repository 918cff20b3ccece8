"""Logging: JSON lines when not on a terminal, readable text on one; secrets never leave."""

from __future__ import annotations

import logging
import re
import sys
from datetime import UTC, datetime
from typing import Any

from pythonjsonlogger.json import JsonFormatter

# Fields a line about a file may carry; shown as key=value in text mode.
CONTEXT_FIELDS = (
    "stream_id", "relpath", "key", "part", "parts", "bytes", "duration", "path", "parts_recorded", "parts_on_server",
)

_USERINFO = re.compile(r"(?<![A-Za-z0-9+.\-])(?P<scheme>[a-zA-Z][a-zA-Z0-9+.\-]*://)[^/?#\\\s]*@")
_SECRET_PARAMS = re.compile(
    r"(?i)(?P<name>aws_secret_access_key|secret_key|secret|password|token|x-amz-signature|x-amz-credential|signature)"
    r"(?P<sep>[=:]\s*)(?P<value>[^\s&,;'\"]+)"
)


def redact(text: str) -> str:
    """Remove URL userinfo (redis://:pw@host) and key=secret pairs from a string."""
    text = _USERINFO.sub(r"\g<scheme>***@", text)
    return _SECRET_PARAMS.sub(r"\g<name>\g<sep>***", text)


class RedactingFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if record.args:
            record.msg = record.getMessage()
            record.args = None
        record.msg = redact(str(record.msg))
        if record.exc_text:  # a traceback another handler already rendered (and cached) unredacted
            record.exc_text = redact(record.exc_text)
        for name in CONTEXT_FIELDS:
            value = getattr(record, name, None)
            if isinstance(value, str):
                setattr(record, name, redact(value))
        return True


class _RedactingTracebacks:
    """Tracebacks and stacks are rendered by the formatter, after the filter ran: redact them here."""

    def formatException(self, ei: Any) -> Any:
        return _redact_lines(super().formatException(ei))  # type: ignore[misc]

    def formatStack(self, stack_info: str) -> Any:
        return _redact_lines(super().formatStack(stack_info))  # type: ignore[misc]


def _redact_lines(text: Any) -> Any:
    return [redact(line) for line in text] if isinstance(text, list) else redact(text)


class _JsonFormatter(_RedactingTracebacks, JsonFormatter):
    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        """ISO-8601 in UTC with its zone (2026-12-04T14:36:14.123Z): a log shipper on another
        host, or a reader in another time zone, places the line without guessing."""
        stamp = datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")
        return stamp.removesuffix("+00:00") + "Z"


class TextFormatter(_RedactingTracebacks, logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        context = " ".join(f"{name}={getattr(record, name)!s}" for name in CONTEXT_FIELDS if hasattr(record, name))
        return f"{line}  [{context}]" if context else line


def setup_logging(level: str = "INFO", fmt: str = "auto", *, stream: Any = None) -> None:
    stream = stream or sys.stderr
    if fmt == "auto":
        fmt = "text" if hasattr(stream, "isatty") and stream.isatty() else "json"
    handler = logging.StreamHandler(stream)
    if fmt == "json":
        handler.setFormatter(
            _JsonFormatter(
                "%(asctime)s %(levelname)s %(name)s %(message)s",
                rename_fields={"asctime": "timestamp", "levelname": "level", "name": "logger", "message": "event"},
            )
        )
    else:
        handler.setFormatter(TextFormatter("%(asctime)s %(levelname)-7s %(message)s", datefmt="%H:%M:%S"))
    handler.addFilter(RedactingFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    for noisy in ("botocore", "boto3", "urllib3", "s3transfer", "watchdog"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
