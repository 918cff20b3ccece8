"""Files as tests drop them into the input folder, and their digests."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from tests.support.sizes import MiB


def write_random(path: Path, size: int) -> Path:
    """`size` random bytes written in place, as `cp` into the folder does."""
    with open(path, "wb") as handle:
        remaining = size
        while remaining:
            chunk = os.urandom(min(4 * MiB, remaining))
            handle.write(chunk)
            remaining -= len(chunk)
    return path


def drop(source: Path, input_dir: Path, name: str) -> Path:
    """Move a finished file into the drop folder in one step, as `mv` does."""
    target = input_dir / name
    os.replace(source, target)
    return target


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(MiB), b""):
            digest.update(chunk)
    return digest.hexdigest()
