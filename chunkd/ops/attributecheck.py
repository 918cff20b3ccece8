"""`chunkd verify`'s comparison of an object's attributes (Content-Type, Cache-Control, user
metadata, …) with the ones its manifest recorded when the upload was created: a copy-in-place
that replaced the metadata, or a tool that rewrote the type, leaves the bytes and often the ETag
alone, so only this comparison sees it.

Only what the manifest records and HeadObject reports is compared, because servers differ in
what they report: S3 omits the STANDARD storage class and Ceph RGW omits the class after a
multipart upload; `rclone serve s3` spells metadata names in title case and never reports tags;
S3 answers a KMS alias with the key's ARN. Tags are compared by count (HeadObject's TagCount,
which S3 omits for none and rclone never sends), not by value: that would cost a
GetObjectTagging, which `rclone serve s3` answers with a 500.
"""

from __future__ import annotations

from typing import Any

from chunkd.model.attributes import ObjectAttributes
from chunkd.s3.reads import HeadAttributes


def attribute_mismatches(recorded: dict[str, Any], found: HeadAttributes) -> tuple[list[str], list[str]]:
    """The lines naming each field that differs ("content_type: manifest 'video/mp4', object
    'text/plain'"), and the names of the fields that were compared."""
    expected = ObjectAttributes.from_dict(recorded)
    mismatches: list[str] = []
    compared: list[str] = []
    for name, want, got in (
        ("content_type", expected.content_type, found.content_type),
        ("cache_control", expected.cache_control, found.cache_control),
        ("content_disposition", expected.content_disposition, found.content_disposition),
    ):
        if want is not None:
            compared.append(name)
            if want != got:
                mismatches.append(_line(name, want, got))
    if expected.metadata:
        compared.append("metadata")
        mismatches += _metadata(expected.metadata, found.metadata)
    for name, want, got in _reported(expected, found):
        compared.append(name)
        if not _same(name, want, got):
            mismatches.append(_line(name, want, got))
    return mismatches, compared


def _reported(expected: ObjectAttributes, found: HeadAttributes) -> list[tuple[str, Any, Any]]:
    """The recorded fields the server has an answer for: silence is not a difference there."""
    fields: list[tuple[str, Any, Any]] = [
        ("storage_class", expected.storage_class, found.storage_class),
        ("sse", expected.sse, found.sse),
        ("sse_kms_key_id", expected.sse_kms_key_id, found.sse_kms_key_id),
        ("tags", len(expected.tags), found.tag_count),
    ]
    return [(name, want, got) for name, want, got in fields if want is not None and got is not None]


def _same(name: str, want: Any, got: Any) -> bool:
    if name != "sse_kms_key_id" or want == got:
        return bool(want == got)
    # A key id comes back as its ARN (arn:aws:kms:…:key/<id>); an alias cannot be compared.
    return str(want).startswith("alias/") or str(got).endswith(f"/{want}")


def _metadata(want: dict[str, str], got: dict[str, str]) -> list[str]:
    """Recorded names only (a server may add its own), compared in lower case."""
    found = {name.lower(): value for name, value in got.items()}
    return [_line(f"metadata {name}", value, found.get(name.lower()))
            for name, value in want.items() if found.get(name.lower()) != value]


def _line(name: str, want: Any, got: Any) -> str:
    shown = "none" if got is None else repr(got)
    if name == "tags":
        return f"tags: manifest {want} tag(s), object {got}"
    return f"{name}: manifest {want!r}, object {shown}"
