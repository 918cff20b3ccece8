"""Checking the object a finalize made: it is what completing our parts makes, nothing else.

"Uploaded" is said only for an object the server vouches for: a Complete answered with the MD5 of
our parts' MD5s ("-N"), or else one seen at its destination by HeadObject: its size, and its ETag
wherever it is an MD5 chunkd can recompute — of the part MD5s, or of the whole object.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from chunkd.errors import PermanentError
from chunkd.model.etags import is_md5_etag, multipart_etag, same_etag
from chunkd.model.states import PartRecord, StreamRecord
from chunkd.pipeline.hashing import whole_md5
from chunkd.pipeline.monitor import Snapshot
from chunkd.s3.uploader import ObjectInfo, Uploader


@dataclass(frozen=True)
class ObjectCheck:
    """The object of one record, as the gateway sees it."""

    uploader: Uploader
    record: StreamRecord
    path: Path

    def verified_etag(self, snap: Snapshot, parts: list[PartRecord], completed_etag: str) -> str:
        """The object's ETag, checked.

        A Complete answered with the MD5-of-part-MD5s of exactly our parts proves the object is
        those parts, whose sizes tile the file and whose MD5s or signed SHA-256s the server checked
        as they came: no HeadObject is needed. That also spares `rclone serve s3`, whose HeadObject
        answers the whole object's MD5, a read of the whole object (1.6 s per GiB) and chunkd a
        whole-file MD5 to compare it with; the manifest keeps the Complete's ETag, which `chunkd
        verify` understands beside the whole-object MD5 HeadObject gives there. Any other answer
        (Ceph RGW sends none): HeadObject checks size and ETag.
        """
        if "-" in completed_etag and is_md5_etag(completed_etag) and same_etag(completed_etag, multipart_etag(parts)):
            return completed_etag
        return self.verify(snap, parts)

    def verify(self, snap: Snapshot, parts: list[PartRecord], *, size_only: bool = False) -> str:
        """HeadObject must show our size, and an ETag that matches our MD5s where it is one (the
        whole object's MD5 is read off the file then: an answer other than our parts' is rare)."""
        record = self.record
        info = self.uploader.head(record.bucket, record.key)
        if info is None or info.size != snap.size:
            got = "missing" if info is None else f"{info.size} bytes"
            raise PermanentError(f"verification failed: object is {got}, file is {snap.size} bytes", key=record.key)
        if size_only or not is_md5_etag(info.etag):
            return info.etag  # a server-side copy: its ETag depends on how the server copied
        if "-" in info.etag:
            expected = multipart_etag(parts)
        elif len(parts) == 1 and parts[0].etag:
            expected = parts[0].etag
        elif not self.uploader.content_md5:
            return info.etag  # the whole object's MD5: checked only where MD5s are checked at all
        else:
            expected = f'"{whole_md5(self.path, snap.identity)}"'
        if not same_etag(info.etag, expected):
            raise PermanentError(f"verification failed: ETag {info.etag} != expected {expected}", key=record.key)
        return info.etag


def completed_earlier(
    info: ObjectInfo | None, parts: list[PartRecord], whole_md5: Callable[[], str] | None = None
) -> bool:
    """The object is what completing these parts makes: its size, and its ETag where that is an
    MD5 — of the part MD5s (`-N`), or of the whole object (`rclone serve s3`; `whole_md5` reads
    the local file for it)."""
    if info is None or info.size != sum(p.size for p in parts):
        return False
    if not is_md5_etag(info.etag):
        return True
    if "-" in info.etag or whole_md5 is None:
        return same_etag(info.etag, multipart_etag(parts))
    return same_etag(info.etag, f'"{whole_md5()}"')


def check_layout(parts: list[PartRecord], size: int) -> None:
    """Never complete a wrong object: parts must tile [0, size) exactly, numbered 1..N."""
    offset = 0
    for index, part in enumerate(parts, start=1):
        if part.number != index or part.offset != offset:
            raise PermanentError(f"internal error: part {part.number} does not continue at offset {offset}")
        offset += part.size
    if offset != size:
        raise PermanentError(f"internal error: parts cover {offset} bytes, file has {size}")

