"""Object keys from a template: `{relpath}` (default), `{date}`, `{stem}`, `{ext}`, `{hostname}`,
`{node}` (CHUNKD_NODE: a fleet's boxes sharing one bucket use `{node}/{relpath}`).

A key is safe whatever the file is called: relpaths are already escaped text (see `chunkd.paths`:
no control characters, no undecodable bytes), and what the template adds is escaped the same way.
No segment of a key is `.` or `..` (they are written `%2E`, `%2E%2E`), so a tool that mirrors the
bucket to disk cannot be steered out of its folder, and there is no empty segment or leading '/'.
With the default template the key is the relpath itself, so `urllib.parse.unquote_to_bytes(key)`
gives the file's relative path, byte for byte.
"""

from __future__ import annotations

import socket
import string
import time
from pathlib import PurePosixPath

from chunkd.intake.paths import printable

FIELDS = frozenset({"relpath", "date", "stem", "ext", "hostname", "node", "dir"})
# Object attributes (CHUNKD_METADATA, CHUNKD_TAGS, …) may also name the file and its key.
ATTRIBUTE_FIELDS = FIELDS | {"name", "key"}
_DOT_SEGMENTS = {".": "%2E", "..": "%2E%2E"}


def validate_template(template: str) -> None:
    """Raise ValueError for unknown fields, format specs or a template that cannot vary by file."""
    names = check_fields(template, FIELDS)
    if not names & {"relpath", "stem"}:
        raise ValueError("must contain {relpath} or {stem}, or every file would get the same key")


def check_fields(template: str, fields: frozenset[str]) -> set[str]:
    """The fields `template` names; ValueError for unknown ones, format specs or stray braces."""
    names = set()
    for _, name, spec, conversion in string.Formatter().parse(template):
        if name is None:
            continue
        if name not in fields:
            raise ValueError(f"unknown field {{{name}}}; known: {', '.join(sorted(fields))}")
        if spec or conversion:
            raise ValueError(f"field {{{name}}} takes no format spec or conversion")
        names.add(name)
    return names


def template_values(
    relpath: str, *, now: float | None = None, hostname: str | None = None, node: str | None = None
) -> dict[str, str]:
    """What a template's fields stand for, for the file at `relpath`. `node` defaults to the
    hostname, as CHUNKD_NODE does."""
    path = PurePosixPath(relpath)
    host = (hostname or socket.gethostname()).replace("/", "%2F")
    return {
        "relpath": relpath,
        "date": time.strftime("%Y-%m-%d", time.gmtime(time.time() if now is None else now)),
        "stem": path.stem,
        "ext": path.suffix.lstrip("."),
        "name": path.name,
        "hostname": host,
        "node": node.replace("/", "%2F") if node else host,
        "dir": "" if str(path.parent) == "." else str(path.parent),
    }


def render_key(
    template: str, relpath: str, *, now: float | None = None, hostname: str | None = None, node: str | None = None
) -> str:
    """The object key for a file at `relpath` (an escaped relpath, POSIX separators, relative to
    the input folder)."""
    key = template.format(**template_values(relpath, now=now, hostname=hostname, node=node))
    # S3 treats "a//b" and "/a" literally; collapse them so keys look like the folder they mirror.
    # Control characters can only come from the template or the hostname here: escaped, but a '%'
    # is left alone (the relpath's own escapes must not be escaped twice).
    key = printable(key)
    return "/".join(_DOT_SEGMENTS.get(segment, segment) for segment in key.split("/") if segment)



MAX_KEY_BYTES = 1024  # S3's (and MinIO's) limit on a key, in UTF-8 bytes


def key_problem(key: str) -> str | None:
    """Why S3 would refuse this key, or None: a file 150 folders deep fails with this reason up
    front instead of with whatever the server answers (some, like moto, accept any length)."""
    size = len(key.encode("utf-8"))
    if size > MAX_KEY_BYTES:
        return f"object key is {size} bytes long; S3 allows at most {MAX_KEY_BYTES}"
    return None
