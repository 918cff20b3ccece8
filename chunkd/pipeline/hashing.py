"""Reading a settled file for its hashes: whole-file SHA-256 and the SHA-256 of parts sent earlier.

No whole-file MD5: a Complete answered with our parts' ETag proves the object (see
chunkd.pipeline.objectcheck), and the rare check that needs it reads the file then (`whole_md5`).
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Collection, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from chunkd.errors import ScanCancelled, SourceChangedError
from chunkd.model.planner import Part
from chunkd.pipeline.partreader import READ_SIZE, FileIdentity, open_checked


@dataclass(frozen=True)
class LocalScan:
    sha256: str
    part_sha256: dict[int, str] = field(default_factory=dict)  # only the parts asked for


@dataclass(frozen=True)
class Scan:
    path: Path
    identity: FileIdentity
    parts: list[Part]
    part_hashes: Collection[int] = ()  # part numbers whose own SHA-256 is wanted (rewrite detection)
    cancel: threading.Event | None = None  # set: stop reading soon (ScanCancelled)

    def run(self) -> LocalScan:
        sha256, part_sha256 = self._sha256()
        return LocalScan(sha256, part_sha256)

    def _sha256(self) -> tuple[str, dict[int, str]]:
        whole = hashlib.sha256()
        digests: dict[int, str] = {}
        with open_checked(self.path, self.identity) as handle:
            fd = handle.fileno()
            for part in self.parts:
                part_hash = hashlib.sha256() if part.number in self.part_hashes else None
                for chunk in _chunks(fd, part.offset, part.size, self.cancel):
                    whole.update(chunk)
                    if part_hash is not None:
                        part_hash.update(chunk)
                if part_hash is not None:
                    digests[part.number] = part_hash.hexdigest()
        return whole.hexdigest(), digests


def _chunks(fd: int, offset: int, size: int, cancel: threading.Event | None) -> Iterator[bytes]:
    position, remaining = offset, size
    while remaining > 0:
        if cancel is not None and cancel.is_set():
            raise ScanCancelled
        chunk = os.pread(fd, min(READ_SIZE, remaining), position)
        if not chunk:
            raise SourceChangedError("file shrank while being finalized")
        yield chunk
        position += len(chunk)
        remaining -= len(chunk)


def whole_md5(path: Path, identity: FileIdentity) -> str:
    md5 = hashlib.md5(usedforsecurity=False)
    with open_checked(path, identity) as handle:
        for chunk in iter(lambda: handle.read(READ_SIZE), b""):
            md5.update(chunk)
    return md5.hexdigest()
