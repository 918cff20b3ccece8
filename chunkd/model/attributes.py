"""What an object is besides its bytes: Content-Type, Cache-Control, Content-Disposition, user
metadata, tags, storage class, server-side encryption and a canned ACL (CHUNKD_CONTENT_TYPE, …).

They are fixed once per object, when its upload is created (CreateMultipartUpload, the single PUT
or the dedup copy), from the settings of that moment; the stream's record keeps them, so an upload
resumed after a crash, or created again, carries the ones it started with even if the settings
changed since. The manifest beside the object gets the same encryption, but is always
`application/json` in the STANDARD class without tags, metadata or ACL.

Parsing and validating the settings lives here too (chunkd.config calls it), so the rules S3 will
apply are checked at start, not per file.
"""

from __future__ import annotations

import mimetypes
import re
from dataclasses import asdict, dataclass, field
from pathlib import PurePosixPath
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode

from chunkd.model.keys import ATTRIBUTE_FIELDS, check_fields, template_values

# Video types first: mimetypes knows few of them, and some systems map .ts to Qt translations.
VIDEO_TYPES = {
    ".mp4": "video/mp4", ".mov": "video/quicktime", ".mkv": "video/x-matroska", ".webm": "video/webm",
    ".m4v": "video/x-m4v", ".ts": "video/mp2t", ".avi": "video/x-msvideo",
}
FALLBACK_TYPE = "application/octet-stream"
STORAGE_CLASSES = (
    "STANDARD", "REDUCED_REDUNDANCY", "STANDARD_IA", "ONEZONE_IA", "INTELLIGENT_TIERING", "GLACIER",
    "DEEP_ARCHIVE", "OUTPOSTS", "GLACIER_IR", "SNOW", "EXPRESS_ONEZONE",
)
SSE_MODES = ("AES256", "aws:kms", "aws:kms:dsse")
CANNED_ACLS = (
    "private", "public-read", "public-read-write", "authenticated-read", "aws-exec-read",
    "bucket-owner-read", "bucket-owner-full-control",
)
MAX_TAGS, MAX_TAG_KEY, MAX_TAG_VALUE = 10, 128, 256  # S3's limits on object tags
MAX_METADATA_BYTES = 2048  # S3's limit on user metadata, names and values together
_TAG_KEY_RE = re.compile(r"^[\w +\-=.:/@]+$")  # S3: letters, digits, spaces and + - = . _ : / @
_HEADER_NAME_RE = re.compile(r"^[A-Za-z0-9!#$&'*+.^_`|~-]+$")  # an HTTP token: x-amz-meta-<name>
_CONTENT_TYPE_RE = re.compile(r"^[\w.+-]+/[\w.+-]+(\s*;.*)?$")
# Header values go out as ASCII: printable ASCII as it is, anything else as %XX of its UTF-8.
_HEADER_SAFE = "".join(chr(code) for code in range(0x20, 0x7F))

Pairs = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class ObjectAttributes:
    """The attributes of one object, rendered: what its Create request carries."""

    content_type: str | None = None
    cache_control: str | None = None
    content_disposition: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    storage_class: str | None = None
    sse: str | None = None
    sse_kms_key_id: str | None = None
    sse_bucket_key: bool | None = None
    acl: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """For the stream's record and the manifest: every field, unset ones as null."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ObjectAttributes:
        """Unknown keys are ignored, so records written by a newer version still load."""
        return cls(**{name: value for name, value in data.items() if name in cls.__dataclass_fields__})

    def encryption(self) -> ObjectAttributes:
        """What the manifest and the start-up probes share with the object: its encryption alone."""
        return ObjectAttributes(sse=self.sse, sse_kms_key_id=self.sse_kms_key_id, sse_bucket_key=self.sse_bucket_key)

    def request_fields(self) -> dict[str, Any]:
        """boto3 arguments of PutObject, CreateMultipartUpload and CopyObject for these attributes."""
        fields: dict[str, Any] = {
            "ContentType": self.content_type, "CacheControl": self.cache_control,
            "ContentDisposition": self.content_disposition, "StorageClass": self.storage_class,
            "ServerSideEncryption": self.sse, "SSEKMSKeyId": self.sse_kms_key_id,
            "BucketKeyEnabled": self.sse_bucket_key, "ACL": self.acl,
            "Metadata": dict(self.metadata) or None, "Tagging": urlencode(self.tags) if self.tags else None,
        }
        return {name: value for name, value in fields.items() if value is not None}


@dataclass(frozen=True)
class AttributeSettings:
    """The attribute settings as configured (templates not yet rendered); see chunkd.config."""

    content_type: str = "auto"
    cache_control: str | None = None
    content_disposition: str | None = None
    metadata: Pairs = ()
    tags: Pairs = ()
    storage_class: str | None = None
    sse: str | None = None
    sse_kms_key_id: str | None = None
    sse_bucket_key: bool | None = None
    acl: str | None = None

    def render(self, *, key: str, relpath: str, hostname: str, now: float, node: str | None = None) -> ObjectAttributes:
        """The attributes of the object at `key` from the file at `relpath`. ValueError (naming the
        setting) when a rendered value breaks S3's limits: a path too long for a tag value."""
        values = {**template_values(relpath, now=now, hostname=hostname, node=node), "key": key}
        metadata = {name: _header(value.format(**values)) for name, value in self.metadata}
        tags = {name: value.format(**values) for name, value in self.tags}
        check_metadata_size(metadata)
        for name, value in tags.items():
            if len(value) > MAX_TAG_VALUE:
                raise ValueError(f"CHUNKD_TAGS: tag {name!r} is {len(value)} characters for this file; "
                                 f"S3 allows {MAX_TAG_VALUE}")
        disposition = self.content_disposition
        return ObjectAttributes(
            content_type=content_type_for(key) if self.content_type == "auto" else self.content_type,
            cache_control=self.cache_control,
            content_disposition=_header(disposition.format(**values)) if disposition else None,
            metadata=metadata, tags=tags, storage_class=self.storage_class, sse=self.sse,
            sse_kms_key_id=self.sse_kms_key_id, sse_bucket_key=self.sse_bucket_key, acl=self.acl,
        )

    def encryption(self) -> ObjectAttributes:
        return ObjectAttributes(sse=self.sse, sse_kms_key_id=self.sse_kms_key_id, sse_bucket_key=self.sse_bucket_key)


def content_type_for(key: str) -> str:
    """The type `aws s3 cp` would send for this key, with video types known everywhere."""
    suffix = PurePosixPath(key).suffix.lower()
    if suffix in VIDEO_TYPES:
        return VIDEO_TYPES[suffix]
    guessed, _ = mimetypes.guess_type(f"file{suffix}", strict=False) if suffix else (None, None)
    return guessed or FALLBACK_TYPE


def _header(value: str) -> str:
    return quote(value, safe=_HEADER_SAFE)


def check_metadata_size(metadata: dict[str, str]) -> None:
    size = sum(len(name.encode()) + len(value.encode()) for name, value in metadata.items())
    if size > MAX_METADATA_BYTES:
        raise ValueError(f"CHUNKD_METADATA: {size} bytes of user metadata; S3 allows {MAX_METADATA_BYTES}")


# -- parsing the settings (chunkd.config) ---------------------------------------------------------


def parse_content_type(text: str) -> str:
    text = str(text).strip()
    if text.lower() == "auto" or not text:
        return "auto"
    if not _CONTENT_TYPE_RE.match(text):
        raise ValueError(f"not a media type: {text!r} (examples: auto, video/mp4)")
    return text


def parse_pairs(text: str | Pairs | dict[str, Any]) -> Pairs:
    """'k=v&k2=v2' (S3's query form, %-escapes allowed) or a TOML table -> (("k", "v"), ("k2", "v2"))."""
    if isinstance(text, dict):
        return tuple((str(name), str(value)) for name, value in text.items())
    if isinstance(text, tuple):
        return text
    try:
        pairs = parse_qsl(str(text), keep_blank_values=True, strict_parsing=bool(str(text).strip()))
    except ValueError:
        raise ValueError(f"not key=value pairs separated by '&': {text!r}") from None
    names = [name for name, _ in pairs]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ValueError(f"{', '.join(duplicates)} given more than once")
    return tuple(pairs)


def parse_tags(text: str | Pairs | dict[str, Any]) -> Pairs:
    """Object tags, checked against S3's limits; values may be templates ({relpath}, {hostname}, …)."""
    tags = parse_pairs(text)
    if len(tags) > MAX_TAGS:
        raise ValueError(f"{len(tags)} tags; S3 allows at most {MAX_TAGS} per object")
    for name, value in tags:
        if not name or len(name) > MAX_TAG_KEY or not _TAG_KEY_RE.match(name):
            raise ValueError(f"tag key {name!r}: 1-{MAX_TAG_KEY} of letters, digits, spaces and + - = . _ : / @")
        if len(value) > MAX_TAG_VALUE:
            raise ValueError(f"tag {name!r}: value over {MAX_TAG_VALUE} characters")
        check_fields(value, ATTRIBUTE_FIELDS)
    return tags


def parse_metadata(text: str | Pairs | dict[str, Any]) -> Pairs:
    """User metadata (x-amz-meta-<name>); values may be templates. S3 stores names in lower case."""
    metadata = tuple((name.lower(), value) for name, value in parse_pairs(text))
    for name, value in metadata:
        if not _HEADER_NAME_RE.match(name):
            raise ValueError(f"metadata name {name!r} cannot be an HTTP header name")
        check_fields(value, ATTRIBUTE_FIELDS)
    check_metadata_size(dict(metadata))
    return metadata


def parse_template(text: str | None) -> str | None:
    if text in (None, ""):
        return None
    check_fields(str(text), ATTRIBUTE_FIELDS)
    return str(text)


def parse_storage_class(text: str | None) -> str | None:
    if text in (None, ""):
        return None
    value = str(text).strip().upper()
    if value not in STORAGE_CLASSES:
        raise ValueError(f"unknown storage class {text!r}; one of {', '.join(STORAGE_CLASSES)}")
    return value


def parse_sse(text: str | None) -> str | None:
    if text in (None, "", "off", "none"):
        return None
    value = "AES256" if str(text).strip().upper() == "AES256" else str(text).strip().lower()
    if value not in SSE_MODES:
        raise ValueError(f"must be one of {', '.join(SSE_MODES)}, got {text!r}")
    return value


def parse_acl(text: str | None) -> str | None:
    if text in (None, "", "off"):
        return None
    value = str(text).strip().lower()
    if value not in CANNED_ACLS:
        raise ValueError(f"not a canned ACL: {text!r}; one of {', '.join(CANNED_ACLS)}")
    return value
