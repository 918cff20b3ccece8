"""A really full disk: a small tmpfs mounted for one test, and a file that fills it to the last block."""

from __future__ import annotations

import errno
import os
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.support.sizes import KiB


@contextmanager
def tmpfs_mounts(root: Path) -> Iterator[Callable[[str, str], Path]]:
    """`make(name, size)`: a tmpfs of `size` ("2m") mounted at root/name, unmounted on the way out.
    Skips the test when it cannot mount one (not root, or no CAP_SYS_ADMIN in this container)."""
    mounted: list[Path] = []

    def make(name: str, size: str) -> Path:
        if os.geteuid() != 0:
            pytest.skip("mounting a tmpfs to fill needs root")
        point = root / name
        point.mkdir()
        result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(point)],
                                capture_output=True, text=True, check=False)
        if result.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here (needs CAP_SYS_ADMIN): {result.stderr.strip()}")
        mounted.append(point)
        return point

    try:
        yield make
    finally:
        for point in mounted:
            subprocess.run(["umount", "-l", str(point)], check=False)


def fill_up(folder: Path, name: str = ".filler") -> Path:
    """Write a file into `folder` until the disk answers ENOSPC; the file is returned for freeing it."""
    filler = folder / name
    block = b"\0" * (16 * KiB)
    with open(filler, "wb", buffering=0) as handle:
        try:
            while True:
                handle.write(block)
        except OSError as exc:
            if exc.errno != errno.ENOSPC:
                raise
        try:  # the last few blocks' worth of a smaller write
            while True:
                handle.write(b"\0" * 512)
        except OSError as exc:
            if exc.errno != errno.ENOSPC:
                raise
    return filler
