"""Which drop-folder paths are ours: globs, temp names, dot-paths, and symlink/special-file safety."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from chunkd.config import DEFAULT_INCLUDE
from chunkd.paths import PathFilter, relpath_of, safe_regular_file, walk_files

DEFAULT = PathFilter(include=DEFAULT_INCLUDE)


# --- PathFilter ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "relpath",
    ["a.mp4", "sub/b.MOV", "MOVIE.MP4", "deep/er/c.mkv", "d.webm", "e.m4v", "f.ts", "g.avi", "with space.mp4"],
)
def test_default_include_accepts_videos(relpath: str) -> None:
    assert DEFAULT.wants(relpath)


@pytest.mark.parametrize(
    "relpath",
    [
        ".hidden.mp4",
        "sub/.hidden.mp4",
        ".cache/a.mp4",
        "sub/.partial/a.mp4",
        "x.mp4.part",
        "x.tmp",
        "x.mp4.tmp",
        "x.crdownload",
        "x.mp4.crdownload",
        "x.mp4~",
        "x.mp4.swp",
        "sub/x.MP4.PART",
        "notes.txt",
        "a.mp4.json",
        "mp4",
        "a.mp3",
        "",
    ],
)
def test_default_filter_rejects(relpath: str) -> None:
    assert not DEFAULT.wants(relpath)


def test_exclude_without_slash_matches_the_name_in_any_folder() -> None:
    flt = PathFilter(include=DEFAULT_INCLUDE, exclude=("*_draft.*",))
    assert not flt.wants("a_draft.mp4")
    assert not flt.wants("sub/deep/b_DRAFT.mov")
    assert flt.wants("a_final.mp4")
    assert flt.wants("drafts_draft/a.mp4")  # folder names are not file names


def test_exclude_with_slash_matches_the_relative_path() -> None:
    flt = PathFilter(include=DEFAULT_INCLUDE, exclude=("raw/*",))
    assert not flt.wants("raw/a.mp4")
    assert not flt.wants("RAW/b.mp4")
    assert flt.wants("a.mp4")
    assert flt.wants("cooked/raw/a.mp4")  # anchored at the root, not anywhere
    assert flt.wants("raw.mp4")


def test_include_with_slash_matches_the_relative_path() -> None:
    flt = PathFilter(include=("cam1/*.mp4",))
    assert flt.wants("cam1/a.mp4")
    assert not flt.wants("cam2/a.mp4")
    assert not flt.wants("a.mp4")


def test_exclude_wins_over_include() -> None:
    flt = PathFilter(include=("*.mp4",), exclude=("*.mp4",))
    assert not flt.wants("a.mp4")


def test_empty_include_wants_nothing() -> None:
    assert not PathFilter(include=()).wants("a.mp4")


# --- relpath_of ----------------------------------------------------------------------------------


def test_relpath_of_inside(tmp_path: Path) -> None:
    assert relpath_of(tmp_path, tmp_path / "a.mp4") == "a.mp4"
    assert relpath_of(tmp_path, tmp_path / "sub" / "b.mp4") == "sub/b.mp4"


def test_relpath_of_normalises_dot_dot_inside(tmp_path: Path) -> None:
    assert relpath_of(tmp_path, tmp_path / "sub" / ".." / "a.mp4") == "a.mp4"


def test_relpath_of_outside_is_none(tmp_path: Path) -> None:
    root = tmp_path / "in"
    root.mkdir()
    assert relpath_of(root, tmp_path / "out" / "a.mp4") is None
    assert relpath_of(root, root / ".." / "a.mp4") is None
    assert relpath_of(root, tmp_path / "in-other" / "a.mp4") is None  # a prefix is not a parent


def test_relpath_of_root_itself_is_none(tmp_path: Path) -> None:
    assert relpath_of(tmp_path, tmp_path) is None
    assert relpath_of(tmp_path, tmp_path / ".") is None


# --- safe_regular_file ---------------------------------------------------------------------------


@pytest.fixture
def root(tmp_path: Path) -> Path:
    folder = tmp_path / "in"
    folder.mkdir()
    return folder


def test_regular_file_is_safe(root: Path) -> None:
    path = root / "a.mp4"
    path.write_bytes(b"data")
    assert safe_regular_file(root, path)


def test_symlink_to_a_file_inside_root_is_safe(root: Path) -> None:
    target = root / "sub" / "real.mp4"
    target.parent.mkdir()
    target.write_bytes(b"data")
    link = root / "link.mp4"
    link.symlink_to(target)
    assert safe_regular_file(root, link)


def test_relative_symlink_inside_root_is_safe(root: Path) -> None:
    (root / "real.mp4").write_bytes(b"data")
    link = root / "link.mp4"
    link.symlink_to("real.mp4")
    assert safe_regular_file(root, link)


def test_symlink_to_a_file_outside_root_is_refused(root: Path, tmp_path: Path) -> None:
    outside = tmp_path / "secret.mp4"
    outside.write_bytes(b"data")
    link = root / "link.mp4"
    link.symlink_to(outside)
    assert not safe_regular_file(root, link)


def test_symlink_chain_ending_outside_root_is_refused(root: Path, tmp_path: Path) -> None:
    outside = tmp_path / "secret.mp4"
    outside.write_bytes(b"data")
    (root / "hop.mp4").symlink_to(outside)
    link = root / "link.mp4"
    link.symlink_to(root / "hop.mp4")
    assert not safe_regular_file(root, link)


def test_symlink_loop_is_refused(root: Path) -> None:
    a, b = root / "a.mp4", root / "b.mp4"
    a.symlink_to(b)
    b.symlink_to(a)
    assert not safe_regular_file(root, a)


def test_dangling_symlink_is_refused(root: Path) -> None:
    link = root / "link.mp4"
    link.symlink_to(root / "nowhere.mp4")
    assert not safe_regular_file(root, link)


def test_fifo_is_refused(root: Path) -> None:
    fifo = root / "x.mp4"
    os.mkfifo(fifo)
    assert not safe_regular_file(root, fifo)  # must not block: a FIFO is never opened


def test_symlink_to_fifo_inside_root_is_refused(root: Path) -> None:
    fifo = root / "pipe"
    os.mkfifo(fifo)
    link = root / "x.mp4"
    link.symlink_to(fifo)
    assert not safe_regular_file(root, link)


def test_directory_is_refused(root: Path) -> None:
    folder = root / "folder.mp4"
    folder.mkdir()
    assert not safe_regular_file(root, folder)


def test_missing_file_is_refused(root: Path) -> None:
    assert not safe_regular_file(root, root / "missing.mp4")


# --- walk_files ----------------------------------------------------------------------------------


def test_walk_files_skips_dot_dirs_and_does_not_follow_symlinked_dirs(root: Path, tmp_path: Path) -> None:
    (root / "a.mp4").write_bytes(b"")
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / "sub" / "b.mp4").write_bytes(b"")
    (root / "sub" / "deeper" / "c.mp4").write_bytes(b"")
    (root / ".hidden").mkdir()
    (root / ".hidden" / "d.mp4").write_bytes(b"")
    (root / "sub" / ".cache").mkdir()
    (root / "sub" / ".cache" / "e.mp4").write_bytes(b"")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "f.mp4").write_bytes(b"")
    (root / "linked").symlink_to(outside, target_is_directory=True)
    (root / "loop").symlink_to(root, target_is_directory=True)

    found = {p.relative_to(root).as_posix() for p in walk_files(root)}

    assert found == {"a.mp4", "sub/b.mp4", "sub/deeper/c.mp4"}


def test_walk_files_lists_symlinked_files_for_the_safety_check_to_judge(root: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside.mp4"
    outside.write_bytes(b"")
    (root / "link.mp4").symlink_to(outside)
    found = list(walk_files(root))
    assert found == [root / "link.mp4"]
    assert not safe_regular_file(root, found[0])


def test_walk_files_of_missing_root_yields_nothing(tmp_path: Path) -> None:
    assert list(walk_files(tmp_path / "missing")) == []
