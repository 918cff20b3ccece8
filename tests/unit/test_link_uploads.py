"""A finished download is handed to the scheduler, not uploaded on the download thread: the thread
submits the staged file (final, with its origin) and goes on; the scheduler's callback records how
the upload ended. A real SQLite store; the scheduler is a recording stand-in."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from chunkd.intake.scheduler import JobResult
from chunkd.links.batch import LinkManager
from chunkd.model.node import Scope
from chunkd.model.states import StreamRecord, StreamState, UrlRecord, UrlState
from chunkd.pipeline.job import Outcome
from chunkd.store.sqlite import SqliteStore

URL = "https://a.example/v/clip.mp4"
RELPATH = "clip-1a2b3c4d.mp4"
INFO = {"url": URL, "title": "clip", "extractor": "generic"}


class Submissions:
    """Stands in for `Scheduler.submit`: records each call and keeps its callback."""

    def __init__(self, *, take: bool = True) -> None:
        self.take = take
        self.calls: list[tuple[Path, str, bool, dict[str, Any] | None]] = []
        self.callbacks: list[Callable[[JobResult], None]] = []

    def __call__(
        self, path: Path, relpath: str, *, final: bool, origin: dict[str, Any] | None,
        on_done: Callable[[JobResult], None],
    ) -> bool:
        self.calls.append((path, relpath, final, origin))
        if self.take:
            self.callbacks.append(on_done)
        return self.take


@pytest.fixture
def store(tmp_path: Path) -> SqliteStore:
    return SqliteStore(str(tmp_path / "state.db"))


@pytest.fixture
def staged(tmp_path: Path, store: SqliteStore) -> Path:
    """A links file with one URL whose download is done and staged."""
    (tmp_path / "input").mkdir()
    (tmp_path / "input" / "links.txt").write_text(URL + "\n")
    path = tmp_path / "input" / ".staging" / RELPATH
    path.parent.mkdir()
    path.write_bytes(b"video bytes")
    record = UrlRecord(url=URL, display=URL, links_file="links.txt", relpath=RELPATH, staged_path=str(path),
                       info=dict(INFO), size=11, bytes_done=11)
    record.move_to(UrlState.DOWNLOADED)
    store.save_url(record)
    return path


def manager(tmp_path: Path, store: SqliteStore, submit: Submissions) -> LinkManager:
    settings = SimpleNamespace(idle_seconds=0.0, allow_private_urls=True)
    engine = SimpleNamespace(
        store=store, settings=settings, input_dir=tmp_path / "input", stop=threading.Event(),
        scope=Scope("box-1", single_box=True),
    )
    return LinkManager(engine, None, submit)  # type: ignore[arg-type]  # downloading is not needed here


def run_download_thread(links: LinkManager) -> None:
    """One download worker, on this thread, until its queue is empty."""
    links._urls.put(None)
    links._work_urls()


def run_links_thread(links: LinkManager) -> None:
    """The links-file reader, on this thread, until its queue is empty."""
    links._files.put(None)
    links._read_files()


def url_state(store: SqliteStore) -> UrlRecord:
    record = store.get_url(URL)
    assert record is not None
    return record


def report(tmp_path: Path) -> dict[str, Any]:
    lines: list[dict[str, Any]] = json.loads((tmp_path / "input" / "links.txt.report.json").read_text())["lines"]
    return lines[0]


def test_the_staged_file_is_submitted_and_the_callback_completes_the_url_and_its_links_file(
    tmp_path: Path, store: SqliteStore, staged: Path
) -> None:
    submit = Submissions()
    links = manager(tmp_path, store, submit)
    links._queue_url(URL, "links.txt")
    run_download_thread(links)  # returns once the upload is handed over: nothing waits for it

    assert submit.calls == [(staged, RELPATH, True, INFO)]
    assert url_state(store).state is UrlState.UPLOADING
    assert (tmp_path / "input" / "links.txt").exists()  # not settled while its URL uploads

    submit.callbacks[0](JobResult(Outcome.COMPLETED, "videos/clip-1a2b3c4d.mp4"))

    record = url_state(store)
    assert (record.state, record.key, record.staged_path) == (UrlState.COMPLETED, "videos/clip-1a2b3c4d.mp4", None)
    assert not staged.exists()
    assert (tmp_path / "input" / "links.txt").exists()  # the report is left to the links thread
    run_links_thread(links)
    assert (tmp_path / "input" / "links.txt.done").exists()
    assert report(tmp_path)["state"] == "COMPLETED" and report(tmp_path)["key"] == "videos/clip-1a2b3c4d.mp4"


def test_a_give_up_fails_the_url_with_the_streams_reason(tmp_path: Path, store: SqliteStore, staged: Path) -> None:
    submit = Submissions()
    links = manager(tmp_path, store, submit)
    links._queue_url(URL, "links.txt")
    run_download_thread(links)
    reason = "gave up after 10 tries: connection failed"
    stream = StreamRecord(id="s1", relpath=RELPATH, source_path=str(staged), bucket="b", key="k", schedule={},
                          state=StreamState.FAILED, last_error=reason)
    store.save_stream(stream)

    submit.callbacks[0](JobResult(Outcome.FAILED, "k", reason))
    run_links_thread(links)

    record = url_state(store)
    assert (record.state, record.last_error) == (UrlState.FAILED, reason)
    assert staged.exists()  # kept: `chunkd retry --failed` sends it again
    assert report(tmp_path)["state"] == "FAILED" and report(tmp_path)["error"] == reason


def test_a_refused_submission_is_sent_again_on_the_next_pass(
    tmp_path: Path, store: SqliteStore, staged: Path
) -> None:
    submit = Submissions(take=False)  # stopping, or a dropped file holds the same relpath
    links = manager(tmp_path, store, submit)
    links._queue_url(URL, "links.txt")
    run_download_thread(links)

    assert url_state(store).state is UrlState.DOWNLOADED
    submit.take = True
    assert links.resume() == 1  # the URL is not held as in progress: the next pass queues it
    run_download_thread(links)
    assert len(submit.calls) == 2 and len(submit.callbacks) == 1


def test_an_upload_still_queued_at_stop_is_submitted_again_on_the_next_start(
    tmp_path: Path, store: SqliteStore, staged: Path
) -> None:
    first = Submissions()
    links = manager(tmp_path, store, first)
    links._queue_url(URL, "links.txt")
    run_download_thread(links)
    assert len(first.callbacks) == 1  # taken, then the daemon stopped before running it: never called back

    assert url_state(store).state is UrlState.UPLOADING
    second = Submissions()
    restarted = manager(tmp_path, store, second)
    assert restarted.resume() == 1
    run_download_thread(restarted)
    assert second.calls == [(staged, RELPATH, True, INFO)]
