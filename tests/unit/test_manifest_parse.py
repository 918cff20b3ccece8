"""Reading a manifest back: what build_manifest writes parses to the same facts, and a document
that cannot be trusted raises ManifestError saying why."""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime
from typing import Any

import pytest

from chunkd import __version__
from chunkd.model.manifest import (
    MAX_MANIFEST_BYTES,
    Manifest,
    ManifestError,
    build_manifest,
    encode,
    iso_time,
    parse_manifest,
)
from chunkd.model.states import PartRecord, StreamRecord, StreamState

MiB = 1024 * 1024
T0 = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC).timestamp()
PARTS = [
    PartRecord(number=1, offset=0, size=5 * MiB, etag='"aa"', sha256="1" * 64),
    PartRecord(number=2, offset=5 * MiB, size=100, etag='"bb"', sha256="2" * 64),
]


def stream(**overrides: Any) -> StreamRecord:
    fields: dict[str, Any] = {
        "id": "s1", "relpath": "cam/ünïcode clip.mp4", "source_path": "/in/cam/ünïcode clip.mp4",
        "bucket": "videos", "key": "raw/cam/ünïcode clip.mp4", "schedule": {"base": 5 * MiB, "fixed": False},
        "state": StreamState.COMPLETED, "size": 5 * MiB + 100, "mtime": T0 - 60, "sha256": "F" * 64,
        "discovered_at": T0, "first_byte_at": T0 + 1.5,
    }
    return StreamRecord(**{**fields, **overrides})


def document(**overrides: Any) -> dict[str, Any]:
    built = build_manifest(
        stream(origin={"url": "https://example.com/v", "title": "A clip"}), PARTS, etag='"abc-2"',
        hostname="edge-01", completed_at=T0 + 10, upload="multipart", media={"valid": True}, media_error=None,
    )
    return {**built, **overrides}


def raw(doc: Any) -> bytes:
    return json.dumps(doc).encode()


# -- round trip ---------------------------------------------------------------------------------


def test_what_build_manifest_writes_parses_back_to_the_same_facts() -> None:
    manifest = parse_manifest(encode(document()))

    assert manifest == Manifest(
        key="raw/cam/ünïcode clip.mp4", size=5 * MiB + 100, sha256="f" * 64, etag='"abc-2"', parts=tuple(PARTS),
        source=manifest.source, stream_id="s1", bucket="videos", upload="multipart", dedup_of=None,
        part_schedule={"base": 5 * MiB, "fixed": False}, media={"valid": True}, media_error=None,
        timestamps=document()["timestamps"], chunkd_version=__version__,
    )
    assert manifest.source.relpath == "cam/ünïcode clip.mp4"
    assert manifest.source.hostname == "edge-01"
    assert manifest.source.mtime == iso_time(T0 - 60)
    assert manifest.source.origin == {"url": "https://example.com/v", "title": "A clip"}


def test_every_field_build_manifest_writes_has_a_place_in_the_dataclass() -> None:
    """A field added to the document but not to Manifest would be written and never read."""
    fields = {f.name for f in dataclasses.fields(Manifest)}
    assert set(document()) - {"schema_version"} == fields


def test_a_single_put_and_a_dedup_copy_round_trip() -> None:
    single = build_manifest(stream(first_byte_at=None), [], etag='"e"', hostname="h", completed_at=T0, upload="single")
    assert parse_manifest(encode(single)).parts == ()
    copy = build_manifest(
        stream(dedup_of="raw/original.mp4"), [PartRecord(1, 0, 5 * MiB + 100, "", "f" * 64)], etag='"e"',
        hostname="h", completed_at=T0, upload="copy",
    )
    parsed = parse_manifest(encode(copy))
    assert (parsed.dedup_of, parsed.upload, parsed.parts[0].etag) == ("raw/original.mp4", "copy", "")


def test_fields_an_older_manifest_lacks_take_their_defaults() -> None:
    bare = {"schema_version": 1, "key": "k", "size": 3, "etag": '"e"', "sha256": "ab", "parts": []}
    manifest = parse_manifest(raw(bare))
    assert manifest.source.relpath is None and manifest.source.origin == {}
    assert (manifest.stream_id, manifest.bucket, manifest.media, manifest.part_schedule) == (None, None, None, {})


def test_an_empty_relpath_is_no_relpath() -> None:
    doc = document()
    doc["source"]["relpath"] = ""
    assert parse_manifest(raw(doc)).source.relpath is None


# -- malformed documents ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"{not json", "not valid JSON"),
        (b"\xff\xfe", "not valid JSON"),
        (raw([1, 2]), "not a JSON object"),
        (raw(document(schema_version=2)), "schema_version 2, this chunkd reads 1"),
        (raw(document(schema_version=True)), "schema_version True"),
        (raw({k: v for k, v in document().items() if k != "schema_version"}), "schema_version None"),
        (raw({k: v for k, v in document().items() if k != "sha256"}), "missing or malformed field(s): sha256"),
        (raw(document(size="5")), "missing or malformed field(s): size"),
        (raw(document(size=True)), "missing or malformed field(s): size"),
        (raw(document(key=None, etag=7, parts={})), "missing or malformed field(s): key, etag, parts"),
        (raw(document(stream_id=17)), "malformed field(s): stream_id"),
        (raw(document(source="cam/clip.mp4")), "malformed field(s): source"),
        (raw(document(media=[], timestamps="x")), "malformed field(s): media, timestamps"),
    ],
)
def test_a_malformed_document_says_what_is_wrong(data: bytes, message: str) -> None:
    with pytest.raises(ManifestError) as caught:
        parse_manifest(data)
    assert message in str(caught.value)


@pytest.mark.parametrize(
    "part",
    [
        {"number": 2, "offset": 5 * MiB, "size": 100, "etag": '"bb"'},  # no sha256
        {"number": "2", "offset": 5 * MiB, "size": 100, "etag": '"bb"', "sha256": "2" * 64},
        {"number": 2, "offset": 5 * MiB, "size": 1.5, "etag": '"bb"', "sha256": "2" * 64},
        {"number": 2, "offset": False, "size": 100, "etag": '"bb"', "sha256": "2" * 64},
        {"number": 2, "offset": 5 * MiB, "size": 100, "etag": None, "sha256": "2" * 64},
        [2, 5 * MiB, 100],
    ],
)
def test_a_malformed_part_is_named_by_its_place(part: Any) -> None:
    doc = document()
    doc["parts"][1] = part
    with pytest.raises(ManifestError, match=r"malformed part #2 in parts\[\]"):
        parse_manifest(raw(doc))


def test_a_malformed_source_field_is_named() -> None:
    doc = document()
    doc["source"]["mtime"] = 1714564800
    with pytest.raises(ManifestError, match=r"source\.mtime"):
        parse_manifest(raw(doc))


def test_parts_that_do_not_tile_the_object_still_parse() -> None:
    """Meaning is the reader's question: verify reports it as its own check."""
    doc = document()
    doc["parts"][1]["offset"] += 1
    assert parse_manifest(raw(doc)).parts[1].offset == 5 * MiB + 1


def test_a_document_over_the_limit_is_not_a_manifest() -> None:
    padded = encode(document()) + b" " * (MAX_MANIFEST_BYTES + 1)
    with pytest.raises(ManifestError, match="not a manifest"):
        parse_manifest(padded)
    assert isinstance(ManifestError("x"), ValueError)


def test_parts_sent_with_content_md5_carry_their_md5_instead_of_a_sha256() -> None:
    """Where Content-MD5 was the check the server verified, no per-part SHA-256 was computed: the
    part carries `md5` alone, and reads back as it was written."""
    parts = [dataclasses.replace(part, sha256="", md5=f"{part.number:032x}") for part in PARTS]
    doc = {**document(), "parts": [part.to_dict() for part in parts]}
    assert all("sha256" not in item and "md5" in item for item in doc["parts"])
    assert parse_manifest(encode(doc)).parts == tuple(parts)


def test_the_poster_frame_round_trips_and_an_older_manifest_has_none() -> None:
    named = build_manifest(
        stream(thumbnail_key="raw/cam/ünïcode clip.mp4.thumb.jpg"), PARTS, etag='"abc-2"', hostname="h",
        completed_at=T0, upload="multipart",
    )
    failed = build_manifest(stream(), PARTS, etag='"abc-2"', hostname="h", completed_at=T0, upload="multipart",
                            thumbnail_error="ffmpeg timed out after 30s")
    assert (named["thumbnail_key"], named["thumbnail_error"]) == ("raw/cam/ünïcode clip.mp4.thumb.jpg", None)
    assert parse_manifest(encode(named)).thumbnail_key == "raw/cam/ünïcode clip.mp4.thumb.jpg"
    parsed = parse_manifest(encode(failed))
    assert (parsed.thumbnail_key, parsed.thumbnail_error) == (None, "ffmpeg timed out after 30s")
    older = {k: v for k, v in document().items() if k not in ("thumbnail_key", "thumbnail_error")}
    assert (parse_manifest(raw(older)).thumbnail_key, parse_manifest(raw(older)).thumbnail_error) == (None, None)
    with pytest.raises(ManifestError, match=r"malformed field\(s\): thumbnail_key, thumbnail_error"):
        parse_manifest(raw(document(thumbnail_key=7, thumbnail_error=["x"])))
