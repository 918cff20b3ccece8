"""Object keys from a template: `{relpath}` (default), `{date}`, `{stem}`, `{ext}`, `{hostname}`."""

from __future__ import annotations

import socket
import string
import time
from pathlib import PurePosixPath

FIELDS = frozenset({"relpath", "date", "stem", "ext", "hostname", "dir"})


def validate_template(template: str) -> None:
    """Raise ValueError for unknown fields, format specs or a template that cannot vary by file."""
    names = set()
    for _, name, spec, conversion in string.Formatter().parse(template):
        if name is None:
            continue
        if name not in FIELDS:
            raise ValueError(f"unknown field {{{name}}}; known: {', '.join(sorted(FIELDS))}")
        if spec or conversion:
            raise ValueError(f"field {{{name}}} takes no format spec or conversion")
        names.add(name)
    if not names & {"relpath", "stem"}:
        raise ValueError("must contain {relpath} or {stem}, or every file would get the same key")


def render_key(template: str, relpath: str, *, now: float | None = None, hostname: str | None = None) -> str:
    """The object key for a file at `relpath` (POSIX separators, relative to the input folder)."""
    path = PurePosixPath(relpath)
    values = {
        "relpath": relpath,
        "date": time.strftime("%Y-%m-%d", time.gmtime(time.time() if now is None else now)),
        "stem": path.stem,
        "ext": path.suffix.lstrip("."),
        "hostname": hostname or socket.gethostname(),
        "dir": "" if str(path.parent) == "." else str(path.parent),
    }
    key = template.format(**values)
    # S3 treats "a//b" and "/a" literally; collapse them so keys look like the folder they mirror.
    return "/".join(segment for segment in key.split("/") if segment)
