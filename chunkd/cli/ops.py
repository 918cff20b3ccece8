"""The operator commands: `chunkd doctor`, `gc`, `retry` and `cancel`."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from chunkd.cli.common import (
    EXIT_CONFIG,
    EXIT_FAILURE,
    EXIT_OK,
    hours,
    open_store,
    quick_s3,
    s3_error,
    target,
)
from chunkd.config import Settings
from chunkd.errors import ChunkdError
from chunkd.model.node import Scope
from chunkd.model.states import StreamRecord, StreamState, UrlState
from chunkd.store import CheckpointStore, StreamReader


def add_parsers(commands: Any, parent: argparse.ArgumentParser) -> None:
    commands.add_parser(
        "doctor", parents=[parent], help="check the configuration, state store, bucket and this host",
        description="One line per check: OK, WARN or FAIL. Exit 1 if any check failed.",
    )
    gc = commands.add_parser(
        "gc", parents=[parent], help="abort orphaned multipart uploads and expire old finished records",
        description="Abort every multipart upload in the bucket initiated more than --hours ago that no unfinished "
        "stream owns (also other tools' uploads in a shared bucket), delete the start-up probe objects "
        "(.chunkd-probe-*) older than 10 minutes that a killed daemon left beside the objects, and delete "
        "COMPLETED/FAILED/QUARANTINED records not updated for CHUNKD_RETENTION_DAYS.",
    )
    gc.add_argument("--dry-run", action="store_true", help="only list what would be aborted, removed or expired")
    gc.add_argument("--hours", type=hours, metavar="N", help="minimum upload age (default CHUNKD_GC_HOURS)")
    retry = commands.add_parser("retry", parents=[parent], help="set FAILED streams back to PENDING")
    retry.add_argument("ids", nargs="*", metavar="ID", help="stream id (the ID column of chunkd status)")
    retry.add_argument("--failed", action="store_true", help="every FAILED stream that is still its file's newest")
    cancel = commands.add_parser(
        "cancel", parents=[parent], help="stop an unfinished stream and abort its upload, or a download",
        description="Cancel a stream by its ID, or a links-file URL by its URL (as chunkd status shows it): "
        "the file is not uploaded again until it is replaced or `chunkd retry`; a download stops and its "
        "partial file is deleted.",
    )
    cancel.add_argument("stream_id", metavar="ID|URL")


def cmd_doctor(settings: Settings, args: argparse.Namespace) -> int:
    from chunkd.ops.doctor import FAIL, run_checks

    failed = False
    for check in run_checks(settings, target(settings)):
        print(check.line(), flush=True)
        failed = failed or check.level == FAIL
    return EXIT_FAILURE if failed else EXIT_OK


def cmd_gc(settings: Settings, args: argparse.Namespace) -> int:
    from chunkd.errors import TransferError
    from chunkd.ops.gc import Collector

    max_age = settings.gc_hours if args.hours is None else args.hours
    uploader = quick_s3(settings)
    with _store_if_any(settings) as store:  # a bucket's orphans are found without a store
        collector = Collector(store, uploader, settings.bucket, echo=print, dry_run=args.dry_run)
        try:
            collector.abort_orphans(hours=max_age)
            collector.remove_probes(key_template=settings.key_template)
        except TransferError as exc:
            raise s3_error(settings, exc) from None
        if store is not None:
            collector.expire_records(days=settings.retention_days)
    return EXIT_OK


@contextmanager
def _store_if_any(settings: Settings) -> Iterator[CheckpointStore | None]:
    """The state store, or None where its SQLite file does not exist: opening it would create an
    empty one (and its folder), left behind by a command run from another folder."""
    url = settings.state_url
    if url.startswith("sqlite:///") and not Path(url[len("sqlite:///"):]).is_file():
        print(f"gc: no state store at {Path(url[len('sqlite:///'):]).resolve()}: finished records not expired")
        yield None
        return
    with open_store(settings, existing=False) as store:
        yield store


def cmd_retry(settings: Settings, args: argparse.Namespace) -> int:
    if bool(args.ids) == args.failed:
        what = "stream IDs or --failed, not both" if args.failed else (
            "the ID of each stream to retry (the ID column of `chunkd status`), or --failed for every failed one"
        )
        print(f"chunkd: error: retry needs {what}", file=sys.stderr)
        return EXIT_CONFIG
    with open_store(settings) as store:
        if args.failed:
            records = [r for r in store.list_streams([StreamState.FAILED]) if _newest_for_path(store, r)]
        else:
            records = [_retryable(store, _get_stream(store, stream_id)) for stream_id in dict.fromkeys(args.ids)]
        for record in records:  # every id checked above before any is changed
            record.move_to(StreamState.PENDING)  # also clears last_error
            store.save_stream(record)
            print(f"retry  {record.id}  {record.relpath}  FAILED -> PENDING")
        urls = store.list_urls([UrlState.FAILED]) if args.failed else []
        for url in urls:
            url.move_to(UrlState.PENDING)
            store.save_url(url)
            print(f"retry  {url.display}  FAILED -> PENDING")
    print(
        f"chunkd: {len(records)} stream(s) and {len(urls)} download(s) set to PENDING; a running daemon picks "
        f"them up at its next rescan (every {settings.rescan_seconds:g}s) or start"
    )
    return EXIT_OK


def _get_stream(store: StreamReader, stream_id: str) -> StreamRecord:
    record = store.get_stream(stream_id)
    if record is None:
        raise ChunkdError(f"no stream with id {stream_id!r} (the ID column of chunkd status)")
    return record


def _newest_for_path(store: StreamReader, record: StreamRecord) -> bool:
    """A stream replaced by a newer one for the same file would never be picked up again."""
    newest = store.find_by_relpath(record.relpath, scope=Scope.of_record(record))
    return newest is None or newest.id == record.id


def _retryable(store: StreamReader, record: StreamRecord) -> StreamRecord:
    if record.state is not StreamState.FAILED:
        raise ChunkdError(f"stream {record.id} ({record.relpath}) is {record.state.value}; only FAILED can be retried")
    if not _newest_for_path(store, record):
        raise ChunkdError(f"stream {record.id} ({record.relpath}) was replaced by a newer stream for the same file")
    return record


def cmd_cancel(settings: Settings, args: argparse.Namespace) -> int:
    from chunkd.ops.cancel import Abort, Canceller
    from chunkd.pipeline.publish import too_late

    with open_store(settings) as store:
        canceller = Canceller(store, lambda: quick_s3(settings))
        stream_id = args.stream_id
        if "://" in stream_id and store.get_stream(stream_id) is None:
            stream_id = _cancel_download(store, stream_id, settings)
            if stream_id is None:
                return EXIT_OK
        record = canceller.fail(stream_id)
        print(f"cancel  {record.id}  {record.relpath}  -> FAILED ({canceller.reason})")
        result = canceller.abort_upload(record)
        committed = canceller.committed_meanwhile(record.id)
    if result.outcome is Abort.GONE:
        print(f"cancel  multipart upload {result.upload_id} was already gone")
    elif result.outcome is Abort.FAILED:
        print(
            f"cancel  could not abort multipart upload {result.upload_id}: {result.error} (chunkd gc will)",
            file=sys.stderr,
        )
    elif result.outcome is Abort.ABORTED:
        print(f"cancel  multipart upload {result.upload_id} of {record.key} aborted")
    if committed is not None:
        print(f"chunkd: {too_late(committed.bucket, committed.key, settings.manifest_suffix)}", file=sys.stderr)
        return EXIT_FAILURE
    return EXIT_OK


def _cancel_download(store: CheckpointStore, url: str, settings: Settings) -> str | None:
    """Cancel a links-file URL; the ID of its upload's stream when that is under way, to cancel too."""
    from chunkd.ops.cancel import cancel_url

    record = cancel_url(store, url)
    print(f"cancel  {record.display}  -> FAILED (cancelled by operator)")
    stream = store.find_by_relpath(record.relpath, scope=settings.scope)
    uploading = record.staged_path is not None and stream is not None and not stream.state.terminal
    return stream.id if uploading and stream is not None else None
