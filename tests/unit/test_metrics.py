"""Metrics: counters as rendered for Prometheus, and the gauges read from the store at scrape time."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from chunkd.errors import StoreError
from chunkd.model.states import PartRecord, StreamRecord, StreamState
from chunkd.observe.metrics import Metrics, StoreSnapshot, store_snapshot
from chunkd.s3.breaker import BreakerState
from chunkd.store.sqlite import SqliteStore
from tests.support.sizes import MiB

T0 = 1_700_000_000.0


def samples(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """(sample name, sorted labels) -> value, from a real render()."""
    body, _ = metrics.render()
    found = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def value(metrics: Metrics, name: str, **labels: str) -> float | None:
    return samples(metrics).get((name, tuple(sorted(labels.items()))))


def test_render_returns_prometheus_text_and_content_type() -> None:
    body, content_type = Metrics().render()
    assert content_type.startswith("text/plain")
    assert b"# TYPE chunkd_uploaded_bytes_total counter" in body


def test_counters_render_with_their_values() -> None:
    metrics = Metrics()
    metrics.part_uploaded(5 * MiB)
    metrics.part_uploaded(100)
    metrics.object_uploaded(42)
    metrics.retry("SlowDown")
    metrics.retry("SlowDown")
    metrics.retry("ConnectionError")
    metrics.s3_error("AccessDenied")
    metrics.store_error()
    metrics.file_finished("completed")
    metrics.file_finished("quarantined")
    metrics.download_bytes.inc(7)
    metrics.parts_in_flight.inc(3)
    metrics.finalize_seconds.observe(0.2)
    metrics.set_breaker_state("s3", BreakerState.OPEN)

    assert value(metrics, "chunkd_uploaded_bytes_total") == 5 * MiB + 100 + 42
    assert value(metrics, "chunkd_uploaded_parts_total") == 2
    assert value(metrics, "chunkd_retries_total", reason="slowdown") == 2
    assert value(metrics, "chunkd_retries_total", reason="connectionerror") == 1
    assert value(metrics, "chunkd_s3_errors_total", code="accessdenied") == 1
    assert value(metrics, "chunkd_store_errors_total") == 1
    assert value(metrics, "chunkd_files_total", outcome="completed") == 1
    assert value(metrics, "chunkd_files_total", outcome="quarantined") == 1
    assert value(metrics, "chunkd_download_bytes_total") == 7
    assert value(metrics, "chunkd_parts_in_flight") == 3
    assert value(metrics, "chunkd_finalize_seconds_count") == 1
    assert value(metrics, "chunkd_finalize_seconds_bucket", le="0.25") == 1
    assert value(metrics, "chunkd_finalize_seconds_bucket", le="0.1") == 0
    assert value(metrics, "chunkd_circuit_breaker_state", endpoint="s3") == 2


def test_every_file_outcome_is_exported_from_the_start() -> None:
    metrics = Metrics()
    for outcome in ("completed", "failed", "quarantined", "deduplicated"):
        assert value(metrics, "chunkd_files_total", outcome=outcome) == 0


def test_unknown_outcome_is_refused() -> None:
    with pytest.raises(ValueError, match="skipped"):
        Metrics().file_finished("skipped")


def test_breaker_state_must_be_known() -> None:
    with pytest.raises(ValueError):
        Metrics().set_breaker_state("s3", 7)


def test_finalize_buckets_span_fifty_ms_to_ten_minutes() -> None:
    metrics = Metrics()
    bounds = {labels[0][1] for (name, labels) in samples(metrics) if name == "chunkd_finalize_seconds_bucket"}
    assert {"0.05", "600.0", "+Inf"} <= bounds


def test_two_instances_do_not_share_a_registry() -> None:
    first, second = Metrics(), Metrics()
    first.part_uploaded(10)
    assert value(first, "chunkd_uploaded_parts_total") == 1
    assert value(second, "chunkd_uploaded_parts_total") == 0


def test_queue_depth_is_read_at_scrape_time_and_survives_a_failing_callable() -> None:
    metrics = Metrics()
    depth = {"n": 4}

    def read() -> int:
        if depth["n"] < 0:
            raise RuntimeError("scheduler gone")
        return depth["n"]

    metrics.watch_queue_depth(read)
    assert value(metrics, "chunkd_queue_depth") == 4
    depth["n"] = 9
    assert value(metrics, "chunkd_queue_depth") == 9
    depth["n"] = -1
    assert math.isnan(value(metrics, "chunkd_queue_depth") or 0.0)


# --- scrape-time store gauges ---------------------------------------------------------------------


def test_store_gauges_follow_the_callable_across_scrapes() -> None:
    current = StoreSnapshot({"UPLOADING": 2, "COMPLETED": 5}, unfinished_bytes=300, oldest_unfinished_age=12.5)
    metrics = Metrics(snapshot=lambda: current)

    assert value(metrics, "chunkd_streams", state="uploading") == 2
    assert value(metrics, "chunkd_streams", state="completed") == 5
    assert value(metrics, "chunkd_unfinished_bytes") == 300
    assert value(metrics, "chunkd_oldest_unfinished_seconds") == 12.5

    current = StoreSnapshot({"UPLOADING": 0, "COMPLETED": 7}, unfinished_bytes=0, oldest_unfinished_age=None)
    assert value(metrics, "chunkd_streams", state="uploading") == 0
    assert value(metrics, "chunkd_streams", state="completed") == 7
    assert value(metrics, "chunkd_unfinished_bytes") == 0
    assert value(metrics, "chunkd_oldest_unfinished_seconds") == 0  # nothing unfinished


def test_registering_does_not_call_the_store() -> None:
    calls: list[int] = []

    def snapshot() -> StoreSnapshot:
        calls.append(1)
        return StoreSnapshot({}, 0, None)

    Metrics(snapshot=snapshot)
    assert calls == []


def test_failing_snapshot_skips_store_gauges_and_counts_a_store_error() -> None:
    healthy = {"yes": False}

    def snapshot() -> StoreSnapshot:
        if not healthy["yes"]:
            raise StoreError("redis://:secret@localhost:6379: connection refused")
        return StoreSnapshot({"PENDING": 1}, 10, 1.0)

    metrics = Metrics(snapshot=snapshot)
    metrics.part_uploaded(5)
    found = samples(metrics)
    assert not any(name.startswith(("chunkd_streams", "chunkd_unfinished", "chunkd_oldest")) for name, _ in found)
    assert found[("chunkd_uploaded_bytes_total", ())] == 5  # the rest of the scrape is intact
    assert found[("chunkd_store_errors_total", ())] == 1  # counted in the very scrape that failed
    assert value(metrics, "chunkd_store_errors_total") == 2

    healthy["yes"] = True
    assert value(metrics, "chunkd_streams", state="pending") == 1
    assert value(metrics, "chunkd_store_errors_total") == 2


def test_without_a_snapshot_no_store_gauges_are_exported() -> None:
    assert not any(name.startswith("chunkd_streams") for name, _ in samples(Metrics()))


# --- store_snapshot on a real store ---------------------------------------------------------------


def stream(stream_id: str, state: StreamState, *, size: int, discovered_at: float) -> StreamRecord:
    return StreamRecord(
        id=stream_id,
        relpath=f"{stream_id}.mp4",
        source_path=f"/in/{stream_id}.mp4",
        bucket="chunkd",
        key=f"{stream_id}.mp4",
        schedule={"base": 5 * MiB, "fixed": True},
        state=state,
        size=size,
        discovered_at=discovered_at,
    )


def part(number: int, size: int) -> PartRecord:
    return PartRecord(number=number, offset=(number - 1) * 5 * MiB, size=size, etag=f'"{number}"', sha256="0" * 64)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteStore]:
    store = SqliteStore(str(tmp_path / "state.db"))
    yield store
    store.close()


def test_store_snapshot_counts_states_and_measures_the_backlog(store: SqliteStore) -> None:
    store.save_stream(stream("pending", StreamState.PENDING, size=3 * MiB, discovered_at=T0 + 50))
    store.save_stream(stream("uploading", StreamState.UPLOADING, size=12 * MiB, discovered_at=T0 + 10))
    store.record_part("uploading", part(1, 5 * MiB))
    store.record_part("uploading", part(2, 5 * MiB))
    store.save_stream(stream("finalizing", StreamState.FINALIZING, size=5 * MiB + 7, discovered_at=T0 + 20))
    store.record_part("finalizing", part(1, 5 * MiB))
    store.record_part("finalizing", part(2, 7))
    store.save_stream(stream("done", StreamState.COMPLETED, size=9 * MiB, discovered_at=T0))
    store.record_part("done", part(1, 5 * MiB))
    store.save_stream(stream("failed", StreamState.FAILED, size=8 * MiB, discovered_at=T0 - 1000))
    store.save_stream(stream("bad", StreamState.QUARANTINED, size=1, discovered_at=T0 - 2000))

    snap = store_snapshot(store, now=lambda: T0 + 100)

    assert snap.stream_counts == {
        "PENDING": 1, "UPLOADING": 1, "FINALIZING": 1, "COMPLETED": 1, "FAILED": 1, "QUARANTINED": 1,
    }
    # pending: 3 MiB unsent; uploading: 12 - 10 MiB; finalizing: fully acknowledged.
    assert snap.unfinished_bytes == 3 * MiB + 2 * MiB
    # The oldest non-terminal stream is "uploading" (T0 + 10); failed/quarantined/completed do not count.
    assert snap.oldest_unfinished_age == pytest.approx(90.0)


def test_store_snapshot_of_an_idle_store(store: SqliteStore) -> None:
    store.save_stream(stream("done", StreamState.COMPLETED, size=9 * MiB, discovered_at=T0))
    snap = store_snapshot(store, now=lambda: T0 + 100)
    assert snap.stream_counts["COMPLETED"] == 1
    assert snap.stream_counts["PENDING"] == 0
    assert snap.unfinished_bytes == 0
    assert snap.oldest_unfinished_age is None


def test_store_snapshot_feeds_the_gauges(store: SqliteStore) -> None:
    store.save_stream(stream("uploading", StreamState.UPLOADING, size=6 * MiB, discovered_at=T0))
    store.record_part("uploading", part(1, 5 * MiB))
    metrics = Metrics(snapshot=lambda: store_snapshot(store, now=lambda: T0 + 30))
    assert value(metrics, "chunkd_streams", state="uploading") == 1
    assert value(metrics, "chunkd_streams", state="completed") == 0
    assert value(metrics, "chunkd_unfinished_bytes") == MiB
    assert value(metrics, "chunkd_oldest_unfinished_seconds") == 30

    store.save_stream(stream("uploading2", StreamState.PENDING, size=MiB, discovered_at=T0 + 5))
    assert value(metrics, "chunkd_streams", state="pending") == 1
    assert value(metrics, "chunkd_unfinished_bytes") == 2 * MiB
