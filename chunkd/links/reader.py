"""Reading a links file: each new URL line becomes a URL record in the store and is queued for
download; a URL the store already knows is not recorded again (a later links file that names it
waits on it, or finds it settled).

Big files stay linear and quiet: a file larger than `MAX_LINKS_FILE_BYTES` is not read at all (one
error line per version of it says so), and only the first `REJECTS_LOGGED` rejected or refused
lines of a file are logged one by one; its report lists them all.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any

from chunkd.links.parse import LinkLine, check_host, redact_url
from chunkd.model.states import UrlRecord, UrlState
from chunkd.pipeline.engine import Engine

logger = logging.getLogger("chunkd.links")

MAX_LINKS_FILE_BYTES = 32 * 1024 * 1024  # ~300,000 URLs; a bigger file is refused, not read
REJECTS_LOGGED = 10  # rejected or refused lines logged one by one per links file; the rest summarized
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def name_hint(url: str) -> str:
    """A safe, unique staging name: the URL's last path segment plus a short hash of the URL."""
    stem = PurePosixPath(url.split("?", 1)[0].split("#", 1)[0]).stem or "download"
    digest = hashlib.sha256(url.encode()).hexdigest()[:8]
    return f"{_UNSAFE.sub('_', stem)[:80]}-{digest}"


class LinksFileReader:
    """Turns a links file's lines into URL records; remembers, per links file, which lines were
    already judged (an appended file is read again without logging its old rejects twice) and
    which too-big version was already refused."""

    def __init__(
        self, engine: Engine, *, queue_url: Callable[[str, str], None], max_bytes: int = MAX_LINKS_FILE_BYTES
    ) -> None:
        self._engine = engine
        self._max_bytes = max_bytes
        self._queue_url = queue_url  # (url, links file): the links file waits on that URL
        self._logged: dict[str, tuple[int, int]] = {}  # links file -> (last line judged, lines logged)
        self._refused_size: dict[str, tuple[int, int]] = {}  # links file -> (size, mtime_ns) refused as too big

    def read_bounded(self, path: Path, relpath: str) -> bytes | None:
        """The file's bytes, or None (logged once per version of the file) when it is too big."""
        info = path.stat()
        if info.st_size <= self._max_bytes:
            self._refused_size.pop(relpath, None)
            return path.read_bytes()
        version = (info.st_size, info.st_mtime_ns)
        if self._refused_size.get(relpath) != version:
            self._refused_size[relpath] = version
            logger.error(
                "links file is %d bytes, more than the %d MiB limit: not read; split it into smaller files",
                info.st_size, self._max_bytes // (1024 * 1024), extra={"relpath": relpath},
            )
        return None

    def admit_lines(self, lines: list[LinkLine], relpath: str) -> None:
        log = self._reject_log(relpath)
        seen: set[str] = set()
        for line in lines:
            if line.url is None:
                log(line.lineno, "links file line %d rejected: %s", line.lineno, line.error)
            elif line.url not in seen:
                seen.add(line.url)
                self._admit(line, relpath, log)
        log.close()

    def forget(self, relpath: str) -> None:
        """The links file is done: a new file of that name starts afresh."""
        self._logged.pop(relpath, None)

    def _reject_log(self, relpath: str) -> _RejectLog:
        last_line, logged = self._logged.get(relpath, (0, 0))
        return _RejectLog(relpath, last_line, logged, lambda state: self._logged.__setitem__(relpath, state))

    def _admit(self, line: LinkLine, links_relpath: str, log: _RejectLog) -> None:
        assert line.url is not None
        store = self._engine.store
        record = store.get_url(line.url)
        if record is not None:
            if not record.state.terminal:
                self._queue_url(record.url, links_relpath)
            return
        folder = str(PurePosixPath(links_relpath).parent)
        hint = name_hint(line.url)
        record = UrlRecord(
            url=line.url, display=redact_url(line.url), links_file=links_relpath,
            relpath=hint if folder == "." else f"{folder}/{hint}",
        )
        refused = check_host(line.url, allow_private=self._engine.settings.allow_private_urls)
        if refused:
            record.move_to(UrlState.REJECTED, error=refused)
            store.save_url(record)
            log(line.lineno, "refused %s: %s", record.display, refused)
            return
        store.save_url(record)
        self._queue_url(record.url, links_relpath)


class _RejectLog:
    """Logs a links file's rejected and refused lines: each line once (lines already judged in an
    earlier read of the file are not logged again), the first `REJECTS_LOGGED` one by one, the
    rest as one count per read."""

    def __init__(self, relpath: str, last_line: int, logged: int, save: Callable[[tuple[int, int]], None]) -> None:
        self._relpath = relpath
        self._last_line = last_line
        self._logged = logged
        self._save = save
        self._unlogged = 0
        self._newest = last_line

    def __call__(self, lineno: int, message: str, *args: Any) -> None:
        if lineno <= self._last_line:
            return
        self._newest = max(self._newest, lineno)
        if self._logged < REJECTS_LOGGED:
            self._logged += 1
            logger.warning(message, *args, extra={"relpath": self._relpath})
        else:
            self._unlogged += 1

    def close(self) -> None:
        if self._unlogged:
            logger.warning(
                "links file: %d more line(s) rejected or refused, not logged one by one (the report lists them)",
                self._unlogged, extra={"relpath": self._relpath},
            )
        self._save((self._newest, self._logged))
