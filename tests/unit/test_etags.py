"""ETag helpers: the two styles a multipart object's ETag comes in, and what is not an MD5."""

from __future__ import annotations

import hashlib

import pytest

from chunkd.model.etags import is_body_md5, is_md5_etag, multipart_etag, same_etag
from chunkd.model.states import PartRecord

MiB = 1024 * 1024


def records(chunks: list[bytes]) -> list[PartRecord]:
    found, offset = [], 0
    for number, chunk in enumerate(chunks, start=1):
        etag = f'"{hashlib.md5(chunk).hexdigest()}"'
        found.append(PartRecord(number, offset, len(chunk), etag, hashlib.sha256(chunk).hexdigest()))
        offset += len(chunk)
    return found


def test_multipart_etag_is_the_md5_of_the_part_md5s_with_the_part_count() -> None:
    chunks = [b"a" * 5 * MiB, b"b" * 5 * MiB, b"c" * 17]
    expected = hashlib.md5(b"".join(hashlib.md5(c).digest() for c in chunks)).hexdigest()
    assert multipart_etag(records(chunks)) == f'"{expected}-3"'


def test_multipart_etag_takes_part_etags_quoted_or_not() -> None:
    quoted = records([b"x", b"y"])
    bare = [PartRecord(p.number, p.offset, p.size, p.etag.strip('"'), p.sha256) for p in quoted]
    assert multipart_etag(quoted) == multipart_etag(bare)


def test_one_part_is_not_the_whole_object_md5() -> None:
    """A one-part multipart object still has "-1": it must not pass for a PutObject's ETag."""
    data = b"only part"
    assert not same_etag(multipart_etag(records([data])), hashlib.md5(data).hexdigest())
    assert multipart_etag(records([data])).endswith('-1"')


def test_same_etag_ignores_quotes_and_case_but_not_the_digest() -> None:
    assert same_etag('"ABC"', "abc")
    assert same_etag('"0123-2"', '"0123-2"')
    assert not same_etag('"abc"', '"abd"')
    assert not same_etag('"abc-2"', '"abc-3"')
    assert not same_etag('"abc-2"', '"abc"')


@pytest.mark.parametrize(
    ("etag", "md5"),
    [
        (f'"{hashlib.md5(b"whole object").hexdigest()}"', True),  # PutObject, or rclone serve s3 multipart
        (hashlib.md5(b"unquoted").hexdigest().upper(), True),
        (multipart_etag(records([b"p1", b"p2"])), True),  # S3, MinIO, moto multipart: "-N"
        ('"opaque-server-id"', False),
        ('"' + "a" * 31 + '"', False),
        ('"' + "g" * 32 + '"', False),
        ('""', False),
        ("", False),
    ],
)
def test_is_md5_etag(etag: str, md5: bool) -> None:
    assert is_md5_etag(etag) is md5


def test_rclone_style_whole_object_md5_matches_only_the_whole_object() -> None:
    """`rclone serve s3` answers a multipart object with the MD5 of all its bytes: comparing it to
    the MD5-of-MD5s would fail a good upload, so callers pick the style by the "-N"."""
    chunks = [b"a" * 5 * MiB, b"tail"]
    whole = f'"{hashlib.md5(b"".join(chunks)).hexdigest()}"'
    assert is_md5_etag(whole) and "-" not in whole
    assert same_etag(whole, hashlib.md5(b"".join(chunks)).hexdigest())
    assert not same_etag(whole, multipart_etag(records(chunks)))


@pytest.mark.parametrize(
    ("etag", "encryption", "customer_key", "expected"),
    [
        ('"' + "a" * 32 + '"', None, False, True),
        ('"' + "a" * 32 + '"', "AES256", False, True),  # SSE-S3 keeps the MD5
        ('"' + "a" * 32 + '"', "aws:kms", False, False),
        ('"' + "a" * 32 + '"', "aws:kms:dsse", False, False),
        ('"' + "a" * 32 + '"', None, True, False),  # SSE-C
        ('"' + "a" * 32 + '-2"', None, False, False),  # multipart: an MD5 of MD5s, not of the bytes
        ('"opaque"', None, False, False),
    ],
)
def test_is_body_md5(etag: str, encryption: str | None, customer_key: bool, expected: bool) -> None:
    assert is_body_md5(etag, encryption=encryption, customer_key=customer_key) is expected
