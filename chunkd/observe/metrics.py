"""Prometheus metrics: counters the engine bumps as work happens, and gauges read from the
checkpoint store at scrape time.

Each `Metrics` owns its own CollectorRegistry, never prometheus_client's global one, so tests and
several engines in one process never clash over metric names. Label values are lower-case, and every
labelled counter is exported at 0 for its known values from the start: `rate()` and `increase()`
over a series that appears with its first event miss that event. deploy/monitoring/ (alert rules,
dashboard) is written against these names; tests/unit/test_monitoring_pack.py keeps the two in step.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric

from chunkd import __version__
from chunkd.model.states import StreamState
from chunkd.s3.breaker import BreakerState
from chunkd.store import StreamReader

logger = logging.getLogger("chunkd.metrics")

FILE_OUTCOMES = ("completed", "failed", "quarantined", "deduplicated")
# Exported at 0 from the start (other codes appear with their first event): the codes the alert
# rules watch (an unreachable endpoint) and the ones an operator looks for first.
RETRY_REASONS = (
    "connectionerror", "circuitopen", "slowdown", "serviceunavailable", "internalerror", "requesttimeout", "baddigest",
)
S3_ERROR_CODES = (
    "connectionerror", "circuitopen", "accessdenied", "invalidaccesskeyid", "signaturedoesnotmatch", "nosuchbucket",
    "nocredentials", "slowdown", "serviceunavailable", "internalerror",
)
# Finalizing ranges from a small PutObject (tens of ms) to re-reading a large file (minutes).
FINALIZE_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)


@dataclass(frozen=True)
class StoreSnapshot:
    """What the checkpoint store says right now, for the scrape-time gauges."""

    stream_counts: dict[str, int]  # state name -> streams in that state
    unfinished_bytes: int  # bytes of non-terminal streams that S3 has not acknowledged yet
    oldest_unfinished_age: float | None  # seconds since the oldest non-terminal stream was discovered


def store_snapshot(store: StreamReader, *, now: Callable[[], float] = time.time) -> StoreSnapshot:
    """Count streams by state; sum and age the unfinished (non-terminal) ones.

    FAILED is terminal: it waits for `chunkd retry`, not for the daemon, so it shows in the state
    counts but neither in the backlog bytes nor in the oldest age.
    """
    counts = {state.value: 0 for state in StreamState}
    unfinished_bytes = 0
    oldest: float | None = None
    for record in store.list_streams():
        counts[record.state.value] += 1
        if record.state.terminal:
            continue
        acknowledged = sum(part.size for part in store.list_parts(record.id))
        unfinished_bytes += max(0, record.size - acknowledged)
        oldest = record.discovered_at if oldest is None else min(oldest, record.discovered_at)
    age = None if oldest is None else max(0.0, now() - oldest)
    return StoreSnapshot(counts, unfinished_bytes, age)


class Metrics:
    """Every chunkd metric, in one registry; `render()` is what /metrics serves."""

    def __init__(self, *, snapshot: Callable[[], StoreSnapshot] | None = None) -> None:
        self.registry = CollectorRegistry()
        # Registered first: a registry collects in registration order, so a snapshot failure
        # counted in store_errors already shows in the same scrape.
        self.registry.register(_StoreCollector(self, snapshot))
        registry = self.registry
        ProcessCollector(registry=registry)  # process_*: CPU, memory, open files of this daemon
        PlatformCollector(registry=registry)  # python_info
        GCCollector(registry=registry)  # python_gc_*
        Info("chunkd_build", "The running chunkd version.", registry=registry).info({"version": __version__})
        self.uploaded_bytes = Counter(
            "chunkd_uploaded_bytes_total", "Bytes of parts and objects acknowledged by S3.", registry=registry
        )
        self.uploaded_parts = Counter(
            "chunkd_uploaded_parts_total", "Multipart parts acknowledged by S3.", registry=registry
        )
        self.retries = Counter(
            "chunkd_retries_total", "S3 calls retried, by error code (lower-case).", ["reason"], registry=registry
        )
        for reason in RETRY_REASONS:
            self.retries.labels(reason)
        self.s3_errors = Counter(
            "chunkd_s3_errors_total",
            "S3 errors that reached a job (permanent or retries exhausted), by error code (lower-case).", ["code"],
            registry=registry,
        )
        for code in S3_ERROR_CODES:
            self.s3_errors.labels(code)
        self.store_errors = Counter(
            "chunkd_store_errors_total", "Checkpoint store calls that failed.", registry=registry
        )
        self.internal_errors = Counter(
            "chunkd_internal_errors_total",
            "Unexpected exceptions in a file's job: bugs in chunkd, logged with a traceback, the file tried again later.",
            registry=registry,
        )
        self.files = Counter("chunkd_files_total", "Files finished, by outcome.", ["outcome"], registry=registry)
        for outcome in FILE_OUTCOMES:
            self.files.labels(outcome)  # every outcome exported from the start, at 0
        self.download_bytes = Counter(
            "chunkd_download_bytes_total", "Bytes downloaded from links.", registry=registry
        )
        self.parts_in_flight = Gauge(
            "chunkd_parts_in_flight", "Parts being sent right now.", registry=registry
        )
        self.queue_depth = Gauge(
            "chunkd_queue_depth", "Files waiting for a worker.", registry=registry
        )
        self.downloads_waiting_for_disk = Gauge(
            "chunkd_downloads_waiting_for_disk",
            "Downloads held back because the staging disk has less than CHUNKD_MIN_FREE_GB free.", registry=registry,
        )
        self.finalize_seconds = Histogram(
            "chunkd_finalize_seconds", "Time to finalize an idle file.", buckets=FINALIZE_BUCKETS, registry=registry
        )
        self.circuit_breaker_state = Gauge(
            "chunkd_circuit_breaker_state", "Circuit breaker per endpoint: 0 closed, 1 half-open, 2 open.",
            ["endpoint"], registry=registry,
        )

    # -- what the engine calls ------------------------------------------------------------------

    def part_uploaded(self, nbytes: int) -> None:
        """S3 acknowledged one multipart part of `nbytes` (a part sent again counts again)."""
        self.uploaded_parts.inc()
        self.uploaded_bytes.inc(nbytes)

    def object_uploaded(self, nbytes: int) -> None:
        """S3 acknowledged a single PutObject of `nbytes`: bytes, not a part."""
        self.uploaded_bytes.inc(nbytes)

    def retry(self, reason: str) -> None:
        """One retried S3 call; `reason` is the error code (e.g. SlowDown, 503, ConnectionError)."""
        self.retries.labels(reason.lower() or "unknown").inc()

    def s3_error(self, code: str) -> None:
        self.s3_errors.labels(code.lower() or "unknown").inc()

    def store_error(self) -> None:
        self.store_errors.inc()

    def internal_error(self) -> None:
        self.internal_errors.inc()

    def file_finished(self, outcome: str) -> None:
        """Count a file that reached `outcome` (one of FILE_OUTCOMES)."""
        if outcome not in FILE_OUTCOMES:
            raise ValueError(f"unknown file outcome {outcome!r}; expected one of {', '.join(FILE_OUTCOMES)}")
        self.files.labels(outcome).inc()

    def watch_queue_depth(self, depth: Callable[[], int]) -> None:
        """Read the queue depth at scrape time; a failing callable reads as NaN, not a failed scrape."""

        def read() -> float:
            try:
                return float(depth())
            except Exception:  # a scrape must not fail over one gauge
                logger.debug("queue depth unavailable", exc_info=True)
                return math.nan

        self.queue_depth.set_function(read)

    def watch_downloads_waiting_for_disk(self, waiting: Callable[[], int]) -> None:
        """Read, at scrape time, how many downloads the disk guard holds back right now."""
        self.downloads_waiting_for_disk.set_function(lambda: float(waiting()))

    def set_breaker_state(self, endpoint: str, state: BreakerState | int) -> None:
        self.circuit_breaker_state.labels(endpoint).set(int(BreakerState(state)))

    def render(self) -> tuple[bytes, str]:
        """(body, content type) in the Prometheus text format."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class _StoreCollector:
    """chunkd_streams, chunkd_unfinished_bytes and chunkd_oldest_unfinished_seconds, read per scrape."""

    def __init__(self, metrics: Metrics, snapshot: Callable[[], StoreSnapshot] | None) -> None:
        self._metrics = metrics
        self._snapshot = snapshot

    def describe(self) -> Iterator[Metric]:
        # Names only, so registering never calls the store.
        yield from _families(None)

    def collect(self) -> Iterator[Metric]:
        if self._snapshot is None:
            return
        try:
            snap = self._snapshot()
        except Exception as exc:  # noqa: BLE001 - the rest of the scrape must still be served
            logger.warning("metrics: cannot read the checkpoint store: %s", exc)
            self._metrics.store_error()
            return
        yield from _families(snap)


def _families(snap: StoreSnapshot | None) -> Iterator[Metric]:
    streams = GaugeMetricFamily("chunkd_streams", "Streams in the checkpoint store, by state.", labels=["state"])
    unfinished = GaugeMetricFamily(
        "chunkd_unfinished_bytes", "Bytes discovered but not yet acknowledged by S3 (non-terminal streams)."
    )
    oldest = GaugeMetricFamily(
        "chunkd_oldest_unfinished_seconds", "Age of the oldest non-terminal stream; 0 when there is none."
    )
    if snap is not None:
        for state, count in sorted(snap.stream_counts.items()):
            streams.add_metric([state.lower()], count)
        unfinished.add_metric([], snap.unfinished_bytes)
        # 0 rather than no sample, so an alert on `> 3600` neither fires nor goes stale when idle.
        oldest.add_metric([], snap.oldest_unfinished_age or 0.0)
    yield streams
    yield unfinished
    yield oldest
