"""`chunkd stats`: finished files per UTC day (completed, failed, quarantined, bytes, throughput).

Pure: records in, rows out. A finished stream counts on the UTC date of its `completed_at`, or of
its `updated_at` when it did not complete (failed, quarantined). Unfinished streams are left out.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from chunkd.model.states import StreamRecord, StreamState
from chunkd.observe.overview import human_size

TOTAL = "total"
COLUMNS = ("day", "completed", "failed", "quarantined", "bytes", "mean_throughput")


@dataclass
class DayStats:
    day: str  # YYYY-MM-DD (UTC), or "total"
    completed: int = 0
    failed: int = 0
    quarantined: int = 0
    bytes: int = 0
    throughputs: list[float] = field(default_factory=list)  # bytes/s of each completed file that sent bytes

    @property
    def mean_throughput(self) -> float | None:
        return sum(self.throughputs) / len(self.throughputs) if self.throughputs else None

    def add(self, record: StreamRecord) -> None:
        if record.state is StreamState.COMPLETED:
            self.completed += 1
            self.bytes += record.size
            speed = throughput(record)
            if speed is not None:
                self.throughputs.append(speed)
        elif record.state is StreamState.FAILED:
            self.failed += 1
        elif record.state is StreamState.QUARANTINED:
            self.quarantined += 1

    def to_dict(self) -> dict[str, Any]:
        mean = self.mean_throughput
        return {
            "day": self.day, "completed": self.completed, "failed": self.failed, "quarantined": self.quarantined,
            "bytes": self.bytes, "mean_throughput": None if mean is None else round(mean, 1),
        }


def finished_at(record: StreamRecord) -> float:
    if record.state is StreamState.COMPLETED and record.completed_at is not None:
        return record.completed_at
    return record.updated_at


def throughput(record: StreamRecord) -> float | None:
    """Bytes/s from first byte sent to completion; None when no byte was sent (dedup) or unknown."""
    if record.first_byte_at is None or record.completed_at is None:
        return None
    elapsed = record.completed_at - record.first_byte_at
    return record.size / elapsed if elapsed > 0 else None


def aggregate(records: Iterable[StreamRecord], *, since: float | None = None) -> list[DayStats]:
    """One row per UTC day with a finished stream (at or after `since`), oldest first, then the total."""
    days: dict[str, DayStats] = {}
    total = DayStats(TOTAL)
    for record in records:
        if not record.state.terminal:
            continue
        at = finished_at(record)
        if since is not None and at < since:
            continue
        day = datetime.fromtimestamp(at, UTC).date().isoformat()
        days.setdefault(day, DayStats(day)).add(record)
        total.add(record)
    return [days[day] for day in sorted(days)] + [total]


def render_json(rows: list[DayStats]) -> str:
    return json.dumps([row.to_dict() for row in rows], indent=2)


def render_csv(rows: list[DayStats]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if v is None else v) for k, v in row.to_dict().items()})
    return out.getvalue().rstrip("\n")


def render_table(rows: list[DayStats]) -> str:
    table = [("DAY", "COMPLETED", "FAILED", "QUARANTINED", "BYTES", "MEAN SPEED")]
    for row in rows:
        mean = row.mean_throughput
        table.append(
            (
                row.day, str(row.completed), str(row.failed), str(row.quarantined), human_size(row.bytes),
                "-" if mean is None else f"{human_size(int(mean))}/s",
            )
        )
    widths = [max(len(line[i]) for line in table) for i in range(len(table[0]))]
    return "\n".join("  ".join(_align(line, widths)) for line in table)


def _align(line: tuple[str, ...], widths: list[int]) -> list[str]:
    """The day left-aligned, numbers right-aligned."""
    return [cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(line, widths, strict=True))]
