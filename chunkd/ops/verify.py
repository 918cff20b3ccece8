"""`chunkd verify`: does an uploaded object still match its manifest, and does the local file?

Read-only everywhere: HeadObject and GetObject on S3, one lookup in the checkpoint store, reads of
the local file. Every comparison becomes a `Check`; the caller decides how to print the `Report`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

from chunkd.config import Settings
from chunkd.errors import (
    EndpointError,
    StoreError,
    TransferError,
    endpoint_error,
)
from chunkd.intake.paths import relpath_of
from chunkd.model.etags import is_md5_etag, multipart_etag, same_etag
from chunkd.model.keys import render_key
from chunkd.model.manifest import (
    MAX_MANIFEST_BYTES,
    Manifest,
    ManifestError,
    manifest_key,
    parse_manifest,
)
from chunkd.model.node import Scope
from chunkd.model.states import PartRecord, StreamRecord
from chunkd.observe.logs import redact
from chunkd.ops.attributecheck import attribute_mismatches
from chunkd.pipeline.partreader import READ_SIZE
from chunkd.s3.client import S3Target
from chunkd.s3.retry import RetryPolicy
from chunkd.s3.uploader import ObjectInfo, SmallObject, Uploader
from chunkd.store import CheckpointStore, open_store

T = TypeVar("T")


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str


@dataclass(frozen=True)
class Subject:
    """What the user pointed at: the object key, and the local file if they named one."""

    key: str
    local_path: Path | None = None
    found_by: str = "object key"


@dataclass
class Report:
    bucket: str
    key: str
    deep: bool = False
    found_by: str = "object key"
    local_path: Path | None = None
    checks: list[Check] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}/{self.key}"

    @property
    def failed(self) -> list[Check]:
        return [check for check in self.checks if not check.ok]

    @property
    def ok(self) -> bool:
        return bool(self.checks) and not self.failed

    def to_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "bucket": self.bucket,
            "ok": self.ok,
            "checks": [{"name": c.name, "ok": c.ok, "detail": c.detail} for c in self.checks],
            "deep": self.deep,
            "local_path": str(self.local_path) if self.local_path else None,
        }

    def render_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def render_text(self) -> str:
        width = max(len(check.name) for check in self.checks)
        lines = [f"{self.url} ({self.found_by})", f"local file: {self.local_path or 'none'}"]
        lines += [f"{'PASS' if c.ok else 'FAIL'}  {c.name:<{width}}  {c.detail}" for c in self.checks]
        if self.ok:
            if not self.deep:
                lines.append("note: the object's bytes were not read; --deep compares their SHA-256 too")
            lines.append(f"OK: {self.url} verified")
        else:
            names = ", ".join(c.name for c in self.failed)
            lines.append(f"FAILED: {len(self.failed)} check(s) failed ({names})")
        return "\n".join(lines)


# -- the checks (pure) -------------------------------------------------------------------------


def check_size(name: str, actual: int, expected: int) -> Check:
    if actual == expected:
        return Check(name, True, f"{actual} bytes")
    return Check(name, False, f"{actual} bytes, manifest says {expected}")


def check_etag(
    actual: str, expected: str, parts: Sequence[PartRecord] = (), *, object_md5: str | None = None,
    object_differs: bool = False,
) -> Check:
    """The object's ETag against the manifest's, in either style a multipart object has.

    The manifest keeps what Complete answered: the MD5 of the part MD5s with "-N" (S3, MinIO,
    Ceph, moto, and `rclone serve s3`'s Complete), or for manifests written before, what HeadObject
    answered. `rclone serve s3` answers HeadObject with the whole object's MD5, which no manifest
    field holds: it is compared with `object_md5`, the MD5 of bytes that matched the manifest's
    SHA-256 (the object's with --deep, or the local file's); it fails when the object's bytes were
    read and did not match (`object_differs`), and passes unread otherwise.
    """
    if same_etag(actual, expected):
        return Check("etag", True, actual)
    if not is_whole_object_md5(actual, expected, parts):
        return Check("etag", False, f"object {actual} != manifest {expected}")
    if len(parts) == 1:
        whole = parts[0].etag  # one part: the whole object's MD5 is the part's
    elif object_differs:
        return Check("etag", False, f"object {actual}: its bytes are not the ones the manifest describes")
    elif object_md5 is None:
        return Check("etag", True, f"{actual} (the whole object's MD5; the manifest holds its part MD5s, "
                                   f"{expected}: --deep compares it with the object's bytes)")
    else:
        whole = object_md5
    if same_etag(actual, whole):
        return Check("etag", True, actual)
    return Check("etag", False, f"object {actual} != MD5 {whole.strip(chr(34))} of the bytes the manifest describes")


def is_whole_object_md5(actual: str, expected: str, parts: Sequence[PartRecord]) -> bool:
    """An object ETag that may be the whole object's MD5 where the manifest holds the MD5 of its
    part MD5s ("-N", and the parts' own MD5s agree with it)."""
    if "-" in actual or not is_md5_etag(actual) or "-" not in expected or not is_md5_etag(expected):
        return False
    return bool(parts) and all(is_md5_etag(p.etag) and "-" not in p.etag for p in parts) and same_etag(
        expected, multipart_etag(parts)
    )


def check_sha256(name: str, actual: str, expected: str) -> Check:
    if actual == expected:
        return Check(name, True, actual)
    return Check(name, False, f"{actual} != manifest {expected}")


def check_parts(parts: Sequence[PartRecord], size: int) -> Check:
    """The manifest's parts must tile [0, size) exactly, numbered 1..N."""
    offset = 0
    for index, part in enumerate(parts, start=1):
        number, start, length = part.number, part.offset, part.size
        if number != index:
            return Check("parts", False, f"part #{index} is numbered {number}")
        if start != offset:
            return Check("parts", False, f"part {number} starts at {start}, previous part ended at {offset}")
        if length < 0:
            return Check("parts", False, f"part {number} has negative size {length}")
        offset += length
    if offset != size:
        return Check("parts", False, f"{len(parts)} part(s) cover {offset} bytes, manifest size is {size}")
    return Check("parts", True, f"{len(parts)} part(s) tile [0, {size})")


def digests_of(chunks: Iterable[bytes], *, md5: bool) -> tuple[str, str | None]:
    """SHA-256, and the MD5 when asked for (an object whose ETag is its whole MD5)."""
    sha = hashlib.sha256()
    md5_hash = hashlib.md5(usedforsecurity=False) if md5 else None
    for chunk in chunks:
        sha.update(chunk)
        if md5_hash is not None:
            md5_hash.update(chunk)
    return sha.hexdigest(), md5_hash.hexdigest() if md5_hash is not None else None


def read_chunks(handle: BinaryIO) -> Iterator[bytes]:
    return iter(lambda: handle.read(READ_SIZE), b"")


# -- finding the object ------------------------------------------------------------------------


def resolve(
    argument: str, settings: Settings, *, store_opener: Callable[[str], CheckpointStore] = open_store
) -> Subject:
    """An existing local path names a file whose key we look up; anything else is a key."""
    path = Path(argument)
    if not path.exists():
        return Subject(key=argument)
    if not path.is_file():
        raise EndpointError(f"{argument}: not a regular file; verify takes one file or one object key", exit_code=2)
    local = path.parent.resolve() / path.name  # keep a symlink's own name, as the watcher does
    # Outside the drop folder, `chunkd upload PATH` records the file name as the relpath.
    relpath = relpath_of(settings.input_dir.resolve(), local) or local.name
    record = _find_stream(settings.state_url, relpath, store_opener, settings.scope)
    if record is not None:
        found = f"key found in the checkpoint store: stream {record.id}, {record.state.value}, relpath {relpath!r}"
        return Subject(record.key, local, found)
    key = render_key(settings.key_template, relpath, node=settings.node_name)
    return Subject(key, local, f"no stream recorded for {relpath!r}; key from CHUNKD_KEY_TEMPLATE")


def _find_stream(
    url: str, relpath: str, store_opener: Callable[[str], CheckpointStore], scope: Scope
) -> StreamRecord | None:
    # Opening an SQLite store creates it; a read-only command must not leave a fresh one behind.
    if url.startswith("sqlite:///") and not Path(url[len("sqlite:///"):]).exists():
        return None
    try:
        store = store_opener(url)
        try:
            return store.find_by_relpath(relpath, scope=scope)
        finally:
            store.close()
    except StoreError as exc:
        raise EndpointError(f"cannot reach the state store {redact(url)}: {exc}") from None


# -- talking to S3 -----------------------------------------------------------------------------


class _Bucket:
    """The three reads verification needs, through the gateway, failures turned into one line."""

    def __init__(self, uploader: Uploader, bucket: str, where: str) -> None:
        self._uploader = uploader
        self.bucket = bucket
        self._where = where

    def _ask(self, fn: Callable[[], T], key: str) -> T:
        try:
            return fn()
        except TransferError as exc:
            raise endpoint_error(exc, bucket=self.bucket, where=self._where, what=f"s3://{self.bucket}/{key}") from None

    def read_small(self, key: str, limit: int) -> SmallObject | None:
        return self._ask(lambda: self._uploader.get_small_object(self.bucket, key, limit=limit), key)

    def head(self, key: str) -> ObjectInfo | None:
        return self._ask(lambda: self._uploader.head(self.bucket, key), key)

    def digests(self, key: str, *, md5: bool) -> tuple[str, str | None] | None:
        """SHA-256 (and MD5 if asked), streamed; a dropped connection restarts the hashes from the
        first byte. None: deleted since HeadObject."""
        return self._ask(lambda: self._uploader.stream(self.bucket, key, lambda c: digests_of(c, md5=md5)), key)


# -- putting it together -----------------------------------------------------------------------


def verify(settings: Settings, target: S3Target, argument: str, *, deep: bool) -> Report:
    subject = resolve(argument, settings)
    uploader = Uploader.connect(target, RetryPolicy.quick(), max_pool_connections=2)
    bucket = _Bucket(uploader, settings.bucket, target.endpoint_url or "AWS S3")
    report = Report(settings.bucket, subject.key, deep=deep, found_by=subject.found_by, local_path=subject.local_path)
    expected = _check_manifest(report, bucket, manifest_key(subject.key, settings.manifest_suffix))
    head = bucket.head(subject.key)
    if head is None:
        report.checks.append(Check("object", False, f"no object at {report.url}"))
    else:
        report.checks.append(Check("object", True, f"HeadObject: {head.size} bytes, ETag {head.etag}"))
    if expected is None:
        return report
    report.local_path = _local_file(subject, expected, settings)
    whole_md5 = head is not None and is_whole_object_md5(head.etag, expected.etag, expected.parts)
    object_digests = _object_digests(report, bucket, expected, md5=whole_md5) if deep and head is not None else None
    local = _check_local(report.local_path, expected, md5=whole_md5) if report.local_path is not None else None
    object_md5 = object_digests[1] if object_digests else local[1] if local else None
    if head is not None:
        same = [
            check_size("size", head.size, expected.size),
            check_etag(head.etag, expected.etag, expected.parts, object_md5=object_md5,
                       object_differs=object_digests is not None and not object_digests[0].ok),
        ]
        report.checks += same
        if expected.attributes is not None and all(check.ok for check in same):
            _check_attributes(report, expected.attributes, head)
    report.checks.append(check_parts(expected.parts, expected.size))
    if object_digests is not None:
        report.checks.append(object_digests[0])
    if local is not None:
        report.checks += local[0]
    return report


def _check_attributes(report: Report, recorded: dict[str, Any], head: ObjectInfo) -> None:
    """A failed "attributes" check naming each field HeadObject answers otherwise than the
    manifest; when they agree, the "object" check says which were compared. Only for the object
    the manifest describes: one whose bytes were replaced already failed, its attributes with it."""
    mismatches, compared = attribute_mismatches(recorded, head.attributes)
    if mismatches:
        report.checks.append(Check("attributes", False, "; ".join(mismatches)))
    elif compared:
        at = next(index for index, check in enumerate(report.checks) if check.name == "object")
        detail = f"{report.checks[at].detail}; attributes as in the manifest ({', '.join(compared)})"
        report.checks[at] = Check("object", True, detail)


def _object_digests(report: Report, bucket: _Bucket, expected: Manifest, *, md5: bool) -> tuple[Check, str | None]:
    """The "object_sha256" check, and the object's MD5 (if asked) when its SHA-256 matched."""
    digests = bucket.digests(report.key, md5=md5)
    if digests is None:
        return Check("object_sha256", False, "object disappeared before it could be read"), None
    check = check_sha256("object_sha256", digests[0], expected.sha256)
    return check, digests[1] if check.ok else None


def _check_manifest(report: Report, bucket: _Bucket, key: str) -> Manifest | None:
    """The "manifest" check, then a "manifest integrity" failure if its bytes are not the ones
    the server's ETag vouches for (damaged in storage or on the way back)."""
    where = f"s3://{bucket.bucket}/{key}"
    found = bucket.read_small(key, MAX_MANIFEST_BYTES)
    if found is None:
        report.checks.append(Check("manifest", False, f"no manifest at {where}"))
        return None
    expected = _parse_manifest(report, found.data, where)
    damaged = check_manifest_integrity(found, where, MAX_MANIFEST_BYTES)
    if damaged is not None:
        report.checks.append(damaged)
    return expected


def check_manifest_integrity(found: SmallObject, where: str, limit: int) -> Check | None:
    """A failed check when the manifest's ETag is the MD5 of what the server stored and the bytes
    read hash to another; None when they agree or the ETag proves nothing (not an MD5, or the
    manifest is over `limit` and was not read whole)."""
    if not found.etag_is_md5 or len(found.data) > limit:
        return None
    md5 = hashlib.md5(found.data, usedforsecurity=False).hexdigest()
    if same_etag(found.etag, md5):
        return None
    return Check("manifest integrity", False, f"{where}: ETag {found.etag} != MD5 {md5} of the bytes read")


def _parse_manifest(report: Report, raw: bytes, where: str) -> Manifest | None:
    try:
        expected = parse_manifest(raw)
    except ManifestError as exc:
        report.checks.append(Check("manifest", False, f"{where}: {exc}"))
        return None
    if expected.key != report.key:
        report.checks.append(Check("manifest", False, f"{where} describes key {expected.key!r}"))
        return None
    stream = f", stream {expected.stream_id}" if expected.stream_id else ""
    report.checks.append(Check("manifest", True, f"{where}{stream}"))
    return expected


def _local_file(subject: Subject, expected: Manifest, settings: Settings) -> Path | None:
    if subject.local_path is not None:
        return subject.local_path
    if expected.source.relpath is None:
        return None
    candidate = settings.input_dir / expected.source.relpath
    return candidate if candidate.is_file() else None


def _check_local(path: Path, expected: Manifest, *, md5: bool = False) -> tuple[list[Check], str | None]:
    """The local file's checks, and its MD5 (if asked) when its SHA-256 matched the manifest."""
    try:
        with open(path, "rb") as handle:
            size = handle.seek(0, 2)
            handle.seek(0)
            sha256, md5_hex = digests_of(read_chunks(handle), md5=md5)
    except OSError as exc:
        return [Check("local_file", False, f"cannot read {path}: {exc.strerror}")], None
    checks = [check_size("local_size", size, expected.size), check_sha256("local_sha256", sha256, expected.sha256)]
    return checks, md5_hex if all(check.ok for check in checks) else None
