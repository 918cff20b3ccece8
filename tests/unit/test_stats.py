"""`chunkd stats` aggregation (pure) and its table, JSON and CSV renderings."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime

import pytest

from chunkd.model.states import StreamRecord, StreamState
from chunkd.observe.daily import (
    TOTAL,
    aggregate,
    render_csv,
    render_json,
    render_table,
    throughput,
)
from tests.support.sizes import MiB

DAY1 = datetime(2024, 5, 1, 23, 59, 0, tzinfo=UTC).timestamp()
DAY2 = datetime(2024, 5, 2, 0, 1, 0, tzinfo=UTC).timestamp()


def rec(stream_id: str, state: StreamState, *, at: float, size: int = 0, took: float | None = None) -> StreamRecord:
    """A stream finished `at`; a completed one sent its bytes in `took` seconds (None: no bytes sent)."""
    completed = state is StreamState.COMPLETED
    return StreamRecord(
        id=stream_id, relpath=f"{stream_id}.mp4", source_path="/in", bucket="b", key=stream_id, schedule={},
        state=state, size=size, discovered_at=at - 100,
        first_byte_at=(at - took) if took is not None else None,
        completed_at=at if completed else None,
        updated_at=at + (5 if completed else 0),
    )


RECORDS = [
    rec("a", StreamState.COMPLETED, at=DAY1, size=100 * MiB, took=10),  # 10 MiB/s
    rec("b", StreamState.COMPLETED, at=DAY1 - 3600, size=60 * MiB, took=20),  # 3 MiB/s
    rec("c", StreamState.FAILED, at=DAY1 - 60),
    rec("d", StreamState.COMPLETED, at=DAY2, size=7 * MiB, took=None),  # dedup: no bytes sent
    rec("e", StreamState.QUARANTINED, at=DAY2 + 60, size=5),
    rec("f", StreamState.COMPLETED, at=DAY2 + 120, size=2 * MiB, took=1),  # 2 MiB/s
    rec("u", StreamState.UPLOADING, at=DAY2, size=9 * MiB, took=5),  # unfinished: not counted
]


def test_rows_per_utc_day_then_total() -> None:
    rows = aggregate(RECORDS)
    assert [r.day for r in rows] == ["2024-05-01", "2024-05-02", TOTAL]
    day1, day2, total = rows
    assert (day1.completed, day1.failed, day1.quarantined, day1.bytes) == (2, 1, 0, 160 * MiB)
    assert day1.mean_throughput == pytest.approx((10 * MiB + 3 * MiB) / 2)
    assert (day2.completed, day2.failed, day2.quarantined, day2.bytes) == (2, 0, 1, 9 * MiB)
    assert day2.mean_throughput == pytest.approx(2 * MiB)  # the dedup has no throughput
    assert (total.completed, total.failed, total.quarantined, total.bytes) == (4, 1, 1, 169 * MiB)
    assert total.mean_throughput == pytest.approx((10 + 3 + 2) * MiB / 3)  # over files, not over days


def test_completed_counts_on_completed_at_not_updated_at() -> None:
    late_save = rec("a", StreamState.COMPLETED, at=DAY1, size=1, took=1)
    late_save.updated_at = DAY2 + 3600  # e.g. saved again after the after-upload action
    (day, _total) = aggregate([late_save])
    assert day.day == "2024-05-01"


def test_since_leaves_out_older_finishes() -> None:
    rows = aggregate(RECORDS, since=DAY2)
    assert [r.day for r in rows] == ["2024-05-02", TOTAL]
    assert rows[-1].completed == 2


def test_nothing_finished_is_a_zero_total() -> None:
    rows = aggregate([rec("u", StreamState.UPLOADING, at=DAY1)])
    assert [r.to_dict() for r in rows] == [
        {"day": TOTAL, "completed": 0, "failed": 0, "quarantined": 0, "bytes": 0, "mean_throughput": None}
    ]


def test_throughput_needs_elapsed_time() -> None:
    assert throughput(rec("x", StreamState.COMPLETED, at=DAY1, size=10, took=0)) is None
    assert throughput(rec("x", StreamState.COMPLETED, at=DAY1, size=10, took=None)) is None
    assert throughput(rec("x", StreamState.COMPLETED, at=DAY1, size=10, took=2)) == 5


def test_render_json() -> None:
    rows = json.loads(render_json(aggregate(RECORDS)))
    assert rows[0] == {
        "day": "2024-05-01", "completed": 2, "failed": 1, "quarantined": 0, "bytes": 160 * MiB,
        "mean_throughput": round(6.5 * MiB, 1),
    }
    assert rows[-1]["day"] == TOTAL


def test_render_csv() -> None:
    text = render_csv(aggregate(RECORDS))
    rows = list(csv.DictReader(io.StringIO(text)))
    assert text.splitlines()[0] == "day,completed,failed,quarantined,bytes,mean_throughput"
    assert [r["day"] for r in rows] == ["2024-05-01", "2024-05-02", TOTAL]
    assert rows[1]["bytes"] == str(9 * MiB) and rows[1]["quarantined"] == "1"
    nothing = list(csv.DictReader(io.StringIO(render_csv(aggregate([])))))
    assert nothing[0]["mean_throughput"] == ""


def test_render_table() -> None:
    lines = render_table(aggregate(RECORDS)).splitlines()
    assert lines[0].split() == ["DAY", "COMPLETED", "FAILED", "QUARANTINED", "BYTES", "MEAN", "SPEED"]
    assert lines[1].split()[:4] == ["2024-05-01", "2", "1", "0"]
    assert "160.0 MiB" in lines[1] and "6.5 MiB/s" in lines[1]
    assert lines[-1].startswith(TOTAL) and "169.0 MiB" in lines[-1]
    assert len(lines) == 4
