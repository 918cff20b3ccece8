"""Change detection between two snapshots, and the quiet period that means "the writer is done"."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from chunkd.errors import SourceGoneError
from chunkd.pipeline.monitor import Change, IdleTracker, Snapshot, compare, take_snapshot
from chunkd.pipeline.partreader import FileIdentity

SAME = FileIdentity(device=1, inode=100)
OTHER = FileIdentity(device=1, inode=200)
WALL_NOW = 1_700_000_000.0  # fake wall clock, seconds since the epoch


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def snap(size: int, mtime: float = WALL_NOW, identity: FileIdentity = SAME) -> Snapshot:
    return Snapshot(size=size, mtime_ns=int(mtime * 1e9), identity=identity)


# --- compare -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("before", "after", "expected"),
    [
        (snap(10), snap(10), Change.UNCHANGED),
        (snap(10), snap(20, WALL_NOW + 1), Change.GREW),
        (snap(10), snap(20), Change.GREW),  # growth without an mtime tick (coarse timestamps)
        (snap(10), snap(10, WALL_NOW + 1), Change.TOUCHED),
        (snap(10), snap(5, WALL_NOW + 1), Change.SHRANK),
        (snap(10), snap(10, identity=OTHER), Change.REPLACED),
        (snap(10), snap(50, WALL_NOW + 1, OTHER), Change.REPLACED),  # a new inode wins over growth
    ],
    ids=["unchanged", "grew", "grew-same-mtime", "touched", "shrank", "replaced", "replaced-and-grew"],
)
def test_compare(before: Snapshot, after: Snapshot, expected: Change) -> None:
    assert compare(before, after) is expected


def test_every_change_is_covered_by_compare_tests() -> None:
    # If someone adds a Change member, this reminds them to give compare() a case for it.
    assert set(Change) == {Change.UNCHANGED, Change.GREW, Change.TOUCHED, Change.SHRANK, Change.REPLACED}


# --- take_snapshot -------------------------------------------------------------------------------


def test_take_snapshot_reads_size_mtime_and_identity(tmp_path: Path) -> None:
    path = tmp_path / "a.mp4"
    path.write_bytes(b"x" * 123)
    os.utime(path, ns=(5_000_000_000, 7_000_000_000))

    snapshot = take_snapshot(path)

    stat = os.stat(path)
    assert snapshot.size == 123
    assert snapshot.mtime_ns == 7_000_000_000
    assert snapshot.mtime == pytest.approx(7.0)
    assert snapshot.identity == FileIdentity(stat.st_dev, stat.st_ino)


def test_take_snapshot_of_missing_file_raises_source_gone(tmp_path: Path) -> None:
    with pytest.raises(SourceGoneError, match="missing.mp4"):
        take_snapshot(tmp_path / "missing.mp4")


def test_take_snapshot_below_a_file_raises_source_gone(tmp_path: Path) -> None:
    # A path component that is a file (ENOTDIR) means the file is gone just as much.
    (tmp_path / "plain").write_bytes(b"")
    with pytest.raises(SourceGoneError):
        take_snapshot(tmp_path / "plain" / "a.mp4")


def test_snapshot_sees_growth_and_replacement_on_disk(tmp_path: Path) -> None:
    path = tmp_path / "a.mp4"
    path.write_bytes(b"1234")
    first = take_snapshot(path)
    with path.open("ab") as handle:
        handle.write(b"5678")
    grown = take_snapshot(path)
    assert compare(first, grown) is Change.GREW

    replacement = tmp_path / "new.mp4"
    replacement.write_bytes(b"12345678")  # created while the old inode still exists: a new inode
    os.replace(replacement, path)
    assert compare(grown, take_snapshot(path)) is Change.REPLACED


# --- IdleTracker ---------------------------------------------------------------------------------


def tracker(first: Snapshot, clock: FakeClock, *, idle_seconds: float = 10.0) -> IdleTracker:
    return IdleTracker(idle_seconds, first, clock=clock, wall=lambda: WALL_NOW)


def test_fresh_file_is_not_idle_until_idle_seconds_pass() -> None:
    clock = FakeClock()
    idle = tracker(snap(10, WALL_NOW), clock)

    assert not idle.idle
    clock.advance(9.9)
    assert idle.observe(snap(10, WALL_NOW)) is Change.UNCHANGED
    assert not idle.idle
    clock.advance(0.1)
    assert idle.idle
    assert idle.quiet_for == pytest.approx(10.0)


def test_a_change_resets_the_timer() -> None:
    clock = FakeClock()
    idle = tracker(snap(10, WALL_NOW), clock)

    clock.advance(8)
    assert idle.observe(snap(20, WALL_NOW + 8)) is Change.GREW
    assert idle.last == snap(20, WALL_NOW + 8)
    clock.advance(8)  # 16 s since start, but only 8 s since the growth
    assert not idle.idle
    assert idle.quiet_for == pytest.approx(8.0)
    clock.advance(2)
    assert idle.idle


@pytest.mark.parametrize("change", [snap(10, WALL_NOW + 1), snap(5), snap(10, identity=OTHER)], ids=["touch", "shrink", "replace"])
def test_touch_shrink_and_replace_also_reset_the_timer(change: Snapshot) -> None:
    clock = FakeClock()
    idle = tracker(snap(10), clock)
    clock.advance(9)
    assert idle.observe(change) is not Change.UNCHANGED
    clock.advance(9)
    assert not idle.idle


def test_unchanged_observations_do_not_reset_the_timer() -> None:
    clock = FakeClock()
    idle = tracker(snap(10), clock)
    for _ in range(10):
        clock.advance(1)
        idle.observe(snap(10))
    assert idle.idle


def test_first_snapshot_with_old_mtime_is_idle_immediately() -> None:
    clock = FakeClock()
    idle = tracker(snap(10, WALL_NOW - 3600), clock)  # dropped an hour ago, e.g. while we were down
    assert idle.idle
    assert idle.quiet_for == pytest.approx(3600.0)


def test_first_snapshot_partly_quiet_waits_only_the_remainder() -> None:
    clock = FakeClock()
    idle = tracker(snap(10, WALL_NOW - 4), clock)
    assert not idle.idle
    clock.advance(6)
    assert idle.idle


def test_first_snapshot_with_future_mtime_is_not_idle() -> None:
    # A clock skew between writer and us must not count as negative quiet time, nor as quiet.
    clock = FakeClock()
    idle = tracker(snap(10, WALL_NOW + 3600), clock)
    assert not idle.idle
    assert idle.quiet_for == pytest.approx(0.0)
    clock.advance(10)
    assert idle.idle


def test_old_file_that_changes_must_wait_a_full_period() -> None:
    clock = FakeClock()
    idle = tracker(snap(10, WALL_NOW - 3600), clock)
    idle.observe(snap(11, WALL_NOW))
    assert not idle.idle
    clock.advance(10)
    assert idle.idle


class WallClock(FakeClock):
    """The wall clock, moving with the monotonic one."""

    def __init__(self, clock: FakeClock) -> None:
        super().__init__()
        self._clock = clock

    def __call__(self) -> float:
        return WALL_NOW + self._clock.now


def test_growth_is_dated_by_the_last_write_not_by_the_look_that_saw_it() -> None:
    clock = FakeClock(0.0)
    wall = WallClock(clock)
    idle = IdleTracker(10.0, snap(10, wall()), clock=clock, wall=wall)
    clock.advance(0.1)
    idle.observe(snap(10, WALL_NOW))  # a look that saw no change
    clock.advance(0.1)
    assert idle.observe(snap(20, wall() - 0.07)) is Change.GREW  # written 70 ms before this look
    assert idle.quiet_for == pytest.approx(0.07)
    clock.advance(9.9)
    assert not idle.idle
    clock.advance(0.05)  # 10 s after the write, 9.95 s after the look that saw it
    assert idle.idle


def test_a_change_is_never_dated_before_the_look_that_saw_none() -> None:
    # Coarse timestamps (whole seconds): the mtime says the write was before the last look that
    # saw the file unchanged, so the write came after that look.
    clock = FakeClock(0.0)
    wall = WallClock(clock)
    idle = IdleTracker(10.0, snap(10, WALL_NOW), clock=clock, wall=wall)
    clock.advance(0.9)
    idle.observe(snap(10, WALL_NOW))
    clock.advance(0.5)
    assert idle.observe(snap(20, WALL_NOW)) is Change.GREW
    assert idle.quiet_for == pytest.approx(0.5)
