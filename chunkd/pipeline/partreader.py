"""Reading one part of a file by byte offset: once, into a buffer that is hashed and then sent.

A part in flight is read into a reusable buffer of the process's pool (`read_into`; see
chunkd.pipeline.buffers, which bounds the memory all parts hold), so its bytes are read from the
file once, hashed where they lie (hashlib releases the GIL, so parts hash in parallel), and handed
to the HTTP client whole: one send instead of a read and a send per 16 KiB block. The bytes hashed
are the bytes sent, with one checksum the server verifies: the part's SHA-256 as the request's
signed payload hash (see chunkd.s3.client.signed_payload), or, where the server checks Content-MD5
but not signed hashes, its MD5 alone (UNSIGNED-PAYLOAD), so bytes damaged on the wire are refused.
With a bandwidth limit the bytes are sent through `BufferReader`, which charges the shared bucket
block by block.

`digest_range` and `RangeReader` read straight from the file: for checks of parts sent earlier,
and for a part too large for the buffer budget (hashed in one pass, sent in a second).
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
from dataclasses import dataclass
from pathlib import Path

from chunkd.errors import SourceChangedError, SourceGoneError
from chunkd.s3.bandwidth import TokenBucket

READ_SIZE = 1024 * 1024


@dataclass(frozen=True)
class FileIdentity:
    """What makes "the same file": a new inode under the same name is a different file."""

    device: int
    inode: int

    @classmethod
    def of(cls, stat: os.stat_result) -> FileIdentity:
        return cls(stat.st_dev, stat.st_ino)


@dataclass(frozen=True)
class Digest:
    """A range's checksums, each only when asked for: one pass of the cheaper check the server
    verifies (MD5 costs more than SHA-256 on CPUs with SHA-NI, but spares the signed-payload hash)."""

    sha256_hex: str | None
    md5_hex: str | None = None

    @property
    def md5_b64(self) -> str | None:
        return base64.b64encode(bytes.fromhex(self.md5_hex)).decode("ascii") if self.md5_hex else None

    @property
    def etag(self) -> str | None:
        return f'"{self.md5_hex}"' if self.md5_hex else None


def read_into(handle: io.BufferedReader, offset: int, buffer: bytearray) -> None:
    """Fill `buffer` with the file's bytes from `offset`: the kernel copies them straight in (one
    preadv, unless the kernel returns less)."""
    fd, view, done = handle.fileno(), memoryview(buffer), 0
    with view:
        while done < len(view):
            count = os.preadv(fd, [view[done:]], offset + done)
            if not count:
                raise SourceChangedError(f"file shrank: expected {len(view)} bytes at offset {offset}")
            done += count


def digest_of(data: bytes | bytearray, *, md5: bool = False, sha256: bool = True) -> Digest:
    """The SHA-256 and/or MD5 of bytes in memory, as asked for."""
    md5_hex = hashlib.md5(data, usedforsecurity=False).hexdigest() if md5 else None
    return Digest(hashlib.sha256(data).hexdigest() if sha256 else None, md5_hex)


def open_checked(path: Path, identity: FileIdentity | None) -> io.BufferedReader:
    """Open for reading, refusing a file that was replaced by another inode meanwhile."""
    try:
        handle = open(path, "rb")  # noqa: SIM115 - returned to the caller
    except FileNotFoundError:
        raise SourceGoneError(f"{path} no longer exists") from None
    if identity is not None and FileIdentity.of(os.fstat(handle.fileno())) != identity:
        handle.close()
        raise SourceChangedError("file was replaced by a new file (different inode)")
    return handle


def digest_range(
    handle: io.BufferedReader, offset: int, size: int, *, md5: bool = False, sha256: bool = True,
    read_size: int = READ_SIZE,
) -> Digest:
    """SHA-256 (signed payload) and/or MD5 (Content-MD5, ETag checks) of one byte range, as asked for."""
    md5_hash = hashlib.md5(usedforsecurity=False) if md5 else None
    sha = hashlib.sha256() if sha256 else None
    fd, position, remaining = handle.fileno(), offset, size
    while remaining > 0:
        chunk = os.pread(fd, min(read_size, remaining), position)
        if not chunk:
            raise SourceChangedError(f"file shrank: expected {size} bytes at offset {offset}")
        if md5_hash is not None:
            md5_hash.update(chunk)
        if sha is not None:
            sha.update(chunk)
        position += len(chunk)
        remaining -= len(chunk)
    return Digest(sha.hexdigest() if sha else None, md5_hash.hexdigest() if md5_hash is not None else None)


class _RangeStream(io.RawIOBase):
    """A seekable, read-only stream of `size` bytes that charges `limiter` for every block read:
    how a bandwidth limit covers all uploads at once without the uploader ever sleeping itself.
    `payload_sha256`, when known, is what the request signer uses instead of hashing the body."""

    def __init__(self, size: int, limiter: TokenBucket | None, *, payload_sha256: str | None) -> None:
        super().__init__()
        self.payload_sha256 = payload_sha256
        self._size = size
        self._position = 0
        self._limiter = limiter

    def _bytes_at(self, position: int, size: int) -> bytes:
        """`size` bytes from `position` of the range (fewer only at a shrunk file's end)."""
        raise NotImplementedError

    def __len__(self) -> int:
        return self._size

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, position: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: self._size}[whence]
        self._position = max(0, min(self._size, base + position))
        return self._position

    def read(self, size: int = -1) -> bytes:
        remaining = self._size - self._position
        if size is None or size < 0 or size > remaining:
            size = remaining
        if size <= 0:
            return b""
        if self._limiter is not None:
            self._limiter.consume(size)
        data = self._bytes_at(self._position, size)
        self._position += len(data)
        return data

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


class RangeReader(_RangeStream):
    """A seekable, read-only view of [offset, offset + size) of an open file."""

    def __init__(
        self, handle: io.BufferedReader, offset: int, size: int, limiter: TokenBucket | None = None,
        *, payload_sha256: str | None = None,
    ) -> None:
        super().__init__(size, limiter, payload_sha256=payload_sha256)
        self._fd = handle.fileno()
        self._offset = offset

    def _bytes_at(self, position: int, size: int) -> bytes:
        return os.pread(self._fd, size, self._offset + position)


class BufferReader(_RangeStream):
    """A part's buffer as a stream, for sending it through the bandwidth limiter."""

    def __init__(
        self, data: bytes | bytearray, limiter: TokenBucket, *, payload_sha256: str | None = None
    ) -> None:
        super().__init__(len(data), limiter, payload_sha256=payload_sha256)
        self._view = memoryview(data)

    def _bytes_at(self, position: int, size: int) -> bytes:
        return self._view[position : position + size].tobytes()
