"""`chunkd verify`'s ETag check in both styles a multipart object answers HeadObject with: the MD5
of the part MD5s with "-N" (S3, MinIO, Ceph, moto), and the whole object's MD5 (`rclone serve s3`),
judged from what the manifest holds (the Complete's "-N" ETag and each part's MD5)."""

from __future__ import annotations

import hashlib

from chunkd.model.etags import multipart_etag
from chunkd.model.states import PartRecord
from chunkd.ops.verify import check_etag

BODIES = (b"a" * 1000, b"b" * 1000, b"c" * 10)


def md5(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def parts_of(bodies: tuple[bytes, ...]) -> list[PartRecord]:
    parts, offset = [], 0
    for number, body in enumerate(bodies, start=1):
        parts.append(PartRecord(number=number, offset=offset, size=len(body), etag=f'"{md5(body)}"', sha256=""))
        offset += len(body)
    return parts


PARTS = parts_of(BODIES)
MANIFEST_ETAG = multipart_etag(PARTS)
WHOLE = f'"{md5(b"".join(BODIES))}"'


def test_part_md5s_style_passes_when_equal_and_fails_when_not() -> None:
    assert check_etag(MANIFEST_ETAG, MANIFEST_ETAG, PARTS).ok
    other = multipart_etag(parts_of((b"x", b"y", b"z")))
    check = check_etag(other, MANIFEST_ETAG, PARTS)
    assert not check.ok and "!= manifest" in check.detail


def test_whole_object_md5_style_is_compared_with_the_md5_of_the_bytes_read() -> None:
    check = check_etag(WHOLE, MANIFEST_ETAG, PARTS, object_md5=md5(b"".join(BODIES)))
    assert check.ok and check.detail == WHOLE
    wrong = check_etag(f'"{md5(b"other bytes")}"', MANIFEST_ETAG, PARTS, object_md5=md5(b"".join(BODIES)))
    assert not wrong.ok


def test_whole_object_md5_style_unread_passes_saying_deep_compares_it() -> None:
    check = check_etag(WHOLE, MANIFEST_ETAG, PARTS)
    assert check.ok and "--deep" in check.detail


def test_one_part_object_whole_md5_is_the_part_md5() -> None:
    one = parts_of((b"only part",))
    assert check_etag(f'"{md5(b"only part")}"', multipart_etag(one), one).ok
    assert not check_etag(f'"{md5(b"other part")}"', multipart_etag(one), one).ok


def test_a_manifest_whose_etag_is_not_its_parts_etag_fails() -> None:
    """A plain MD5 on the object is compared as the whole object's only when the manifest's "-N"
    ETag is what its own parts make."""
    forged = multipart_etag(parts_of((b"x", b"y", b"z")))
    assert not check_etag(WHOLE, forged, PARTS, object_md5=md5(b"".join(BODIES))).ok


def test_manifest_holding_the_whole_object_md5_still_passes() -> None:
    """Manifests written when finalize asked HeadObject on `rclone serve s3` hold its answer."""
    assert check_etag(WHOLE, WHOLE, PARTS).ok


def test_whole_object_md5_style_fails_when_the_bytes_read_differ() -> None:
    assert not check_etag(WHOLE, MANIFEST_ETAG, PARTS, object_differs=True).ok
