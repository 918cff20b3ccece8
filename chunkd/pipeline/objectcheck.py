"""Checking the object a finalize made: it is what completing our parts makes, nothing else.

"Uploaded" is said only for an object seen at its destination: its size, and its ETag wherever the
ETag is an MD5 chunkd can recompute — MD5 of the part MD5s ("-N", S3, MinIO, Ceph, moto) or the
whole object's MD5 (`rclone serve s3`, checked only when MD5s are checked at all).
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

    def verified_etag(self, snap: Snapshot, parts: list[PartRecord], completed_etag: str, *, md5: str | None) -> str:
        """The object's ETag, checked.

        A Complete answered with the MD5-of-part-MD5s of exactly our parts proves the object is
        those parts, whose sizes tile the file: no HeadObject is needed (it would also cost
        `rclone serve s3` a read of the whole object, 1.6 s per GiB, to compute its own ETag).
        With Content-MD5 on, or any other answer, HeadObject checks size and ETag.
        """
        if (
            not self.uploader.content_md5
            and "-" in completed_etag
            and is_md5_etag(completed_etag)
            and same_etag(completed_etag, multipart_etag(parts))
        ):
            return completed_etag
        return self.verify(snap, parts, md5=md5)

    def verify(self, snap: Snapshot, parts: list[PartRecord], *, md5: str | None = None, size_only: bool = False) -> str:
        """HeadObject must show our size, and an ETag that matches our MD5s where it is one.

        `md5`: the whole file's MD5 if the scan computed it; else it is read again when needed.
        """
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
            expected = f'"{md5 or whole_md5(self.path, snap.identity)}"'
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

