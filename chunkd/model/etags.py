"""What an S3 ETag can tell us about an object's bytes.

Two styles answer for a multipart object: S3, MinIO and moto give the MD5 of the part MD5s with
"-N" (N parts); `rclone serve s3` gives the whole object's MD5, as every server does for a single
PutObject. Other servers give something else again (an opaque id), which proves nothing.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from chunkd.model.states import PartRecord

_HEX = frozenset("0123456789abcdefABCDEF")


def multipart_etag(parts: Sequence[PartRecord]) -> str:
    """The ETag S3 gives a completed multipart object: MD5 of the part MD5s, dash, part count."""
    digests = b"".join(bytes.fromhex(part.etag.strip('"')) for part in parts)
    return f'"{hashlib.md5(digests, usedforsecurity=False).hexdigest()}-{len(parts)}"'


def same_etag(a: str, b: str) -> bool:
    """Servers differ in quoting and case; the digest is what counts."""
    return a.strip('"').lower() == b.strip('"').lower()


def is_md5_etag(etag: str) -> bool:
    """An MD5 of something (whole object, or part MD5s before "-N"), so comparing it proves bytes."""
    digest = etag.strip('"').split("-", 1)[0]
    return len(digest) == 32 and all(c in _HEX for c in digest)


# S3 gives an object encrypted with a KMS key or a customer's key an ETag that is not its MD5.
_OPAQUE_ENCRYPTION = ("aws:kms",)


def is_body_md5(etag: str, *, encryption: str | None = None, customer_key: bool = False) -> bool:
    """Whether a single PutObject's ETag is the MD5 of the bytes stored, so that comparing it with
    the MD5 of the bytes sent (or read back) proves them: 32 hex digits, no "-N", and not an object
    encrypted with SSE-KMS or SSE-C (`encryption`, `customer_key`: what the response said)."""
    if customer_key or (encryption or "").startswith(_OPAQUE_ENCRYPTION):
        return False
    digest = etag.strip('"')
    return len(digest) == 32 and all(c in _HEX for c in digest)
