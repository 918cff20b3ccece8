"""`chunkd status`: what the checkpoint store says about its streams (the newest, and every active
one, of a long history), as a table or JSON."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from chunkd.intake.paths import printable
from chunkd.model.node import Scope
from chunkd.model.states import StreamRecord, StreamState, UrlRecord, UrlState
from chunkd.observe.logs import redact
from chunkd.store import StreamHistory, StreamReader

_ACTIVE = (StreamState.PENDING, StreamState.UPLOADING, StreamState.FINALIZING)
_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(text: str) -> float:
    """'30m', '2h', '7d' (also 's', 'w', and combinations like '1d12h') -> seconds."""
    pieces = re.findall(r"(\d+(?:\.\d+)?)([smhdw])", text.strip().lower())
    if not pieces or "".join(n + u for n, u in pieces) != text.strip().lower():
        raise ValueError(f"not a duration: {text!r} (examples: 30m, 2h, 7d)")
    return sum(float(number) * _DURATION_UNITS[unit] for number, unit in pieces)


@dataclass(frozen=True)
class StreamStatus:
    record: StreamRecord
    bytes_done: int
    parts_done: int
    speed: float | None = None  # bytes/s: over the time spent sending once finished, else since the first byte
    eta: float | None = None  # seconds left at that speed; unfinished streams only

    @property
    def percent(self) -> float:
        if self.record.state is StreamState.COMPLETED:
            return 100.0
        if self.record.size <= 0:
            return 0.0
        return min(100.0, 100.0 * self.bytes_done / self.record.size)

    def to_dict(self) -> dict[str, Any]:
        data = self.record.to_dict()
        data["last_error"] = printable(redact(data["last_error"])) if data["last_error"] else None
        progress = {"bytes_done": self.bytes_done, "parts_done": self.parts_done, "percent": round(self.percent, 1)}
        rates = {
            "speed": None if self.speed is None else round(self.speed, 1),
            "eta": None if self.eta is None else round(self.eta, 1),
        }
        return {**data, **progress, **rates}


def collect(
    store: StreamHistory,
    states: Iterable[StreamState] | None = None,
    *,
    since: float | None = None,
    now: float | None = None,
    scope: Scope | None = None,
    limit: int | None = None,
) -> list[StreamStatus]:
    """Every stream (in `states`, updated at or after `since`, of the node `scope` names: None for a
    fleet's every node) with its progress, speed and ETA, oldest discovery first; with `limit`, the
    newest that many only, newest first, read a page at a time (`_Pages`), so a page polling a box
    with a long history reads those records and their parts alone."""
    now = time.time() if now is None else now
    if limit is None:
        records = [record for record in store.list_streams(states) if _wanted(record, since, scope)]
    else:
        records = _Pages(store, states, since=since, scope=scope).newest(limit)
    return [_status_of(store, record, now) for record in records]


@dataclass(frozen=True)
class Listing:
    """What `chunkd status` shows of a long history: `statuses`, oldest discovery first, and how
    many other streams match: `hidden` exactly, or at most that many when not `exact` (a filter
    the store's index cannot count, such as --since or a fleet's node, left some records unread)."""

    statuses: list[StreamStatus]
    hidden: int = 0
    exact: bool = True

    def note(self) -> str | None:
        if self.hidden <= 0:
            return None
        streams = f"{self.hidden:,} older stream{'' if self.hidden == 1 else 's'}"
        return f"… {'' if self.exact else 'up to '}{streams} not shown (--all, or --limit N)"


def recent(
    store: StreamHistory,
    states: Iterable[StreamState] | None = None,
    *,
    limit: int,
    since: float | None = None,
    now: float | None = None,
    scope: Scope | None = None,
) -> Listing:
    """The newest `limit` streams `collect` would list, and every active one however old (an
    upload stuck for a week must not hide behind a day of finished ones); and how many it left out.
    Records are read for those shown, and for those read past on the way (another node's, say)."""
    now = time.time() if now is None else now
    chosen = None if states is None else list(states)
    pages = _Pages(store, chosen, since=since, scope=scope)
    records = pages.newest(limit)
    active = [state for state in _ACTIVE if chosen is None or state in chosen]
    shown = {record.id for record in records}
    records += [
        record for record in (store.list_streams(active) if active else [])
        if record.id not in shown and _wanted(record, since, scope)
    ]
    records.sort(key=lambda record: (record.discovered_at, record.id))
    hidden, exact = pages.left_out(records)
    return Listing([_status_of(store, record, now) for record in records], hidden, exact)


class _Pages:
    """A store's streams, newest discovery first, read a page at a time until `limit` pass the
    filters the store does not apply (`since`, `scope`). Pages double in size: a node whose
    streams lie far back in a fleet's history costs a few round trips, not one per page."""

    def __init__(
        self, store: StreamHistory, states: Iterable[StreamState] | None, *, since: float | None, scope: Scope | None
    ) -> None:
        self.store = store
        self.states = None if states is None else list(states)
        self.since, self.scope = since, scope
        self.filtered = since is not None or (scope is not None and not scope.single_box)
        self.read: set[str] = set()
        self.matched: list[StreamRecord] = []  # every record read that passed, newest first
        self.ended = False

    def newest(self, limit: int) -> list[StreamRecord]:
        size, offset = max(1, limit), 0
        while len(self.matched) < limit and not self.ended:
            page = self.store.newest_streams(self.states, limit=size, offset=offset)
            self.ended = not page
            # A stream discovered meanwhile shifts the pages by one: its neighbour comes twice.
            fresh = [record for record in page if record.id not in self.read]
            self.read.update(record.id for record in fresh)
            self.matched += [record for record in fresh if _wanted(record, self.since, self.scope)]
            offset, size = offset + size, size * 2
        return self.matched[:limit]

    def left_out(self, shown: list[StreamRecord]) -> tuple[int, bool]:
        """(how many matching streams are not in `shown`, whether that is exact): those read and
        passed over, and those never read, counted by the index (all of them match when unfiltered)."""
        ids = {record.id for record in shown}
        passed_over = sum(1 for record in self.matched if record.id not in ids)
        if self.ended:
            return passed_over, True
        unread = self.store.count_streams(self.states) - len(self.read) - len(ids - self.read)
        return passed_over + max(0, unread), not self.filtered or unread <= 0


def _wanted(record: StreamRecord, since: float | None, scope: Scope | None) -> bool:
    return (since is None or record.updated_at >= since) and (scope is None or scope.holds(record))


def _status_of(store: StreamReader, record: StreamRecord, now: float) -> StreamStatus:
    if record.state is StreamState.COMPLETED:
        bytes_done, parts_done = record.size, 0
    else:
        parts = store.list_parts(record.id)
        bytes_done, parts_done = sum(p.size for p in parts), len(parts)
    speed, eta = rates(record, bytes_done, now=now)
    return StreamStatus(record, bytes_done, parts_done, speed, eta)


def rates(record: StreamRecord, bytes_done: int, *, now: float) -> tuple[float | None, float | None]:
    """(bytes/s, seconds left). A finished stream's speed is over the time it spent sending (not
    the idle wait before finalizing, nor the wait for a recording to grow); an unfinished one's
    from the first byte sent to now, the pace its ETA is at."""
    if record.state not in _ACTIVE and record.send_seconds > 0:
        sent = record.size if record.state is StreamState.COMPLETED else bytes_done
        return (sent / record.send_seconds if sent > 0 else None), None
    if record.first_byte_at is None:
        return None, None
    if record.state is StreamState.COMPLETED:
        end, sent = record.completed_at, record.size
    elif record.state in _ACTIVE:
        end, sent = now, bytes_done
    else:
        end, sent = record.updated_at, bytes_done
    if end is None or end <= record.first_byte_at or sent <= 0:
        return None, None
    speed = sent / (end - record.first_byte_at)
    if record.state not in _ACTIVE:
        return speed, None
    return speed, max(0.0, record.size - bytes_done) / speed


def render_json(statuses: list[StreamStatus]) -> str:
    return json.dumps([status.to_dict() for status in statuses], indent=2)


def render_table(
    statuses: list[StreamStatus], *, empty: str = "no streams recorded yet", nodes: bool = False
) -> str:
    """`empty`: what to say when there is no row (see `nothing_matches` for a filtered listing).
    `nodes`: a NODE column (a fleet's streams, `chunkd status --all-nodes`)."""
    if not statuses:
        return empty
    # STATE and ID first: scripts split a row on whitespace, and a file name or key may contain
    # spaces; the ID is what `chunkd retry` and `chunkd cancel` take. A node name has no space.
    node_column: tuple[str, ...] = ("NODE",) if nodes else ()
    rows = [("STATE", "ID", *node_column, "FILE", "KEY", "DONE %", "SIZE", "SPEED", "ETA", "ERROR")]
    for status in statuses:
        record = status.record
        rows.append(
            (
                record.state.value,
                record.id,
                *((record.node or "-",) if nodes else ()),
                printable(record.relpath),
                printable(record.key),
                f"{status.percent:5.1f}%",
                human_size(record.size),
                "-" if status.speed is None else f"{human_size(int(status.speed))}/s",
                "-" if status.eta is None else short_duration(status.eta),
                printable(redact(record.last_error or ""))[:80],
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row[:-1], widths, strict=True)) + "  " + row[-1]
        for row in rows
    ).rstrip()


def nothing_matches(states: Iterable[StreamState] | None, since: float | None) -> str:
    """The empty listing's line for a filtered status: "no stream in state FAILED updated in the last 1d"."""
    named = [state.value for state in states or ()]
    text = "no stream" + (f" in state {' or '.join(named)}" if named else "")
    return text + (f" updated in the last {_age(since)}" if since is not None else "")


def _age(seconds: float) -> str:
    """A --since age as it was probably typed: 1d, 30m, 2w; else as short_duration puts it."""
    for unit, size in sorted(_DURATION_UNITS.items(), key=lambda item: -item[1]):
        if seconds >= size and seconds % size == 0:
            return f"{seconds // size:g}{unit}"
    return short_duration(seconds)


def short_duration(seconds: float) -> str:
    """42s, 3m05s, 1h02m, 2d03h: two units at most, enough for an ETA."""
    whole = round(seconds)
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    if whole < 86400:
        return f"{whole // 3600}h{whole % 3600 // 60:02d}m"
    return f"{whole // 86400}d{whole % 86400 // 3600:02d}h"


def human_size(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"


def render_downloads(records: list[UrlRecord]) -> str:
    """URLs from links files: state, progress, and the object or the error."""
    rows = [("DOWNLOAD", "DONE", "SIZE", "URL", "OBJECT / ERROR")]
    for record in records:
        percent = 100.0 if record.state is UrlState.COMPLETED else (
            100.0 * record.bytes_done / record.size if record.size else 0.0
        )
        outcome = record.key or printable(redact(record.last_error or ""))
        rows.append(
            (record.state.value, f"{percent:5.1f}%", human_size(record.size or 0), printable(record.display), outcome[:80])
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row[:-1], widths, strict=True)) + "  " + row[-1]
        for row in rows
    ).rstrip()
