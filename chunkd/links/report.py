"""Settling a links file: once every line is terminal and the file has been quiet for
`idle_seconds`, its report is written beside it and it is renamed `<name>.done`.

The report is built once, when the last URL the file waits for is settled, not after every
download, and it is written one entry a line: 100,000 entries never sit in memory as one string.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from chunkd.errors import StoreError
from chunkd.intake.paths import free_name, local_path
from chunkd.links.parse import LinkLine, parse_links_bytes, redact_url
from chunkd.model.states import UrlState
from chunkd.pipeline.engine import Engine

logger = logging.getLogger("chunkd.links")


@dataclass(frozen=True)
class ReportLine:
    line: int
    url: str
    state: str  # COMPLETED | FAILED | PENDING… | REJECTED | DUPLICATE
    key: str | None = None
    error: str | None = None
    duplicate_of_line: int | None = None
    already_uploaded: bool = False


class LinksFileSettler:
    """Writes a settled links file's report and renames it `.done`, one file at a time; a file
    still being written to is read again once it has been quiet long enough."""

    def __init__(
        self, engine: Engine, *, read_again: Callable[[Path, str], object], on_settled: Callable[[str], None]
    ) -> None:
        self._engine = engine
        self._read_again = read_again  # (path, relpath): queue the file to be read (and settled) again
        self._on_settled = on_settled  # relpath: the file is `.done`
        self._settle_lock = threading.Lock()
        self._rechecks_lock = threading.Lock()
        self._rechecks: set[str] = set()  # links files with a read-again timer running

    def settle_quietly(self, links_file: str) -> None:
        """`settle`, with any failure logged: the next read of the file tries again."""
        try:
            path = local_path(self._engine.input_dir, links_file)
            if path.exists():
                self.settle(path, links_file)
        except StoreError as exc:
            logger.error("state store unavailable while settling a links file: %s", exc, extra={"relpath": links_file})
        except Exception:  # the next read of the file tries again
            logger.exception("could not settle links file", extra={"relpath": links_file})

    def settle(self, path: Path, relpath: str) -> None:
        """Once every line is terminal and the file has been quiet for `idle_seconds` (a writer
        may not be done with it yet): write `<name>.report.json` and rename to `<name>.done`."""
        with self._settle_lock:
            try:
                quiet_for = time.time() - path.stat().st_mtime
                if quiet_for < self._engine.settings.idle_seconds:
                    self._read_again_later(path, relpath, self._engine.settings.idle_seconds - quiet_for)
                    return
                lines = parse_links_bytes(path.read_bytes())
            except FileNotFoundError:
                return
            report = self._report(lines, relpath)
            if report is None:
                return
            done = free_name(path.with_name(path.name + ".done"))
            _write_report(done.with_name(done.name.removesuffix(".done") + ".report.json"), relpath, report)
            path.rename(done)
            self._on_settled(relpath)
        failed = not_uploaded(report)
        logger.info("links file done: %d line(s), %d not uploaded", len(report), failed, extra={"relpath": relpath})

    def _read_again_later(self, path: Path, relpath: str, delay: float) -> None:
        """One timer per file: whatever was appended by then is read, then the file settles."""
        with self._rechecks_lock:
            if relpath in self._rechecks or self._engine.stop.is_set():
                return
            self._rechecks.add(relpath)

        def again() -> None:
            with self._rechecks_lock:
                self._rechecks.discard(relpath)
            self._read_again(path, relpath)

        timer = threading.Timer(max(0.05, delay + 0.05), again)
        timer.daemon = True
        timer.start()

    def _report(self, lines: list[LinkLine], relpath: str) -> list[ReportLine] | None:
        """One entry per line, or None as soon as a line turns out not to be settled yet."""
        report: list[ReportLine] = []
        seen: dict[str, int] = {}
        for line in lines:
            if line.url is None:
                report.append(ReportLine(line.lineno, redact_url(line.raw), "REJECTED", error=line.error))
                continue
            shown = redact_url(line.url)
            if line.url in seen:
                report.append(ReportLine(line.lineno, shown, "DUPLICATE", duplicate_of_line=seen[line.url]))
                continue
            seen[line.url] = line.lineno
            record = self._engine.store.get_url(line.url)
            if record is None or not record.state.terminal:
                return None
            # Asked for by an earlier links file: not fetched again, the report names the object.
            already = record.state is UrlState.COMPLETED and record.links_file != relpath
            report.append(
                ReportLine(line.lineno, shown, record.state.value, key=record.key, error=record.last_error,
                           already_uploaded=already)
            )
        return report


def not_uploaded(report: list[ReportLine]) -> int:
    """Lines whose URL is not in the bucket: a duplicate line counts as its first line does."""
    uploaded = {entry.line for entry in report if entry.state == "COMPLETED"}
    return sum(
        entry.state != "COMPLETED" and (entry.state != "DUPLICATE" or entry.duplicate_of_line not in uploaded)
        for entry in report
    )


def _write_report(target: Path, relpath: str, report: list[ReportLine]) -> None:
    """The report as JSON, one line per entry, written to a temporary name and renamed into place:
    a reader never sees half a report, and 100,000 entries never sit in memory as one string."""
    temporary = target.with_name(target.name + ".tmp")
    with open(temporary, "w", encoding="utf-8") as handle:
        handle.write('{\n  "links_file": ' + json.dumps(relpath) + ',\n  "lines": [')
        handle.writelines(
            ("\n    " if index == 0 else ",\n    ") + json.dumps(_entry_dict(entry)) for index, entry in enumerate(report)
        )
        handle.write("\n  ]\n}\n")
    os.replace(temporary, target)


def _entry_dict(entry: ReportLine) -> dict[str, Any]:
    data = {"line": entry.line, "url": entry.url, "state": entry.state, "key": entry.key, "error": entry.error}
    if entry.duplicate_of_line is not None:
        data["duplicate_of_line"] = entry.duplicate_of_line
    if entry.already_uploaded:
        data["already_uploaded"] = True
    return data
