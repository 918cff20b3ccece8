"""Which drop-folder paths are ours: globs, temp names, dot-paths, and symlink/special-file safety."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from chunkd.config import DEFAULT_INCLUDE
from chunkd.intake.paths import (
    PathFilter,
    Refusal,
    check_file,
    escape_name,
    local_path,
    name_bytes,
    printable,
    relpath_of,
    safe_regular_file,
    walk,
    walk_files,
)

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


# --- names as text -------------------------------------------------------------------------------

# A file name is any bytes but '/' and NUL.
NAME_BYTES = st.binary(min_size=1, max_size=60).filter(lambda b: b"/" not in b and b"\0" not in b)


@given(NAME_BYTES)
def test_escaped_names_are_clean_text_that_gives_the_bytes_back(raw: bytes) -> None:
    text = escape_name(os.fsdecode(raw))
    text.encode("utf-8")  # no surrogates: storable in SQLite, Redis, JSON, S3 keys
    assert not any(ord(char) < 0x20 or 0x7F <= ord(char) <= 0x9F for char in text)
    assert name_bytes(text) == raw


@given(NAME_BYTES, NAME_BYTES)
def test_different_names_never_share_an_escaped_spelling(a: bytes, b: bytes) -> None:
    if a != b:
        assert escape_name(os.fsdecode(a)) != escape_name(os.fsdecode(b))


@pytest.mark.parametrize(
    ("raw", "text"),
    [
        (b"plain name.mp4", "plain name.mp4"),
        (b"-leading dash.mp4", "-leading dash.mp4"),
        (b"quotes \"'`.mp4", "quotes \"'`.mp4"),
        ("ünïcödé 🎬.mp4".encode(), "ünïcödé 🎬.mp4"),
        (b"100% sure.mp4", "100% sure.mp4"),
        (b"a%20b.mp4", "a%2520b.mp4"),
        (b"new\nline.mp4", "new%0Aline.mp4"),
        (b"caf\xe9.mp4", "caf%E9.mp4"),
        (b"\xc2\x9bcsi.mp4", "%C2%9Bcsi.mp4"),  # a C1 control a terminal would act on
    ],
)
def test_escape_examples(raw: bytes, text: str) -> None:
    assert escape_name(os.fsdecode(raw)) == text


def test_relpath_of_escapes_every_segment_and_local_path_finds_the_file(root: Path) -> None:
    folder = os.path.join(os.fsencode(root), b"d\xff\nir")
    os.mkdir(folder)
    path = os.path.join(folder, b"f%41\xe9.mp4")
    Path(os.fsdecode(path)).write_bytes(b"x")
    relpath = relpath_of(root, Path(os.fsdecode(path)))
    assert relpath == "d%FF%0Air/f%2541%E9.mp4"
    assert local_path(root, relpath).read_bytes() == b"x"
    assert local_path(root, "plain/a.mp4") == root / "plain" / "a.mp4"


# --- check_file: why a path is refused ------------------------------------------------------------


def test_check_file_names_the_reason(root: Path, tmp_path: Path) -> None:
    outside = tmp_path / "secret.mp4"
    outside.write_bytes(b"s")
    (root / "out.mp4").symlink_to(outside)
    (root / "a.mp4").symlink_to(root / "b.mp4")
    (root / "b.mp4").symlink_to(root / "a.mp4")
    (root / "gone.mp4").symlink_to(root / "nowhere")
    os.mkfifo(root / "pipe.mp4")
    (root / "ok.mp4").write_bytes(b"ok")

    assert check_file(root, root / "out.mp4").refusal is Refusal.OUTSIDE
    assert str(check_file(root, root / "out.mp4")) == f"symlink points outside the input folder ({outside})"
    assert check_file(root, root / "a.mp4").refusal is Refusal.LOOP
    assert check_file(root, root / "gone.mp4").refusal is Refusal.DANGLING
    assert str(check_file(root, root / "pipe.mp4")) == "not a regular file (FIFO)"
    assert check_file(root, root / "missing.mp4").refusal is Refusal.GONE and Refusal.GONE.quiet
    verdict = check_file(root, root / "ok.mp4")
    assert verdict.ok and verdict.info is not None and verdict.info.st_size == 2


def test_a_device_node_is_refused_without_being_opened(root: Path) -> None:
    try:
        os.mknod(root / "zero.mp4", 0o644 | stat.S_IFCHR, os.makedev(1, 5))
    except PermissionError:
        pytest.skip("mknod needs CAP_MKNOD")
    assert str(check_file(root, root / "zero.mp4")) == "not a regular file (character device)"


def test_a_folder_on_the_way_that_leads_outside_is_refused(root: Path, tmp_path: Path) -> None:
    """The event said `cam/clip.mp4`; by the time it is checked, `cam` is a symlink out."""
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "clip.mp4").write_bytes(b"secret")
    (root / "cam").symlink_to(outside, target_is_directory=True)
    verdict = check_file(root, root / "cam" / "clip.mp4")
    assert verdict.refusal is Refusal.OUTSIDE and verdict.detail == "through a symlinked folder"


def test_a_root_given_through_a_symlink_still_accepts_its_files(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    (real / "a.mp4").write_bytes(b"a")
    alias = tmp_path / "alias"
    alias.symlink_to(real, target_is_directory=True)
    assert check_file(alias, alias / "a.mp4").ok


def test_walk_files_goes_1200_folders_deep_without_recursion(root: Path) -> None:
    depth = 1200  # past Python's recursion limit (1,000 frames), within PATH_MAX
    bottom = root
    for _ in range(depth):  # one level at a time: mkdir(parents=True) itself recurses
        bottom = bottom / "d"
        bottom.mkdir()
    (bottom / "deep.mp4").write_bytes(b"")
    try:
        folders = [0]
        assert list(walk_files(root, folders=folders)) == [bottom / "deep.mp4"]
        assert folders == [depth + 1]
    finally:  # bottom up, one level at a time: shutil.rmtree (pytest's clean-up) would recurse
        (bottom / "deep.mp4").unlink()
        while bottom != root:
            bottom.rmdir()
            bottom = bottom.parent


def test_printable_keeps_one_line_and_never_fails_to_encode() -> None:
    message = "permission denied reading /in/caf" + os.fsdecode(b"\xe9") + "\nx\x1b[31m.mp4 (50%20)"
    shown = printable(message)
    assert shown == "permission denied reading /in/caf%E9%0Ax%1B[31m.mp4 (50%20)"
    shown.encode("utf-8")
    assert printable("caf%E9/a%2520b.mp4") == "caf%E9/a%2520b.mp4", "escaped relpaths are shown as they are"


def test_a_folder_swapped_for_a_symlink_between_listing_and_entering_is_skipped(root: Path, tmp_path: Path) -> None:
    (root / "a.mp4").write_bytes(b"a")
    (root / "cam").mkdir()
    (root / "cam" / "clip.mp4").write_bytes(b"inside")
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "clip.mp4").write_bytes(b"secret")
    walker = walk(root)
    first = next(walker)  # the root is listed: `cam` was a real folder then
    assert first.relpath == "a.mp4" and first.verdict.ok
    (root / "cam" / "clip.mp4").unlink()
    (root / "cam").rmdir()
    (root / "cam").symlink_to(outside, target_is_directory=True)
    assert list(walker) == []
