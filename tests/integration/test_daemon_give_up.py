"""The daemon's side of bounded retries: when the scheduler gives up on a file, its stream is FAILED
with the reason, `chunkd status` shows it, a rescan leaves it be and `chunkd retry ID` brings it back.

A real Daemon, SQLite state store and StreamJob; the S3 endpoint is a closed local port, so every
try fails fast with a connection error. Retry pauses run on the daemon's injected fake clock.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from chunkd.cli.inspect import cmd_status
from chunkd.cli.ops import cmd_retry
from chunkd.config import load_settings
from chunkd.daemon import Daemon, build_engine
from chunkd.intake.scheduler import MAX_TRIES, retry_delay
from chunkd.model.states import StreamRecord, StreamState
from chunkd.pipeline.job import StreamJob
from chunkd.s3.client import S3Target
from tests.unit.test_scheduler import FakeClock, wait_until

MiB = 1024 * 1024
TRY_WAIT = 30.0  # one try against a closed port takes well under a second; generous for a busy machine


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def daemon(tmp_path: Path, clock: FakeClock) -> Iterator[Daemon]:
    (tmp_path / "input").mkdir()
    settings = load_settings(env={}, overrides={
        "input_dir": str(tmp_path / "input"), "state_url": f"sqlite:///{tmp_path / 'state.db'}",
        "bucket": "chunkd", "part_size": "5MiB", "idle_seconds": 1, "poll_seconds": 0.05,
        "invalid_media": "upload", "max_attempts": 1, "breaker_failures": 1_000_000, "http_addr": "",
    })
    target = S3Target(f"http://127.0.0.1:{closed_port()}", None, "test-key", "test-secret")
    made = Daemon(build_engine(settings, target), clock=clock)
    made.scheduler.start()
    yield made
    made.engine.stop.set()
    made.scheduler.stop(timeout=10)
    made.events.close(timeout=1)
    made.engine.shutdown()
    made.engine.store.close()


def run_until_given_up(daemon: Daemon, clock: FakeClock, relpath: str) -> None:
    scheduler = daemon.scheduler
    for tries in range(1, MAX_TRIES):
        def counted(n: int = tries) -> bool:
            return scheduler.tries(relpath) == n

        assert wait_until(counted, timeout=TRY_WAIT), f"try {tries} never counted"
        clock.advance(retry_delay(tries, base=30.0))
    assert wait_until(lambda: not scheduler.busy, timeout=TRY_WAIT)


def status(daemon: Daemon, capsys: pytest.CaptureFixture[str]) -> list[dict[str, Any]]:
    capsys.readouterr()
    cmd_status(daemon.engine.settings, argparse.Namespace(json=True, state=None, since=None))
    shown: list[dict[str, Any]] = json.loads(capsys.readouterr().out)
    return shown


def metric(daemon: Daemon, name: str, **labels: str) -> float | None:
    return daemon.engine.metrics.registry.get_sample_value(name, labels)


def test_a_file_whose_endpoint_stays_down_is_failed_after_the_cap_and_retry_brings_it_back(
    daemon: Daemon, clock: FakeClock, capsys: pytest.CaptureFixture[str]
) -> None:
    path = daemon.engine.input_dir / "clip.mp4"
    path.write_bytes(os.urandom(6 * MiB))  # over one part: the first one is sent at once
    assert daemon.scheduler.submit(path, "clip.mp4")

    run_until_given_up(daemon, clock, "clip.mp4")

    record = daemon.engine.store.find_by_relpath("clip.mp4")
    assert record is not None and record.state is StreamState.FAILED
    assert record.last_error is not None and record.last_error.startswith(f"gave up after {MAX_TRIES} tries: ")
    assert "127.0.0.1" in record.last_error  # the connection error the last try ended with
    [shown] = status(daemon, capsys)
    assert shown["id"] == record.id and shown["state"] == "FAILED" and shown["last_error"] == record.last_error
    assert metric(daemon, "chunkd_files_total", outcome="failed") == 1
    assert [event["event"] for event in daemon.engine.store.list_events()] == ["failed"]

    # Unchanged, it stays FAILED when a rescan offers it again.
    assert daemon.scheduler.submit(path, "clip.mp4")
    assert wait_until(lambda: not daemon.scheduler.busy, timeout=TRY_WAIT)
    assert daemon.scheduler.outcomes["clip.mp4"].value == "skipped"
    assert daemon.engine.store.get_stream(record.id).state is StreamState.FAILED  # type: ignore[union-attr]

    capsys.readouterr()
    assert cmd_retry(daemon.engine.settings, argparse.Namespace(ids=[record.id], failed=False)) == 0
    assert "FAILED -> PENDING" in capsys.readouterr().out
    assert daemon.resume_unfinished() == 1
    assert wait_until(lambda: daemon.scheduler.tries("clip.mp4") == 1, timeout=TRY_WAIT)  # tried afresh


def test_a_job_that_keeps_raising_is_counted_and_failed_after_the_cap_with_a_new_record(
    daemon: Daemon, clock: FakeClock, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    def bug(job: StreamJob) -> Any:
        raise KeyError("schedule")

    monkeypatch.setattr(StreamJob, "run", bug)  # a bug before the job ever saved a record
    path = daemon.engine.input_dir / "bug.mp4"
    path.write_bytes(b"x" * 1000)
    assert daemon.scheduler.submit(path, "bug.mp4")

    run_until_given_up(daemon, clock, "bug.mp4")

    assert metric(daemon, "chunkd_internal_errors_total") == MAX_TRIES
    tracebacks = [r for r in caplog.records if r.name == "chunkd.scheduler" and r.exc_info]
    assert len(tracebacks) == MAX_TRIES and all(r.exc_info and r.exc_info[0] is KeyError for r in tracebacks)
    record = daemon.engine.store.find_by_relpath("bug.mp4")
    assert isinstance(record, StreamRecord) and record.state is StreamState.FAILED
    assert record.last_error == f"gave up after {MAX_TRIES} tries: unexpected error: KeyError: 'schedule'"
    assert (record.size, record.inode) == (1000, path.stat().st_ino)  # the file as it was: a rescan skips it
    assert [s["state"] for s in status(daemon, capsys)] == ["FAILED"]
