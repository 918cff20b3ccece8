"""What chunkd knows about the S3 server it talks to, decided once at start.

Three facts change what a body must carry and how an object is checked:
- whether the server refuses a body that does not hash to its signed SHA-256 (S3, MinIO, Ceph do;
  `rclone serve s3` and moto do not, so a body damaged on the way would be stored), and so whether
  parts are checked by their MD5 instead;
- where they are, whether the server answers each part with the MD5 of the bytes it stored as
  its ETag and lets a part be sent again (moto): chunkd then compares that answer with its own MD5,
  sends a part whose answer differs again, and leaves Content-MD5 off, which made the server hash
  every part twice (on a box the server shares with chunkd);
- the ETag style of a completed multipart object: MD5 of the part MD5s with "-N" (S3, MinIO, Ceph,
  moto) or the whole object's MD5 (`rclone serve s3`), which only a whole-file MD5 can check.
"""

from __future__ import annotations

import enum
import hashlib
import logging
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING

from botocore.exceptions import BotoCoreError

from chunkd.errors import ConfigError, TransferError
from chunkd.model.etags import same_etag

if TYPE_CHECKING:
    from chunkd.model.attributes import ObjectAttributes
    from chunkd.s3.uploader import Uploader

logger = logging.getLogger("chunkd.daemon")

PROBE_NAME = ".chunkd-probe-"


class EtagStyle(enum.Enum):
    PART_MD5S = "md5-of-part-md5s"  # "<md5 of the parts' MD5s>-<N>"
    WHOLE_MD5 = "whole-object-md5"  # `rclone serve s3`
    UNKNOWN = "unknown"  # not asked (the check it serves is off), or the answer was neither


@dataclass(frozen=True)
class ServerTraits:
    content_md5: bool = False  # parts are checked by their MD5 (sent UNSIGNED-PAYLOAD), not a signed SHA-256
    md5_header: bool = True  # that MD5 goes as Content-MD5; False: only the reply's ETag is compared with it
    etag_style: EtagStyle = EtagStyle.UNKNOWN


def probe_prefix(key_template: str) -> str:
    """Where every probe key starts: beside the objects (the key template's fixed folder), where a
    prefix-scoped key may write; `chunkd gc` lists it for probes a lost reply or a kill left."""
    folder = key_template.split("{", 1)[0].rpartition("/")[0]
    return f"{folder}/{PROBE_NAME}" if folder else PROBE_NAME


def probe_key(key_template: str) -> str:
    return f"{probe_prefix(key_template)}{uuid.uuid4().hex}"


def decide_traits(
    uploader: Uploader, bucket: str, *, content_md5: str, key_template: str, attributes: ObjectAttributes | None = None
) -> ServerTraits:
    """CHUNKD_CONTENT_MD5 on | off | auto (auto: MD5s only where signed hashes go unchecked, and
    Content-MD5 only where the reply's ETag is not the part's MD5). `attributes`: what the probe
    writes carry besides their bytes (the objects' encryption, which a bucket may demand)."""
    if content_md5 == "off":
        return ServerTraits(content_md5=False)
    if content_md5 == "auto" and not _needs_content_md5(uploader, bucket, probe_key(key_template), attributes):
        return ServerTraits(content_md5=False)
    part_md5, style = _probe_etags(uploader, bucket, probe_key(key_template), attributes)
    by_reply = content_md5 == "auto" and part_md5
    if by_reply:
        logger.info("the server answers each part with its MD5: chunkd compares it with its own and sends "
                    "Content-MD5 no more (CHUNKD_CONTENT_MD5=on to send it too)")
    return ServerTraits(content_md5=True, md5_header=not by_reply, etag_style=style)


def _needs_content_md5(uploader: Uploader, bucket: str, key: str, attributes: ObjectAttributes | None) -> bool:
    try:
        checked = uploader.checks_payload_hash(bucket, key, attributes=attributes)
    except (BotoCoreError, OSError) as exc:
        checked = None
        logger.debug("payload hash probe failed: %s", exc)
    if checked is False:
        logger.info("the server stores bodies that do not match their signed SHA-256: every part is checked by "
                    "its MD5 (CHUNKD_CONTENT_MD5=off to skip)")
    elif checked is None:
        logger.info("could not tell whether the server checks signed SHA-256s: every part is checked by its MD5")
    return checked is not True


def _probe_etags(
    uploader: Uploader, bucket: str, key: str, attributes: ObjectAttributes | None
) -> tuple[bool, EtagStyle]:
    """Complete a one-part upload of a few bytes: whether its answers can check parts instead of
    Content-MD5, and the completed object's ETag style. A failed probe proves nothing: (False,
    UNKNOWN), Content-MD5 on.

    Answers check parts only where the part's ETag is its MD5 and a part can be sent again with other
    bytes: a part answered with another MD5 is then simply sent again. `rclone serve s3` streams parts
    to disk as they arrive and cannot take one back (NotImplemented); a body cut short there (a client
    killed mid-part) broke the whole upload unless Content-MD5 made rclone check the part first.
    """
    try:
        probe = uploader.probe_multipart_etag(bucket, key, b"chunkd etag probe", attributes=attributes)
    except (TransferError, BotoCoreError, OSError) as exc:
        logger.debug("ETag probe failed: %s", exc)
        return False, EtagStyle.UNKNOWN
    answers_md5 = same_etag(probe.part_etag, hashlib.md5(probe.part_body, usedforsecurity=False).hexdigest())
    return answers_md5 and probe.replaced, etag_style_of(probe.etag, probe.part_body)


def etag_style_of(etag: str, body: bytes) -> EtagStyle:
    """The style of the ETag a server gave a one-part multipart object holding `body`."""
    digest = etag.strip('"').lower()
    part_md5 = hashlib.md5(body, usedforsecurity=False).digest()
    if digest == f"{hashlib.md5(part_md5, usedforsecurity=False).hexdigest()}-1":
        return EtagStyle.PART_MD5S
    if digest == hashlib.md5(body, usedforsecurity=False).hexdigest():
        return EtagStyle.WHOLE_MD5
    return EtagStyle.UNKNOWN


def check_tagging(uploader: Uploader, bucket: str, *, key_template: str, attributes: ObjectAttributes | None) -> None:
    """Tags are set again after Complete and after a copy (Ceph RGW drops those of a create), so a
    server must take PutObjectTagging as tagging: `rclone serve s3` stores the tagging XML as the
    object instead. With CHUNKD_TAGS set, chunkd asks once at start and refuses to run where tags
    cannot be kept, rather than upload objects without the tags (or destroy them)."""
    try:
        kept = uploader.keeps_bytes_when_tagged(bucket, probe_key(key_template), attributes=attributes)
    except (BotoCoreError, OSError) as exc:
        logger.debug("tagging probe failed: %s", exc)
        kept = None
    if kept is False:
        raise ConfigError("CHUNKD_TAGS", "this S3 server cannot tag objects (PutObjectTagging is refused or replaces "
                          "the object's bytes); unset CHUNKD_TAGS to upload to it")
    if kept is None:
        logger.warning("could not tell whether the server keeps object tags: CHUNKD_TAGS is applied as asked")

