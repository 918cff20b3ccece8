"""The watcher on its own: bounded, coalesced intake; rescans that skip what was handed over; one log
line per refused path; an input folder that vanishes and comes back. Real folders, real inotify."""

from __future__ import annotations

import errno
import logging
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from watchdog.events import FileClosedNoWriteEvent, FileCreatedEvent, FileOpenedEvent

from chunkd.config import DEFAULT_INCLUDE
from chunkd.intake.backlog import EnqueueHandler, PendingPaths
from chunkd.intake.paths import PathFilter
from chunkd.intake.watcher import Watcher
from tests.support.daemon import wait_for


class Recorder:
    """A submit callback that records what it was handed and answers as told."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.answer = True

    def __call__(self, path: Path, relpath: str) -> bool:
        self.calls.append(relpath)
        return self.answer


@pytest.fixture
def root(tmp_path: Path) -> Path:
    folder = tmp_path / "input"
    folder.mkdir()
    return folder


@pytest.fixture
def submit() -> Recorder:
    return Recorder()


@pytest.fixture
def watcher(root: Path, submit: Recorder) -> Watcher:
    return Watcher(root, PathFilter(DEFAULT_INCLUDE), submit, rescan_seconds=0)


@pytest.fixture
def running(watcher: Watcher) -> Iterator[Watcher]:
    watcher.start()
    yield watcher
    watcher.stop()


# -- intake -----------------------------------------------------------------------------------------


def test_pending_paths_wait_once_each_and_overflow_into_a_rescan(tmp_path: Path) -> None:
    pending = PendingPaths(limit=3)
    for name in ("a", "b", "a", "c", "b"):
        pending.add(tmp_path / name)
    assert len(pending) == 3
    pending.add(tmp_path / "d")  # over the limit: dropped, a rescan will find it
    taken = [pending.take(0) for _ in range(4)]
    assert [path for path, _, _ in taken] == [tmp_path / "a", tmp_path / "b", tmp_path / "c", None]
    assert [scan for _, scan, _ in taken] == [True, False, False, False], "one rescan asked for, once"


def test_reading_a_file_is_not_an_event_worth_a_look(tmp_path: Path) -> None:
    pending = PendingPaths(limit=10)
    handler = EnqueueHandler(pending, tmp_path)
    handler.dispatch(FileOpenedEvent(str(tmp_path / "a.mp4")))
    handler.dispatch(FileClosedNoWriteEvent(str(tmp_path / "a.mp4")))
    assert len(pending) == 0
    handler.dispatch(FileCreatedEvent(str(tmp_path / "a.mp4")))
    assert len(pending) == 1


# -- rescans and the hand-over cache -----------------------------------------------------------------


def test_a_file_handed_over_is_not_offered_again_until_it_changes(watcher: Watcher, root: Path,
                                                                   submit: Recorder) -> None:
    clip = root / "a.mp4"
    clip.write_bytes(b"one")
    assert watcher.scan(everything=False) == 1
    assert watcher.scan(everything=False) == 0
    os.utime(clip, ns=(time.time_ns(), time.time_ns() + 5_000_000_000))
    assert watcher.scan(everything=False) == 1
    assert watcher.scan(everything=True) == 1, "the full pass offers everything"
    assert submit.calls == ["a.mp4"] * 3


def test_a_file_the_scheduler_already_has_is_not_offered_again_while_unchanged(
    watcher: Watcher, root: Path, submit: Recorder
) -> None:
    (root / "a.mp4").write_bytes(b"x")
    submit.answer = False  # already queued or in progress: that job looks at the file as it is then
    watcher.scan(everything=False)
    watcher.scan(everything=False)
    assert submit.calls == ["a.mp4"]


def test_an_unchanged_file_is_offered_again_after_a_while(root: Path, submit: Recorder) -> None:
    watcher = Watcher(root, PathFilter(DEFAULT_INCLUDE), submit, rescan_seconds=0, reoffer_seconds=0.05)
    (root / "a.mp4").write_bytes(b"x")
    watcher.scan(everything=False)
    wait_for(lambda: watcher.scan(everything=False), timeout=5, interval=0.01, what="the file to be offered again")
    assert submit.calls == ["a.mp4", "a.mp4"]


def test_a_refused_path_is_logged_once(watcher: Watcher, root: Path, tmp_path: Path, submit: Recorder,
                                       caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="chunkd.watcher")
    (tmp_path / "secret.mp4").write_bytes(b"s")
    (root / "link.mp4").symlink_to(tmp_path / "secret.mp4")
    os.mkfifo(root / "pipe.mp4")
    for _ in range(3):
        watcher.scan()
    assert sorted(record.getMessage() for record in caplog.records) == [
        f"ignoring link.mp4: symlink points outside the input folder ({tmp_path / 'secret.mp4'})",
        "ignoring pipe.mp4: not a regular file (FIFO)",
    ]
    assert submit.calls == []


def test_an_inotify_limit_is_logged_and_rescans_still_find_files(
    root: Path, submit: Recorder, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, "inotify watch limit reached")  # fault injection: the real limit is global

    monkeypatch.setattr("watchdog.observers.api.BaseObserver.schedule", refuse)
    caplog.set_level(logging.ERROR, logger="chunkd.watcher")
    watcher = Watcher(root, PathFilter(DEFAULT_INCLUDE), submit, rescan_seconds=0.2)
    watcher.start()
    try:
        (root / "late.mp4").write_bytes(b"x")
        wait_for(lambda: "late.mp4" in submit.calls, timeout=10, what="a rescan to find the file")
        assert watcher.alive and not watcher.watching
    finally:
        watcher.stop()
    assert any("inotify watch limit reached" in record.getMessage() for record in caplog.records)


# -- the input folder itself --------------------------------------------------------------------------


def test_the_input_folder_vanishing_and_coming_back(running: Watcher, root: Path, submit: Recorder,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="chunkd.watcher")
    wait_for(lambda: running.watching, timeout=10, what="the watch")
    shutil.rmtree(root)
    wait_for(lambda: not running.root_present, timeout=10, what="the folder to be missed")
    assert running.alive and not running.watching
    root.mkdir()
    wait_for(lambda: running.root_present and running.watching, timeout=10, what="the folder to be watched again")
    (root / "new.mp4").write_bytes(b"x")
    wait_for(lambda: "new.mp4" in submit.calls, timeout=10, what="an event from the new folder")
    messages = [record.getMessage() for record in caplog.records]
    assert messages.count(f"input folder {root} disappeared; waiting for it") == 1
    assert messages.count(f"input folder {root} is back; watching it again") == 1


def test_the_input_folder_swapped_between_two_looks_is_watched_anew(running: Watcher, root: Path,
                                                                    submit: Recorder, tmp_path: Path) -> None:
    wait_for(lambda: running.watching, timeout=10, what="the watch")
    replacement = tmp_path / "replacement"
    replacement.mkdir()
    shutil.rmtree(root)
    replacement.rename(root)  # a new inode under the same name, faster than a look
    wait_for(lambda: running.watching and running._folder.root_id == _folder_id(root), timeout=10,
             what="the new folder to be watched")
    (root / "x.mp4").write_bytes(b"x")
    wait_for(lambda: "x.mp4" in submit.calls, timeout=10, what="an event from the new folder")


def _folder_id(folder: Path) -> tuple[int, int]:
    info = os.stat(folder)
    return info.st_dev, info.st_ino
