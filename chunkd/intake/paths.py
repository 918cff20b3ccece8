"""Which paths in the drop folder are ours: pattern matching, temp names, symlink safety, and the
one text spelling of a file name that every record, key, log line and report uses.

Relative paths ("relpaths") are text that is always valid UTF-8 and free of control characters,
yet says exactly which bytes the file name has: undecodable bytes and control characters are
percent-encoded (`caf\\xe9.mp4` -> `caf%E9.mp4`, a newline -> `%0A`), and so is a `%` that
would otherwise read as an escape (`a%20b.mp4` -> `a%2520b.mp4`). Every other name, spaces,
quotes, a leading `-` and any Unicode included, is kept as it is. The original bytes are
`urllib.parse.unquote_to_bytes(relpath)`: no two names share a relpath.
"""

from __future__ import annotations

import enum
import errno
import fnmatch
import functools
import os
import re
import stat as stat_module
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote_to_bytes

TEMP_PATTERNS = ("*.part", "*.tmp", "*.crdownload", "*~", "*.swp")

# What a relpath must not show as is: C0/C1 controls and DEL, undecodable bytes (which
# surrogateescape turns into U+DC80..U+DCFF), and a '%' that looks like an escape already.
_NEEDS_ESCAPE = re.compile(r"[\x00-\x1f\x7f-\x9f\udc80-\udcff]|%(?=[0-9A-Fa-f]{2})")


@dataclass(frozen=True)
class PathFilter:
    """Include/exclude globs; a pattern with a '/' matches the relative path, else the file name.

    Matching ignores case so that MOVIE.MP4 is a video too. Each set of globs is compiled into one
    regular expression: a rescan asks this of every file in the folder.
    """

    include: tuple[str, ...]
    exclude: tuple[str, ...] = ()
    skip_dirs: tuple[str, ...] = ()  # relpaths of our own folders (done/, quarantine) inside the root
    _compiled: tuple[_Globs, _Globs] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        unwanted = _Globs.of(TEMP_PATTERNS + tuple(self.exclude))
        object.__setattr__(self, "_compiled", (_Globs.of(tuple(self.include)), unwanted))

    def wants(self, relpath: str) -> bool:
        parts = [part for part in relpath.split("/") if part]
        if not parts or any(part.startswith(".") for part in parts):
            return False
        if any(relpath.startswith(f"{folder}/") for folder in self.skip_dirs):
            return False
        include, unwanted = self._compiled
        name, relpath = parts[-1].lower(), relpath.lower()
        return not unwanted.match(name, relpath) and include.match(name, relpath)


@dataclass(frozen=True)
class _Globs:
    """Globs against the file name, and globs (with a '/') against the relative path."""

    by_name: re.Pattern[str] | None
    by_path: re.Pattern[str] | None

    @classmethod
    def of(cls, patterns: tuple[str, ...]) -> _Globs:
        def compiled(selected: list[str]) -> re.Pattern[str] | None:
            return re.compile("|".join(fnmatch.translate(p.lower()) for p in selected)) if selected else None

        return cls(compiled([p for p in patterns if "/" not in p]), compiled([p for p in patterns if "/" in p]))

    def match(self, name: str, relpath: str) -> bool:
        return bool((self.by_name and self.by_name.match(name)) or (self.by_path and self.by_path.match(relpath)))


# -- names as text -------------------------------------------------------------------------------


def escape_name(name: str) -> str:
    """The relpath spelling of a file-system name (a `str` as `os.fsdecode` gives it)."""
    if name.isascii() and name.isprintable() and "%" not in name:
        return name  # the common case, without a regex pass
    text = os.fsencode(name).decode("utf-8", "surrogateescape")  # the same whatever the locale
    return _NEEDS_ESCAPE.sub(lambda match: percent_escape(match.group()), text)


def percent_escape(char: str) -> str:
    """`%XX` for each byte of one character; an undecodable byte (a surrogate) is that byte."""
    if "\udc80" <= char <= "\udcff":
        return f"%{ord(char) - 0xDC00:02X}"
    return "".join(f"%{byte:02X}" for byte in char.encode("utf-8"))


_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f-\x9f\udc80-\udcff]")


def printable(text: str) -> str:
    """`text` safe to print on one line of a terminal or a table: control characters and
    undecodable bytes (in an error message that quotes a file's path) are percent-encoded; a '%'
    is left alone, so an already escaped relpath is shown as it is."""
    return _UNPRINTABLE.sub(lambda match: percent_escape(match.group()), text)


def name_bytes(relpath: str) -> bytes:
    """The file name's bytes back from its relpath (the inverse of `escape_name`)."""
    return unquote_to_bytes(relpath)


def local_path(root: Path, relpath: str) -> Path:
    """The file a relpath names below `root`: what a record's relpath points back to."""
    if "%" not in relpath:
        return root / relpath
    return root / os.fsdecode(name_bytes(relpath))


def relpath_of(root: Path, path: Path) -> str | None:
    """Escaped POSIX relative path of `path` under `root`, or None if it is not below it."""
    try:
        relative = Path(os.path.abspath(path)).relative_to(root)
    except ValueError:
        return None
    text = relative.as_posix()
    return None if text in ("", ".") else escape_name(text)


# -- what may be opened --------------------------------------------------------------------------


class Refusal(enum.Enum):
    """Why a path in the drop folder is not uploaded. `quiet` ones are not worth a log line."""

    OUTSIDE = "symlink points outside the input folder"
    LOOP = "symlink loop"
    DANGLING = "symlink to nothing"
    SPECIAL = "not a regular file"
    UNREADABLE = "cannot inspect"
    DIRECTORY = "a folder"
    GONE = "no longer exists"

    @property
    def quiet(self) -> bool:
        return self in (Refusal.DIRECTORY, Refusal.GONE)


@dataclass(frozen=True)
class Verdict:
    refusal: Refusal | None = None
    detail: str = ""  # e.g. "FIFO", or the symlink's target
    info: os.stat_result | None = field(default=None, compare=False)  # the file's stat when accepted

    @property
    def ok(self) -> bool:
        return self.refusal is None

    def __str__(self) -> str:
        if self.refusal is None:
            return "ok"
        return f"{self.refusal.value} ({self.detail})" if self.detail else self.refusal.value


_SPECIAL_KINDS = (
    (stat_module.S_ISFIFO, "FIFO"),
    (stat_module.S_ISCHR, "character device"),
    (stat_module.S_ISBLK, "block device"),
    (stat_module.S_ISSOCK, "socket"),
)


def check_file(root: Path, path: Path) -> Verdict:
    """May `path` be opened and uploaded? Only a regular file whose real location is inside `root`.

    The whole path is resolved, not just its last part: a folder on the way that was swapped for
    a symlink to somewhere else is refused like a symlinked file. Links out, loops, FIFOs,
    devices and sockets are refused from `lstat`/`stat` alone, before anything opens them
    (opening a FIFO would block, a device would stream forever).
    """
    try:
        info = os.lstat(path)
        real = os.path.realpath(path, strict=True)
    except FileNotFoundError:
        return Verdict(Refusal.DANGLING, _link_target(path)) if _is_link(path) else Verdict(Refusal.GONE)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return Verdict(Refusal.LOOP)
        return Verdict(Refusal.UNREADABLE, exc.strerror or str(exc))
    if not _inside(real, _real_root(str(root))):
        detail = _link_target(path) if stat_module.S_ISLNK(info.st_mode) else "through a symlinked folder"
        return Verdict(Refusal.OUTSIDE, detail)
    if stat_module.S_ISLNK(info.st_mode):
        try:
            info = os.stat(real)
        except OSError:
            return Verdict(Refusal.GONE)
    if stat_module.S_ISREG(info.st_mode):
        return Verdict(info=info)
    if stat_module.S_ISDIR(info.st_mode):
        return Verdict(Refusal.DIRECTORY)
    kind = next((name for test, name in _SPECIAL_KINDS if test(info.st_mode)), "special file")
    return Verdict(Refusal.SPECIAL, kind)


@functools.lru_cache(maxsize=16)
def _real_root(root: str) -> str:
    return os.path.realpath(root)


def _inside(real: str, root: str) -> bool:
    return real == root or real.startswith(root.rstrip(os.sep) + os.sep)


def _is_link(path: Path) -> bool:
    try:
        return stat_module.S_ISLNK(os.lstat(path).st_mode)
    except OSError:
        return False


def _link_target(path: Path) -> str:
    try:
        return escape_name(os.readlink(path))
    except OSError:
        return "?"


def safe_regular_file(root: Path, path: Path) -> bool:
    """True for a regular file whose real location is inside `root` (see `check_file`)."""
    return check_file(root, path).ok


@dataclass(frozen=True)
class Found:
    """A file a walk found: where it is, its relpath, and whether it may be uploaded."""

    location: str
    relpath: str
    verdict: Verdict

    @property
    def path(self) -> Path:
        return Path(self.location)


def walk(root: Path, *, folders: list[int] | None = None) -> Iterator[Found]:
    """Every file below `root` with its verdict, depth first, never descending into dot-folders or
    symlinked folders.

    Cheap enough to run over 50,000 files every minute: a folder is entered only if it is still the
    folder that was listed (one swapped for a symlink meanwhile is skipped), and a plain file is
    judged from the `lstat` the listing made; only symlinks get the full `check_file`.
    Iterative, so a tree thousands of folders deep costs a list entry per level, not a stack frame.
    `folders[0]`, when given, counts the folders read (what inotify needs a watch for).
    """
    pending: list[tuple[Path, str, tuple[int, int] | None]] = [(root, "", None)]
    while pending:
        folder, prefix, identity = pending.pop()
        try:
            if identity is not None and _identity(os.stat(folder)) != identity:
                continue  # replaced since it was listed (by a symlink out, say): not this folder any more
            entries = os.scandir(folder)
        except OSError:
            continue  # vanished or unreadable: nothing to offer from there
        if folders is not None:
            folders[0] += 1
        subfolders: list[tuple[Path, str, tuple[int, int]]] = []
        with entries:  # read as it goes: a folder of 50,000 files is never held in memory at once
            yield from _listed(root, entries, prefix, subfolders)
        pending.extend(reversed(subfolders))


def _listed(
    root: Path, entries: Iterator[os.DirEntry[str]], prefix: str, subfolders: list[tuple[Path, str, tuple[int, int]]]
) -> Iterator[Found]:
    """The files of one folder listing; its subfolders (to enter later) go to `subfolders`."""
    while True:
        try:
            entry = next(entries)
        except StopIteration:
            return
        except OSError:
            return  # the folder went away while being read
        relpath = prefix + escape_name(entry.name)
        try:
            is_dir = entry.is_dir()  # a symlink to a folder is a folder, but is not entered
        except OSError:
            is_dir = False  # a symlink loop, say: `check_file` says why it is refused
        if not is_dir:
            yield Found(entry.path, relpath, _entry_verdict(root, entry))
        elif not entry.is_symlink() and not entry.name.startswith("."):
            try:
                subfolders.append((Path(entry.path), relpath + "/", _identity(entry.stat(follow_symlinks=False))))
            except OSError:
                pass  # gone meanwhile


def _identity(info: os.stat_result) -> tuple[int, int]:
    return info.st_dev, info.st_ino


def _entry_verdict(root: Path, entry: os.DirEntry[str]) -> Verdict:
    try:
        if entry.is_symlink():
            return check_file(root, Path(entry.path))
        info = entry.stat(follow_symlinks=False)
    except FileNotFoundError:
        return Verdict(Refusal.GONE)
    except OSError as exc:
        return Verdict(Refusal.UNREADABLE, exc.strerror or str(exc))
    if stat_module.S_ISREG(info.st_mode):
        return Verdict(info=info)
    kind = next((name for test, name in _SPECIAL_KINDS if test(info.st_mode)), "special file")
    return Verdict(Refusal.SPECIAL, kind)


def walk_files(root: Path, *, folders: list[int] | None = None) -> Iterator[Path]:
    """Every file below `root` (see `walk`), whatever its verdict."""
    return (found.path for found in walk(root, folders=folders))


def free_name(path: Path) -> Path:
    """`path`, or `name.1.ext`, `name.2.ext`… if something is already there: never overwrite."""
    candidate, counter = path, 0
    while candidate.exists():
        counter += 1
        candidate = path.with_name(f"{path.stem}.{counter}{path.suffix}")
    return candidate
