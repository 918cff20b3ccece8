"""Reading a settled file for its hashes: whole-file SHA-256, the SHA-256 of parts sent earlier,
and the whole-file MD5 when the server's multipart ETags are plain MD5s (`rclone serve s3`).

The MD5 runs in a thread of its own beside the SHA-256 pass: hashlib releases the GIL on large
buffers, so on two cores both cost the time of one.
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
    md5: str | None = None


@dataclass(frozen=True)
class Scan:
    path: Path
    identity: FileIdentity
    parts: list[Part]
    part_hashes: Collection[int] = ()  # part numbers whose own SHA-256 is wanted (rewrite detection)
    md5: bool = False
    cancel: threading.Event | None = None  # set: stop reading soon (ScanCancelled)

    def run(self) -> LocalScan:
        md5_result: list[str | BaseException] = []
        worker = None
        if self.md5:
            worker = threading.Thread(target=self._md5_into, args=(md5_result,), name="chunkd-md5", daemon=True)
            worker.start()
        sha256, part_sha256 = self._sha256()
        md5: str | None = None
        if worker is not None:
            worker.join()
            if isinstance(md5_result[0], BaseException):
                raise md5_result[0]
            md5 = md5_result[0]
        return LocalScan(sha256, part_sha256, md5)

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

    def _md5_into(self, result: list[str | BaseException]) -> None:
        try:
            md5 = hashlib.md5(usedforsecurity=False)
            size = sum(part.size for part in self.parts)
            with open_checked(self.path, self.identity) as handle:
                for chunk in _chunks(handle.fileno(), 0, size, self.cancel):
                    md5.update(chunk)
            result.append(md5.hexdigest())
        except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
            result.append(exc)


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
