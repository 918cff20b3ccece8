"""`chunkd gc`: abort multipart uploads nobody owns, and expire old finished stream records.

An incomplete multipart upload costs storage until it is aborted. Ours are owned by a stream that
is still PENDING, UPLOADING or FINALIZING; any other upload in the bucket initiated more than
`hours` ago is an orphan (a crash before its id was recorded, a stream that failed without an
abort, another tool's leftovers) and is aborted, as an AbortIncompleteMultipartUpload lifecycle
rule would.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from chunkd.errors import TransferError, UploadGoneError
from chunkd.model.states import StreamRecord, StreamState
from chunkd.s3.uploader import MultipartUpload, Uploader
from chunkd.store import StreamLedger

LIVE = (StreamState.PENDING, StreamState.UPLOADING, StreamState.FINALIZING)
FINISHED = (StreamState.COMPLETED, StreamState.FAILED, StreamState.QUARANTINED)


def orphans(
    uploads: Iterable[MultipartUpload], owned: set[str], *, hours: float, now: float
) -> list[tuple[MultipartUpload, float]]:
    """(upload, age in seconds) of each upload not owned by a live stream and at least `hours` old."""
    found: list[tuple[MultipartUpload, float]] = []
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
    uploader: Uploader
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
        found = orphans(self.uploader.list_all_uploads(self.bucket), owned, hours=hours, now=self.now)
        done = 0
        for upload, age in found:
            where = f"{upload.key}  upload {upload.upload_id}  age {age / 3600:.1f}h"
            if self.dry_run:
                self.echo(f"would abort  {where}")
                continue
            try:
                self.uploader.abort(self.bucket, upload.key, upload.upload_id)
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
