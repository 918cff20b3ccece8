"""Which paths in the drop folder are ours: pattern matching, temp names, and symlink safety."""

from __future__ import annotations

import fnmatch
import logging
import os
import stat as stat_module
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

logger = logging.getLogger("chunkd.paths")

TEMP_PATTERNS = ("*.part", "*.tmp", "*.crdownload", "*~", "*.swp")


@dataclass(frozen=True)
class PathFilter:
    """Include/exclude globs; a pattern with a '/' matches the relative path, else the file name.

    Matching ignores case so that MOVIE.MP4 is a video too.
    """

    include: tuple[str, ...]
    exclude: tuple[str, ...] = ()
    skip_dirs: tuple[str, ...] = ()  # relpaths of our own folders (done/, quarantine) inside the root

    def wants(self, relpath: str) -> bool:
        parts = PurePosixPath(relpath).parts
        if not parts or any(part.startswith(".") for part in parts):
            return False
        if any(relpath.startswith(f"{folder}/") for folder in self.skip_dirs):
            return False
        name = parts[-1]
        if _matches(name, relpath, TEMP_PATTERNS) or _matches(name, relpath, self.exclude):
            return False
        return _matches(name, relpath, self.include)


def _matches(name: str, relpath: str, patterns: tuple[str, ...]) -> bool:
    name, relpath = name.lower(), relpath.lower()
    return any(fnmatch.fnmatchcase(relpath if "/" in p else name, p.lower()) for p in patterns)


def relpath_of(root: Path, path: Path) -> str | None:
    """POSIX relative path of `path` under `root`, or None if it is not below it."""
    try:
        relative = Path(os.path.abspath(path)).relative_to(root)
    except ValueError:
        return None
    text = relative.as_posix()
    return None if text in ("", ".") else text


def safe_regular_file(root: Path, path: Path) -> bool:
    """True for a regular file whose real location is inside `root`.

    A symlink is followed only if it resolves inside the drop folder; anything else (links out,
    loops, FIFOs, devices, sockets) is refused here, before anything opens it.
    """
    try:
        if path.is_symlink():
            real = path.resolve(strict=True)
            if not real.is_relative_to(root):
                logger.warning("refusing symlink that points outside the input folder", extra={"path": str(path)})
                return False
        info = path.stat()
    except (OSError, RuntimeError):  # vanished, loop, permission: nothing to upload
        return False
    return stat_module.S_ISREG(info.st_mode)


def walk_files(root: Path) -> Iterator[Path]:
    """Every file below `root`, never descending into symlinked folders."""
    for folder, dirs, files in os.walk(root, followlinks=False, onerror=lambda exc: None):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in files:
            yield Path(folder) / name


def free_name(path: Path) -> Path:
    """`path`, or `name.1.ext`, `name.2.ext`… if something is already there: never overwrite."""
    candidate, counter = path, 0
    while candidate.exists():
        counter += 1
        candidate = path.with_name(f"{path.stem}.{counter}{path.suffix}")
    return candidate
