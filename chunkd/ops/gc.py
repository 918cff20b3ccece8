"""`chunkd gc`: abort multipart uploads nobody owns, and expire old finished stream records.

An incomplete multipart upload costs storage until it is aborted. Ours are owned by a stream that
is still PENDING, UPLOADING or FINALIZING; any other upload in the bucket initiated more than
`hours` ago is an orphan (a crash before its id was recorded, a stream that failed without an
abort, another tool's leftovers) and is aborted, as an AbortIncompleteMultipartUpload lifecycle
rule would.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from botocore.client import BaseClient

from chunkd.errors import TransferError, UploadGoneError
from chunkd.model.states import StreamRecord, StreamState
from chunkd.s3.retry import RetryPolicy
from chunkd.s3.uploader import Uploader
from chunkd.store import StreamLedger

LIVE = (StreamState.PENDING, StreamState.UPLOADING, StreamState.FINALIZING)
FINISHED = (StreamState.COMPLETED, StreamState.FAILED, StreamState.QUARANTINED)


@dataclass(frozen=True)
class MultipartUpload:
    key: str
    upload_id: str
    initiated: float  # epoch seconds


def list_uploads(client: BaseClient, policy: RetryPolicy, bucket: str) -> Iterator[MultipartUpload]:
    """Every incomplete multipart upload in the bucket (ListMultipartUploads, paginated)."""
    s3: Any = client  # botocore adds the S3 operations at run time; BaseClient declares none
    markers: dict[str, str] = {}
    while True:
        request = {"Bucket": bucket, **markers}
        try:
            response = policy.call(lambda: s3.list_multipart_uploads(**request))  # noqa: B023 - called at once
        except UploadGoneError:
            return  # rclone serve s3 answers 404 NoSuchUpload when there are none
        for item in response.get("Uploads", []):
            yield MultipartUpload(str(item["Key"]), str(item["UploadId"]), _epoch(item.get("Initiated")))
        following = {
            "KeyMarker": response.get("NextKeyMarker") or "",
            "UploadIdMarker": response.get("NextUploadIdMarker") or "",
        }
        following = {name: value for name, value in following.items() if value}
        if not response.get("IsTruncated") or not following or following == markers:
            return  # the last check: a server that does not move its markers would loop forever
        markers = following


def _epoch(initiated: Any) -> float:
    if initiated is None:
        return 0.0  # unknown age: old enough
    return float(initiated.timestamp())


def orphans(
    uploads: Iterable[MultipartUpload], owned: set[str], *, hours: float, now: float
) -> list[tuple[MultipartUpload, float]]:
    """(upload, age in seconds) of each upload not owned by a live stream and at least `hours` old."""
    found = []
    for upload in uploads:
        age = max(0.0, now - upload.initiated)  # a server clock ahead of ours is not a negative age
        if upload.upload_id not in owned and age >= hours * 3600:
            found.append((upload, age))
    return found


def expired(records: Iterable[StreamRecord], *, days: float, now: float) -> list[StreamRecord]:
    """Finished streams last updated more than `days` ago."""
    cutoff = now - days * 86400
    return [r for r in records if r.state in FINISHED and r.updated_at < cutoff]


@dataclass
class Collector:
    """One gc pass; `echo` gets each line of output."""

    store: StreamLedger
    client: BaseClient
    policy: RetryPolicy
    bucket: str
    echo: Callable[[str], None]
    dry_run: bool = False
    now: float | None = None

    def __post_init__(self) -> None:
        self.now = time.time() if self.now is None else self.now

    def abort_orphans(self, *, hours: float) -> int:
        """Abort (or list, dry run) orphaned uploads; returns how many."""
        assert self.now is not None
        owned = {r.upload_id for r in self.store.list_streams(LIVE) if r.upload_id}
        found = orphans(list_uploads(self.client, self.policy, self.bucket), owned, hours=hours, now=self.now)
        uploader = Uploader(self.client, self.policy)
        done = 0
        for upload, age in found:
            where = f"{upload.key}  upload {upload.upload_id}  age {age / 3600:.1f}h"
            if self.dry_run:
                self.echo(f"would abort  {where}")
                continue
            try:
                uploader.abort(self.bucket, upload.key, upload.upload_id)
            except UploadGoneError:
                pass  # gone meanwhile: what we wanted
            except TransferError as exc:
                self.echo(f"could not abort  {where}: {exc}")
                continue
            self.echo(f"aborted  {where}")
            done += 1
        verb = "would abort" if self.dry_run else "aborted"
        count = len(found) if self.dry_run else done
        self.echo(f"gc: {verb} {count} orphaned multipart upload(s) older than {hours:g}h ({len(owned)} in use)")
        return count

    def expire_records(self, *, days: float) -> int:
        """Delete (or list, dry run) finished records older than `days`; returns how many."""
        assert self.now is not None
        old = expired(self.store.list_streams(FINISHED), days=days, now=self.now)
        for record in old:
            if self.dry_run:
                stamp = time.strftime("%Y-%m-%d", time.gmtime(record.updated_at))
                self.echo(f"would expire  {record.id}  {record.state.value}  {record.relpath}  (updated {stamp})")
            else:
                self.store.delete_stream(record.id)
        verb = "would expire" if self.dry_run else "expired"
        self.echo(f"gc: {verb} {len(old)} finished record(s) older than {days:g} days")
        return len(old)
