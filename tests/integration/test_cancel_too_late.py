"""A cancel that lands after the object was committed (CompleteMultipartUpload or PutObject
answered) but before its record says COMPLETED: too late to stop anything. The object stays,
the record ends COMPLETED with its manifest written, and the log and `chunkd cancel` say so with
how to delete the object if it is unwanted. In-process on Ceph RGW (strict) and moto."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from chunkd.cli.ops import cmd_cancel
from chunkd.config import load_settings
from chunkd.model.states import StreamRecord, StreamState
from chunkd.ops.cancel import AbortResult, Canceller
from chunkd.pipeline.engine import Engine
from chunkd.pipeline.job import Outcome
from chunkd.store import open_store
from tests.support.bucket import open_uploads, read_manifest
from tests.support.engine import close_test_engine, make_test_engine, run_job
from tests.support.files import write_random
from tests.support.s3_servers import make_client
from tests.support.sizes import MiB

TOO_LATE = (
    "cancel came too late: s3://chunkd/clip.mp4 was already uploaded (the stream is COMPLETED); delete it with "
    "`aws s3 rm s3://chunkd/clip.mp4` and `aws s3 rm s3://chunkd/clip.mp4.manifest.json` if unwanted"
)


@pytest.fixture
def engine(pausable: Any, tmp_path: Path) -> Iterator[Engine]:
    (tmp_path / "input").mkdir()
    built = make_test_engine(pausable, tmp_path)
    yield built
    close_test_engine(built)


@pytest.fixture
def client(pausable: Any) -> Any:
    return make_client(pausable.endpoint_url, pausable.access_key, pausable.secret_key)


def cancel_after(engine: Engine, operation: str, results: list[Any]) -> None:
    """`chunkd cancel` of the file's stream right after `operation` answered (the commit)."""
    uploader = engine.uploader
    commit: Callable[..., Any] = getattr(uploader, operation)

    def then_cancel(*args: Any, **kwargs: Any) -> Any:
        answer = commit(*args, **kwargs)
        record = engine.store.find_by_relpath("clip.mp4")
        assert record is not None
        canceller = Canceller(engine.store, lambda: engine.uploader)
        cancelled = canceller.fail(record.id)
        results.append(canceller.abort_upload(cancelled))
        return answer

    setattr(uploader, operation, then_cancel)


@pytest.mark.parametrize(("size", "operation"), [(7 * MiB, "complete"), (MiB, "put_object")])
def test_a_cancel_after_the_commit_is_too_late_and_the_upload_completes(
    engine: Engine, client: Any, caplog: pytest.LogCaptureFixture, size: int, operation: str
) -> None:
    write_random(engine.input_dir / "clip.mp4", size)
    results: list[Any] = []
    cancel_after(engine, operation, results)

    with caplog.at_level(logging.INFO):
        outcome = run_job(engine, "clip.mp4")

    assert len(results) == 1  # the cancel did land between the commit and the record's save
    assert outcome is Outcome.COMPLETED
    record = engine.store.find_by_relpath("clip.mp4")
    assert record is not None and record.state is StreamState.COMPLETED, record
    assert record.cancelled_at is None and record.last_error is None
    parts = [part.number for part in engine.store.list_parts(record.id)]
    assert parts == ([1, 2] if operation == "complete" else [])  # forgotten by the canceller, recorded again
    manifest = read_manifest(client, "clip.mp4")
    assert manifest is not None and manifest["size"] == size
    assert client.head_object(Bucket="chunkd", Key="clip.mp4")["ContentLength"] == size
    assert open_uploads(client, "clip.mp4") == []
    assert TOO_LATE in [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


def test_chunkd_cancel_says_it_came_too_late_when_the_record_turns_completed(
    env: dict[str, str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The daemon's COMPLETED write lands while `chunkd cancel` aborts the (completed) upload."""
    store = open_store(env["CHUNKD_STATE_URL"])
    daemons = StreamRecord(
        id="s1", relpath="clip.mp4", source_path="/in/clip.mp4", bucket="chunkd", key="clip.mp4",
        schedule={"kind": "growing", "base": 8 * MiB, "group": 1089}, state=StreamState.FINALIZING,
        upload_id="completed-upload",
    )
    store.save_stream(daemons)
    abort = Canceller.abort_upload

    def abort_as_the_daemon_records_its_object(self: Canceller, record: StreamRecord) -> AbortResult:
        result = abort(self, record)
        daemons.move_to(StreamState.COMPLETED)
        store.save_stream(daemons)  # what chunkd.pipeline.publish writes over a cancel that came too late
        return result

    monkeypatch.setattr(Canceller, "abort_upload", abort_as_the_daemon_records_its_object)
    for name, value in env.items():  # the S3 credentials, read from the environment as the command does
        monkeypatch.setenv(name, value)
    try:
        code = cmd_cancel(load_settings(env=env), argparse.Namespace(stream_id="s1"))
    finally:
        store.close()

    assert code == 1
    out, err = capsys.readouterr()
    assert "cancel  s1  clip.mp4  -> FAILED (cancelled by operator)" in out
    assert err.splitlines() == [f"chunkd: {TOO_LATE}"]
