"""Reading a settled file for its hashes: whole-file SHA-256 and the checksums of parts sent earlier
(each part's is the one it was sent with: SHA-256, or MD5 where Content-MD5 carried the check).

No whole-file MD5: a Complete answered with our parts' ETag proves the object (see
chunkd.pipeline.objectcheck), and the rare check that needs it reads the file then (`whole_md5`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import threading
from collections.abc import Collection, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from chunkd.errors import ScanCancelled, SourceChangedError
from chunkd.model.planner import Part
from chunkd.model.states import PartRecord
from chunkd.pipeline.partreader import READ_SIZE, FileIdentity, open_checked


@dataclass(frozen=True)
class LocalScan:
    sha256: str
    part_sha256: dict[int, str] = field(default_factory=dict)  # only the parts asked for
    part_md5: dict[int, str] = field(default_factory=dict)  # only the parts asked for by MD5

    def matches(self, part: PartRecord) -> bool:
        """Whether a part sent earlier still holds the bytes sent, by the checksum it was sent
        with (a part the scan did not hash is taken as it is)."""
        if part.number in self.part_md5 and part.md5:
            return self.part_md5[part.number] == part.md5
        if part.number in self.part_sha256 and part.sha256:
            return self.part_sha256[part.number] == part.sha256
        return part.number not in self.part_md5 and part.number not in self.part_sha256


@dataclass(frozen=True)
class Scan:
    path: Path
    identity: FileIdentity
    parts: list[Part]
    part_hashes: Collection[int] = ()  # part numbers whose own checksum is wanted (rewrite detection)
    md5_parts: Collection[int] = ()  # of those, the ones sent with Content-MD5: hashed by MD5, not SHA-256
    cancel: threading.Event | None = None  # set: stop reading soon (ScanCancelled)

    def run(self) -> LocalScan:
        whole = hashlib.sha256()
        scan = LocalScan("")
        with open_checked(self.path, self.identity) as handle:
            fd = handle.fileno()
            for part in self.parts:
                part_hash = self._part_hash(part.number)
                for chunk in _chunks(fd, part.offset, part.size, self.cancel):
                    whole.update(chunk)
                    if part_hash is not None:
                        part_hash.update(chunk)
                if part_hash is not None:
                    found = scan.part_md5 if part.number in self.md5_parts else scan.part_sha256
                    found[part.number] = part_hash.hexdigest()
        return dataclasses.replace(scan, sha256=whole.hexdigest())

    def _part_hash(self, number: int) -> hashlib._Hash | None:
        if number not in self.part_hashes:
            return None
        return hashlib.md5(usedforsecurity=False) if number in self.md5_parts else hashlib.sha256()


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
