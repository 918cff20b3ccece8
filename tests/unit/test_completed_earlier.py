"""Recognising an object a crash left completed but unrecorded, for both kinds of ETag."""

from __future__ import annotations

import hashlib

from chunkd.model.etags import multipart_etag
from chunkd.model.states import PartRecord
from chunkd.pipeline.objectcheck import completed_earlier
from chunkd.s3.uploader import ObjectInfo

FIRST, SECOND = b"a" * 10, b"b" * 6


def parts() -> list[PartRecord]:
    return [
        PartRecord(1, 0, 10, f'"{hashlib.md5(FIRST).hexdigest()}"', "0" * 64),
        PartRecord(2, 10, 6, f'"{hashlib.md5(SECOND).hexdigest()}"', "0" * 64),
    ]


def whole() -> str:
    return hashlib.md5(FIRST + SECOND).hexdigest()


def test_multipart_etag_is_checked_against_the_parts() -> None:
    assert completed_earlier(ObjectInfo(16, multipart_etag(parts())), parts())
    assert not completed_earlier(ObjectInfo(16, '"' + "0" * 32 + '-2"'), parts())


def test_whole_object_md5_etag_is_checked_against_the_local_file() -> None:
    assert completed_earlier(ObjectInfo(16, f'"{whole()}"'), parts(), whole)
    assert not completed_earlier(ObjectInfo(16, f'"{"1" * 32}"'), parts(), whole)
    assert not completed_earlier(ObjectInfo(16, f'"{whole()}"'), parts())  # nothing to compare with


def test_size_must_match_and_a_missing_object_is_not_completed() -> None:
    assert not completed_earlier(ObjectInfo(15, multipart_etag(parts())), parts())
    assert not completed_earlier(None, parts(), whole)
    assert completed_earlier(ObjectInfo(16, '"not-an-md5"'), parts())  # unknown ETag style: size only
