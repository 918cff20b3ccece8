"""`chunkd status`: what the checkpoint store says about every stream, as a table or JSON."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from chunkd.logs import redact
from chunkd.states import StreamRecord, StreamState
from chunkd.store import CheckpointStore


@dataclass(frozen=True)
class StreamStatus:
    record: StreamRecord
    bytes_done: int
    parts_done: int

    @property
    def percent(self) -> float:
        if self.record.state is StreamState.COMPLETED:
            return 100.0
        if self.record.size <= 0:
            return 0.0
        return min(100.0, 100.0 * self.bytes_done / self.record.size)

    def to_dict(self) -> dict[str, Any]:
        data = self.record.to_dict()
        data["last_error"] = redact(data["last_error"]) if data["last_error"] else None
        return {**data, "bytes_done": self.bytes_done, "parts_done": self.parts_done, "percent": round(self.percent, 1)}


def collect(store: CheckpointStore, states: Iterable[StreamState] | None = None) -> list[StreamStatus]:
    result = []
    for record in store.list_streams(states):
        if record.state is StreamState.COMPLETED:
            result.append(StreamStatus(record, record.size, 0))
            continue
        parts = store.list_parts(record.id)
        result.append(StreamStatus(record, sum(p.size for p in parts), len(parts)))
    return result


def render_json(statuses: list[StreamStatus]) -> str:
    return json.dumps([status.to_dict() for status in statuses], indent=2)


def render_table(statuses: list[StreamStatus]) -> str:
    if not statuses:
        return "no streams recorded yet"
    rows = [("STATE", "DONE", "BYTES", "UPDATED", "FILE", "ERROR")]
    for status in statuses:
        record = status.record
        rows.append(
            (
                record.state.value,
                f"{status.percent:5.1f}%",
                _human(record.size),
                time.strftime("%m-%d %H:%M:%S", time.localtime(record.updated_at)),
                record.relpath,
                redact(record.last_error or "")[:80],
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row[:-1], widths, strict=True)) + "  " + row[-1]
        for row in rows
    ).rstrip()


def _human(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"
