"""`chunkd gc`: abort multipart uploads nobody owns, and expire old finished stream records.

An incomplete multipart upload costs storage until it is aborted. Ours are owned by a stream that
is still PENDING, UPLOADING or FINALIZING; any other upload in the bucket initiated more than
`hours` ago is an orphan (a crash before its id was recorded, a stream that failed without an
abort, another tool's leftovers) and is aborted, as an AbortIncompleteMultipartUpload lifecycle
rule would.

It also deletes the objects the daemon's start-up probes (chunkd.s3.traits) left beside the objects
when a reply was lost or the daemon was killed between PUT and DELETE: a probe runs for seconds, so
one older than `PROBE_MAX_AGE` is nobody's. The probes' multipart uploads are unowned, so orphans.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from chunkd.errors import TransferError, UploadGoneError
from chunkd.model.states import StreamState
from chunkd.ops.retention import RetentionStore, expired_records, forget
from chunkd.s3.traits import PROBE_NAME, probe_prefix
from chunkd.s3.uploader import ListedObject, MultipartUpload, Uploader

LIVE = (StreamState.PENDING, StreamState.UPLOADING, StreamState.FINALIZING)
PROBE_MAX_AGE = 600.0  # seconds; a running probe's object lives for a second or two


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


def stale_probes(
    objects: Iterable[ListedObject], *, max_age: float, now: float
) -> list[tuple[ListedObject, float]]:
    """(object, age in seconds) of each probe object at least `max_age` seconds old."""
    found: list[tuple[ListedObject, float]] = []
    for listed in objects:
        age = max(0.0, now - listed.modified)  # a server clock ahead of ours is not a negative age
        if listed.key.rpartition("/")[2].startswith(PROBE_NAME) and age >= max_age:
            found.append((listed, age))
    return found


@dataclass
class Collector:
    """One gc pass; `echo` gets each line of output."""

    store: RetentionStore | None  # None: no state store, so no stream owns an upload and no record expires
    uploader: Uploader
    bucket: str
    echo: Callable[[str], None]
    dry_run: bool = False
    now: float | None = None
    probe_age: float = PROBE_MAX_AGE  # seconds; tests pass 0, a server's LastModified cannot be backdated

    def __post_init__(self) -> None:
        self.now = time.time() if self.now is None else self.now

    def abort_orphans(self, *, hours: float) -> int:
        """Abort (or list, dry run) orphaned uploads; returns how many."""
        assert self.now is not None
        live = self.store.list_streams(LIVE) if self.store is not None else []
        owned = {r.upload_id for r in live if r.upload_id}
        found = orphans(self.uploader.list_all_uploads(self.bucket), owned, hours=hours, now=self.now)
        targets = [
            (f"{upload.key}  upload {upload.upload_id}  age {age / 3600:.1f}h", self._aborter(upload))
            for upload, age in found
        ]
        count = self._apply(targets, would="would abort", did="aborted", failed="could not abort")
        verb = "would abort" if self.dry_run else "aborted"
        self.echo(f"gc: {verb} {count} orphaned multipart upload(s) older than {hours:g}h ({len(owned)} in use)")
        return count

    def remove_probes(self, *, key_template: str) -> int:
        """Delete (or list, dry run) start-up probe objects left beside the objects; returns how many."""
        assert self.now is not None
        listed = self.uploader.list_prefix(self.bucket, probe_prefix(key_template))
        found = stale_probes(listed, max_age=self.probe_age, now=self.now)
        targets = [
            (f"{item.key}  age {age / 60:.1f} min", functools.partial(self.uploader.delete, self.bucket, item.key))
            for item, age in found
        ]
        count = self._apply(targets, would="would remove", did="removed", failed="could not remove")
        verb = "would remove" if self.dry_run else "removed"
        self.echo(f"gc: {verb} {count} start-up probe object(s) older than {self.probe_age / 60:g} min")
        return count

    def _aborter(self, upload: MultipartUpload) -> Callable[[], None]:
        def abort() -> None:
            try:
                self.uploader.abort(self.bucket, upload.key, upload.upload_id)
            except UploadGoneError:
                pass  # gone meanwhile: what we wanted

        return abort

    def _apply(self, targets: Sequence[tuple[str, Callable[[], None]]], *, would: str, did: str, failed: str) -> int:
        """Act on each (description, action), one line each; how many were (or would be) done."""
        if self.dry_run:
            for where, _ in targets:
                self.echo(f"{would}  {where}")
            return len(targets)
        done = 0
        for where, act in targets:
            try:
                act()
            except TransferError as exc:
                self.echo(f"{failed}  {where}: {exc}")
                continue
            self.echo(f"{did}  {where}")
            done += 1
        return done

    def expire_records(self, *, days: float) -> int:
        """Delete (or list, dry run) finished records older than `days`, every node's; returns how many."""
        assert self.now is not None
        if self.store is None:
            return 0
        store = self.store
        old = expired_records(store, days=days, now=self.now)
        for record in old:
            if self.dry_run:
                stamp = time.strftime("%Y-%m-%d", time.gmtime(record.updated_at))
                self.echo(f"would expire  {record.id}  {record.state.value}  {record.relpath}  (updated {stamp})")
            else:
                forget(store, record)
        verb = "would expire" if self.dry_run else "expired"
        self.echo(f"gc: {verb} {len(old)} finished record(s) older than {days:g} days")
        return len(old)
