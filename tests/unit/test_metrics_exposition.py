"""What /metrics looks like to a Prometheus server and its alert rules: the standard process and
Python collectors, a build_info series, lower-case label values, one series per fact, and every
labelled counter present at 0 before its first event (so `rate()` and `increase()` see that event).
"""

from __future__ import annotations

import threading
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from chunkd import __version__
from chunkd.links.download import Downloader
from chunkd.observe.metrics import Metrics, StoreSnapshot

# Label values that name something outside chunkd's vocabulary and are exported as given.
VERBATIM_LABELS = frozenset({"endpoint", "version", "le", "implementation", "major", "minor", "patchlevel"})


def samples(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """(sample name, sorted labels) -> value, from a real render()."""
    body, _ = metrics.render()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(body.decode())
        for sample in family.samples
    }


def value(metrics: Metrics, name: str, **labels: str) -> float | None:
    return samples(metrics).get((name, tuple(sorted(labels.items()))))


def busy_metrics() -> Metrics:
    """A Metrics that has seen one of everything, including mixed-case codes from S3."""
    snap = StoreSnapshot({"UPLOADING": 1, "COMPLETED": 2}, unfinished_bytes=10, oldest_unfinished_age=3.0)
    metrics = Metrics(snapshot=lambda: snap)
    metrics.retry("SlowDown")
    metrics.retry("ConnectionError")
    metrics.s3_error("AccessDenied")
    metrics.file_finished("quarantined")
    return metrics


def test_build_info_carries_the_version() -> None:
    assert value(Metrics(), "chunkd_build_info", version=__version__) == 1


def test_process_and_python_collectors_are_exported() -> None:
    names = {name for name, _ in samples(Metrics())}
    assert "process_resident_memory_bytes" in names
    assert "process_cpu_seconds_total" in names
    assert "python_info" in names
    assert any(name.startswith("python_gc_") for name in names)


def test_label_values_are_lower_case() -> None:
    upper = [
        (name, labels) for name, labels in samples(busy_metrics())
        if any(key not in VERBATIM_LABELS and val != val.lower() for key, val in labels)
    ]
    assert upper == []
    metrics = busy_metrics()
    assert value(metrics, "chunkd_retries_total", reason="slowdown") == 1
    assert value(metrics, "chunkd_s3_errors_total", code="accessdenied") == 1
    assert value(metrics, "chunkd_streams", state="uploading") == 1


def test_a_quarantined_file_changes_exactly_one_chunkd_series() -> None:
    metrics = Metrics()
    before = {key: val for key, val in samples(metrics).items() if key[0].startswith("chunkd_")}
    metrics.file_finished("quarantined")
    after = {key: val for key, val in samples(metrics).items() if key[0].startswith("chunkd_")}
    changed = [key for key in after if after[key] != before.get(key)]
    assert changed == [("chunkd_files_total", (("outcome", "quarantined"),))]
    assert value(metrics, "chunkd_quarantined_files_total") is None


def test_every_labelled_counter_is_exported_at_zero_before_its_first_event() -> None:
    body, _ = Metrics().render()
    empty = [
        family.name for family in text_string_to_metric_families(body.decode())
        if family.name.startswith("chunkd_") and family.type == "counter" and not family.samples
    ]
    assert empty == []
    metrics = Metrics()
    assert value(metrics, "chunkd_retries_total", reason="connectionerror") == 0
    assert value(metrics, "chunkd_retries_total", reason="slowdown") == 0
    assert value(metrics, "chunkd_s3_errors_total", code="accessdenied") == 0
    assert value(metrics, "chunkd_s3_errors_total", code="connectionerror") == 0


def test_an_unknown_code_still_gets_its_own_lower_case_series() -> None:
    metrics = Metrics()
    metrics.retry("XAmzContentSHA256Mismatch")
    metrics.s3_error("")
    assert value(metrics, "chunkd_retries_total", reason="xamzcontentsha256mismatch") == 1
    assert value(metrics, "chunkd_s3_errors_total", code="unknown") == 1


# --- the disk guard ---------------------------------------------------------------------------


def test_downloads_held_by_the_disk_guard_are_counted_while_they_wait(tmp_path: Path) -> None:
    stop = threading.Event()
    seen: list[int] = []

    def sleep(seconds: float) -> None:
        seen.append(downloader.waiting_for_disk)
        if len(seen) == 2:
            stop.set()

    downloader = Downloader(tmp_path, min_free_bytes=1000, free_bytes=lambda path: 10, sleep=sleep)
    metrics = Metrics()
    metrics.watch_downloads_waiting_for_disk(lambda: downloader.waiting_for_disk)
    assert value(metrics, "chunkd_downloads_waiting_for_disk") == 0

    result = downloader.download("http://127.0.0.1:9/clip.mp4", name_hint="clip", stop=stop)

    assert not result.path.exists()
    assert seen == [1, 1]
    assert downloader.waiting_for_disk == 0  # a stopped wait does not leave the guard "paused"
    assert value(metrics, "chunkd_downloads_waiting_for_disk") == 0
