"""The manifest written beside each object, and what `chunkd status` shows from the checkpoint store."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from chunkd import __version__
from chunkd.model.manifest import SCHEMA_VERSION, build_manifest, encode, manifest_key
from chunkd.model.states import PartRecord, StreamRecord, StreamState
from chunkd.observe.overview import collect, nothing_matches, rates, render_json, render_table
from chunkd.store.sqlite import SqliteStore
from tests.support.sizes import MiB

T0 = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC).timestamp()


def stream(**overrides: object) -> StreamRecord:
    base: dict[str, object] = {
        "id": "s1",
        "relpath": "cam/ünïcode clip.mp4",
        "source_path": "/in/cam/ünïcode clip.mp4",
        "bucket": "videos",
        "key": "raw/cam/ünïcode clip.mp4",
        "schedule": {"base": 5 * MiB, "fixed": False},
        "state": StreamState.COMPLETED,
        "size": 5 * MiB + 100,
        "mtime": T0 - 60,
        "upload_id": "up-1",
        "sha256": "f" * 64,
        "discovered_at": T0,
        "first_byte_at": T0 + 1.5,
        "completed_at": T0 + 10,
        "updated_at": T0 + 10,
    }
    base.update(overrides)
    return StreamRecord(**base)  # type: ignore[arg-type]


PARTS = [
    PartRecord(number=1, offset=0, size=5 * MiB, etag='"aa"', sha256="1" * 64),
    PartRecord(number=2, offset=5 * MiB, size=100, etag='"bb"', sha256="2" * 64),
]


# --- manifest ------------------------------------------------------------------------------------


def parse_z(text: str) -> datetime:
    assert text.endswith("Z"), text
    parsed = datetime.fromisoformat(text)  # 3.11 reads the Z itself
    assert parsed.utcoffset() is not None
    return parsed


def test_build_manifest_has_every_documented_field() -> None:
    manifest = build_manifest(
        stream(), PARTS, etag='"abc-2"', hostname="edge-01", completed_at=T0 + 10, upload="multipart",
        media={"valid": True, "duration": 2.0}, media_error=None,
    )

    assert manifest["schema_version"] == SCHEMA_VERSION == 1
    assert manifest["chunkd_version"] == __version__
    assert manifest["stream_id"] == "s1"
    assert manifest["bucket"] == "videos"
    assert manifest["key"] == "raw/cam/ünïcode clip.mp4"
    assert manifest["size"] == 5 * MiB + 100
    assert manifest["sha256"] == "f" * 64
    assert manifest["etag"] == '"abc-2"'
    assert manifest["upload"] == "multipart"
    assert manifest["part_schedule"] == {"base": 5 * MiB, "fixed": False}
    assert manifest["parts"] == [
        {"number": 1, "offset": 0, "size": 5 * MiB, "etag": '"aa"', "sha256": "1" * 64},
        {"number": 2, "offset": 5 * MiB, "size": 100, "etag": '"bb"', "sha256": "2" * 64},
    ]
    assert manifest["source"]["relpath"] == "cam/ünïcode clip.mp4"
    assert manifest["source"]["hostname"] == "edge-01"
    assert manifest["media"] == {"valid": True, "duration": 2.0}
    assert manifest["media_error"] is None
    assert manifest["dedup_of"] is None


def test_manifest_timestamps_are_iso8601_utc_with_z() -> None:
    manifest = build_manifest(stream(), PARTS, etag='"e-2"', hostname="h", completed_at=T0 + 10, upload="multipart")
    stamps = manifest["timestamps"]

    assert parse_z(stamps["discovered"]) == datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)
    assert parse_z(stamps["first_byte_sent"]) == datetime(2024, 5, 1, 12, 0, 1, 500000, tzinfo=UTC)
    assert parse_z(stamps["completed"]) == datetime(2024, 5, 1, 12, 0, 10, tzinfo=UTC)
    assert parse_z(manifest["source"]["mtime"]) == datetime(2024, 5, 1, 11, 59, 0, tzinfo=UTC)
    assert stamps["discovered"] == "2024-05-01T12:00:00Z"


def test_manifest_of_a_single_put_has_no_parts_and_null_first_byte() -> None:
    manifest = build_manifest(
        stream(upload_id=None, first_byte_at=None), [], etag='"e"', hostname="h", completed_at=T0, upload="single"
    )
    assert manifest["upload"] == "single"
    assert manifest["parts"] == []
    assert manifest["timestamps"]["first_byte_sent"] is None


def test_encode_is_utf8_json_that_roundtrips() -> None:
    manifest = build_manifest(stream(), PARTS, etag='"e-2"', hostname="h", completed_at=T0, upload="multipart")
    data = encode(manifest)

    assert isinstance(data, bytes)
    text = data.decode("utf-8")  # strict: raises on invalid UTF-8
    assert json.loads(text) == manifest
    assert text.endswith("\n")


def test_manifest_key_appends_the_suffix() -> None:
    assert manifest_key("raw/a.mp4", ".manifest.json") == "raw/a.mp4.manifest.json"


# --- status --------------------------------------------------------------------------------------


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteStore]:
    db = SqliteStore(str(tmp_path / "state.db"))
    yield db
    db.close()


def seed(store: SqliteStore) -> None:
    uploading = stream(id="up", relpath="a.mp4", state=StreamState.UPLOADING, size=400, discovered_at=T0)
    store.save_stream(uploading)
    for number in (1, 2, 3):
        store.record_part("up", PartRecord(number, (number - 1) * 100, 100, f'"e{number}"', "0" * 64))
    failed = stream(
        id="bad", relpath="sub/b.mov", state=StreamState.FAILED, size=1000, discovered_at=T0 + 1,
        last_error="cannot reach redis://:hunter2@cache:6379/0 (password: hunter2)",
    )
    store.save_stream(failed)
    store.record_part("bad", PartRecord(1, 0, 100, '"x"', "0" * 64))
    store.save_stream(stream(id="done", relpath="c.mkv", state=StreamState.COMPLETED, size=5000, discovered_at=T0 + 2))
    store.save_stream(stream(id="new", relpath="d.mp4", state=StreamState.PENDING, size=0, discovered_at=T0 + 3))


def test_collect_computes_progress_from_recorded_parts(store: SqliteStore) -> None:
    seed(store)
    by_id = {s.record.id: s for s in collect(store)}

    assert by_id.keys() == {"up", "bad", "done", "new"}
    assert (by_id["up"].bytes_done, by_id["up"].parts_done, by_id["up"].percent) == (300, 3, 75.0)
    assert (by_id["bad"].bytes_done, by_id["bad"].percent) == (100, 10.0)
    assert (by_id["done"].bytes_done, by_id["done"].percent) == (5000, 100.0)
    assert (by_id["new"].bytes_done, by_id["new"].percent) == (0, 0.0)  # size 0: no division by zero


def test_collect_can_filter_by_state(store: SqliteStore) -> None:
    seed(store)
    assert [s.record.id for s in collect(store, [StreamState.FAILED])] == ["bad"]


def test_percent_never_exceeds_100_while_the_size_lags(store: SqliteStore) -> None:
    store.save_stream(stream(id="grow", state=StreamState.UPLOADING, size=100))
    store.record_part("grow", PartRecord(1, 0, 150, '"e"', "0" * 64))  # parts ahead of the saved size
    (status,) = collect(store)
    assert status.percent == 100.0


def test_render_table_lists_every_file_and_redacts_errors(store: SqliteStore) -> None:
    seed(store)
    table = render_table(collect(store))
    lines = table.splitlines()

    assert lines[0].split() == ["STATE", "ID", "FILE", "KEY", "DONE", "%", "SIZE", "SPEED", "ETA", "ERROR"]
    assert len(lines) == 5
    for relpath in ("a.mp4", "sub/b.mov", "c.mkv", "d.mp4"):
        assert sum(relpath in line for line in lines) == 1
    failed_line = next(line for line in lines if "sub/b.mov" in line)
    assert "FAILED" in failed_line
    assert " 10.0%" in failed_line
    assert "redis://***@cache:6379/0" in failed_line
    assert "hunter2" not in table


def test_render_table_of_nothing_says_so() -> None:
    assert render_table([]) == "no streams recorded yet"


def test_render_json_parses_and_has_progress(store: SqliteStore) -> None:
    seed(store)
    rows = {row["id"]: row for row in json.loads(render_json(collect(store)))}

    assert rows["up"]["bytes_done"] == 300
    assert rows["up"]["parts_done"] == 3
    assert rows["up"]["percent"] == 75.0
    assert rows["up"]["state"] == "UPLOADING"
    assert rows["done"]["percent"] == 100.0
    assert rows["bad"]["relpath"] == "sub/b.mov"
    assert "hunter2" not in json.dumps(rows)
    assert rows["new"]["last_error"] is None


def test_status_rows_carry_the_id_and_key_that_retry_and_cancel_need(store: SqliteStore) -> None:
    store.save_stream(stream(id="0123abcd4567ef89", relpath="a b.mp4", key="raw/a b.mp4"))
    table = render_table(collect(store, now=T0 + 20))
    row = table.splitlines()[1]
    assert row.split()[:2] == ["COMPLETED", "0123abcd4567ef89"]
    assert "a b.mp4" in row and "raw/a b.mp4" in row


def test_an_empty_filtered_status_names_the_filter() -> None:
    assert render_table([], empty=nothing_matches([StreamState.FAILED], None)) == "no stream in state FAILED"
    both = nothing_matches([StreamState.FAILED, StreamState.COMPLETED], 86400.0)
    assert both == "no stream in state FAILED or COMPLETED updated in the last 1d"
    assert nothing_matches(None, 5400.0) == "no stream updated in the last 90m"


def test_speed_of_a_finished_stream_is_over_the_time_spent_sending() -> None:
    # 19 MiB sent in 1 s of the 10 s between the first byte and completion (the rest: the idle wait)
    done = stream(size=19 * MiB, first_byte_at=T0, completed_at=T0 + 10, send_seconds=1.0)
    assert rates(done, 19 * MiB, now=T0 + 60) == (19 * MiB, None)
    failed = stream(state=StreamState.FAILED, size=19 * MiB, updated_at=T0 + 10, first_byte_at=T0, send_seconds=2.0)
    assert rates(failed, 10 * MiB, now=T0 + 60) == (5 * MiB, None)



def test_collect_with_a_limit_gives_the_newest_and_reads_only_their_parts(store: SqliteStore) -> None:
    for n in range(6):
        store.save_stream(stream(id=f"s{n}", relpath=f"{n}.mp4", state=StreamState.UPLOADING, discovered_at=1000.0 + n))
    asked: list[str] = []
    reads = store.list_parts

    def counted(stream_id: str) -> list[PartRecord]:
        asked.append(stream_id)
        return reads(stream_id)

    store.list_parts = counted  # type: ignore[method-assign]
    assert [s.record.id for s in collect(store, limit=2)] == ["s5", "s4"]
    assert sorted(asked) == ["s4", "s5"]
