"""Command line: `chunkd run`, `chunkd upload PATH…`, `chunkd status`, `chunkd verify KEY|PATH`, and the
operator commands `doctor`, `gc`, `retry`, `cancel`, `stats`."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any

from chunkd import __version__
from chunkd.config import SETTING_NAMES, Settings, env_name, load_settings
from chunkd.errors import ChunkdError, ConfigError
from chunkd.model.states import StreamRecord, StreamState, UrlState
from chunkd.observe.logs import setup_logging
from chunkd.s3.client import S3Target
from chunkd.store import CheckpointStore

logger = logging.getLogger("chunkd.cli")

EXIT_OK, EXIT_FAILURE, EXIT_CONFIG = 0, 1, 2
DEV_ROOT = Path(".chunkd")


def _settings_parent() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    group = parent.add_argument_group("settings (each also CHUNKD_<NAME> in the environment or <name> in --config)")
    group.add_argument("--config", metavar="FILE", help="TOML file with settings (env CHUNKD_CONFIG)")
    for name in SETTING_NAMES:
        group.add_argument(f"--{name.replace('_', '-')}", dest=name, default=None, help=f"env {env_name(name)}")
    return parent


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="chunkd", description="Upload a drop folder to S3 in resumable parts.")
    parser.add_argument("--version", action="version", version=f"chunkd {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    parent = _settings_parent()
    run = commands.add_parser("run", parents=[parent], help="watch the input folder and upload what lands there")
    run.add_argument("--dev", action="store_true", help="embedded state and a local S3 endpoint under ./.chunkd/")
    upload = commands.add_parser("upload", parents=[parent], help="upload files or folders once, then exit")
    upload.add_argument("paths", nargs="+", type=Path, metavar="PATH")
    upload.add_argument("--dev", action="store_true", help="upload to the local S3 endpoint under ./.chunkd/")
    status = commands.add_parser("status", parents=[parent], help="show every stream the state store knows")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.add_argument(
        "--state", action="append", choices=[s.value.lower() for s in StreamState], help="only this state (repeatable)"
    )
    status.add_argument(
        "--since", type=_duration, metavar="AGE", help="only streams updated in the last AGE (30m, 2h, 7d)"
    )
    verify = commands.add_parser(
        "verify", parents=[parent], help="check an uploaded object against its manifest",
        description="Compare an object with its manifest: HeadObject size and ETag, and the manifest's parts "
        "tiling the object. The local file (PATH, or the manifest's source.relpath under the input folder) "
        "is always hashed and compared when it exists. Exit 0 only if every check passed.",
    )
    verify.add_argument("target", metavar="KEY|PATH", help="object key, or a local file whose key is looked up")
    verify.add_argument(
        "--deep", action="store_true", help="also stream the whole object (GetObject) and compare its SHA-256"
    )
    verify.add_argument("--json", action="store_true", help="machine-readable output")
    verify.add_argument("--dev", action="store_true", help="check against the local S3 endpoint under ./.chunkd/")
    _add_operator_commands(commands, parent)
    return parser


def _add_operator_commands(commands: Any, parent: argparse.ArgumentParser) -> None:
    commands.add_parser(
        "doctor", parents=[parent], help="check the configuration, state store, bucket and this host",
        description="One line per check: OK, WARN or FAIL. Exit 1 if any check failed.",
    )
    gc = commands.add_parser(
        "gc", parents=[parent], help="abort orphaned multipart uploads and expire old finished records",
        description="Abort every multipart upload in the bucket initiated more than --hours ago that no unfinished "
        "stream owns (also other tools' uploads in a shared bucket), and delete COMPLETED/FAILED/QUARANTINED "
        "records not updated for CHUNKD_RETENTION_DAYS.",
    )
    gc.add_argument("--dry-run", action="store_true", help="only list what would be aborted or expired")
    gc.add_argument("--hours", type=_hours, metavar="N", help="minimum upload age (default CHUNKD_GC_HOURS)")
    retry = commands.add_parser("retry", parents=[parent], help="set FAILED streams back to PENDING")
    retry.add_argument("ids", nargs="*", metavar="ID", help="stream id (chunkd status --json)")
    retry.add_argument("--failed", action="store_true", help="every FAILED stream that is still its file's newest")
    cancel = commands.add_parser("cancel", parents=[parent], help="stop an unfinished stream and abort its upload")
    cancel.add_argument("stream_id", metavar="ID")
    stats = commands.add_parser("stats", parents=[parent], help="finished files and bytes per UTC day")
    stats.add_argument("--since", type=_duration, default="7d", metavar="AGE", help="look back this far (default 7d)")
    stats.add_argument("--format", choices=("table", "json", "csv"), default="table")


def _duration(text: str) -> float:
    from chunkd.observe.overview import parse_duration

    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _hours(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of hours: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative, got {text}")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    overrides = {name: getattr(args, name) for name in SETTING_NAMES}
    try:
        settings = load_settings(config_file=args.config, overrides=overrides)
    except ConfigError as exc:
        print(f"chunkd: config error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    setup_logging(settings.log_level, settings.log_format)
    try:
        command = {
            "run": cmd_run, "upload": cmd_upload, "status": cmd_status, "verify": cmd_verify, "doctor": cmd_doctor,
            "gc": cmd_gc, "retry": cmd_retry, "cancel": cmd_cancel, "stats": cmd_stats,
        }[args.command]
        return command(settings, args)
    except ConfigError as exc:
        print(f"chunkd: config error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except ChunkdError as exc:
        code = getattr(exc, "exit_code", EXIT_FAILURE)
        print(f"chunkd: error: {exc}", file=sys.stderr)
        return code


class _DevEndpoint:
    """`--dev`: a local S3 endpoint on disk under ./.chunkd/s3, started and stopped with us."""

    def __init__(self, settings: Settings) -> None:
        from chunkd.s3.devserver import LocalS3Server

        self.root = DEV_ROOT.resolve() / "s3"
        self.server = LocalS3Server(self.root, buckets=(settings.bucket,), log_file=DEV_ROOT / "rclone.log")

    def __enter__(self) -> S3Target:
        self.server.start()
        return S3Target(self.server.endpoint_url, None, self.server.access_key, self.server.secret_key)

    def __exit__(self, *exc: object) -> None:
        self.server.stop()


def _target(settings: Settings) -> S3Target:
    return S3Target(endpoint_url=settings.s3_endpoint_url, region=settings.s3_region)


def cmd_run(settings: Settings, args: argparse.Namespace) -> int:
    stop = threading.Event()
    _install_signal_handlers(stop)
    if args.dev:
        with _DevEndpoint(settings) as target:
            print(
                f"chunkd --dev: drop files into {settings.input_dir.resolve()}\n"
                f"  objects land in {DEV_ROOT.resolve() / 's3' / settings.bucket}\n"
                f"  S3 endpoint {target.endpoint_url} (access key {target.access_key}), "
                f"state {settings.state_url}",
                file=sys.stderr,
                flush=True,
            )
            return _run_daemon(settings, target, stop)
    return _run_daemon(settings, _target(settings), stop)


def _run_daemon(settings: Settings, target: S3Target, stop: threading.Event) -> int:
    from chunkd.daemon import Daemon, build_engine, preflight

    engine = build_engine(settings, target, stop=stop)
    preflight(engine, target)
    Daemon(engine).run()
    return EXIT_OK


def _install_signal_handlers(stop: threading.Event) -> None:
    """First SIGTERM/SIGINT: warm stop (finish in-flight parts). Second: leave at once."""

    def handle(signum: int, frame: FrameType | None) -> None:
        if stop.is_set():
            logger.warning("second signal: exiting now; unfinished parts will be re-sent on resume")
            logging.shutdown()
            os._exit(EXIT_FAILURE)
        stop.set()

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)


def cmd_upload(settings: Settings, args: argparse.Namespace) -> int:
    if args.dev:
        with _DevEndpoint(settings) as target:
            return _upload(settings, target, args.paths)
    return _upload(settings, _target(settings), args.paths)


def _upload_items(settings: Settings, paths: Sequence[Path]) -> list[tuple[Path, str]]:
    from chunkd.intake.paths import (
        PathFilter,
        relpath_of,
        safe_regular_file,
        walk_files,
    )

    items: list[tuple[Path, str]] = []
    wanted = PathFilter(settings.include, settings.exclude)
    for path in paths:
        if path.is_dir():
            root = path.resolve()
            for file in sorted(walk_files(root)):
                relpath = f"{root.name}/{relpath_of(root, file)}"
                if wanted.wants(relpath_of(root, file) or "") and safe_regular_file(root, file):
                    items.append((file, relpath))
        elif path.is_file():
            items.append((path.resolve(), path.name))
        else:
            raise ChunkdError(f"{path}: no such file or folder")
    return items


def _upload(settings: Settings, target: S3Target, paths: Sequence[Path]) -> int:
    from chunkd.daemon import build_engine, preflight
    from chunkd.intake.scheduler import JobResult, Scheduler
    from chunkd.pipeline.job import Outcome, StreamJob

    if settings.invalid_media == "quarantine":
        settings = dataclasses.replace(settings, invalid_media="reject")  # fail, but leave the file be
    items = _upload_items(settings, paths)
    stop = threading.Event()
    _install_signal_handlers(stop)
    engine = build_engine(settings, target, stop=stop)
    preflight(engine, target)
    bar = _progress_bar(sum(p.stat().st_size for p, _ in items))
    if bar is not None:
        engine.on_progress = lambda relpath, nbytes: bar.update(nbytes)
    scheduler = Scheduler(
        lambda request: JobResult(StreamJob(engine, request.path, request.relpath, final=True).run()),
        workers=settings.file_concurrency,
        retry_delay=5.0,
    )
    for path, relpath in items:
        scheduler.submit(path, relpath)
    started = time.monotonic()
    scheduler.start()
    while scheduler.busy and not stop.is_set():
        time.sleep(0.1)
    scheduler.stop(timeout=settings.shutdown_timeout)
    engine.shutdown()
    engine.store.close()
    if bar is not None:
        bar.close()
    failed = [r for r, o in scheduler.outcomes.items() if o not in (Outcome.COMPLETED, Outcome.SKIPPED)]
    elapsed = time.monotonic() - started
    done = len(items) - len(failed)
    print(f"chunkd: {done}/{len(items)} file(s) uploaded in {elapsed:.1f}s", file=sys.stderr)
    for relpath in failed:
        print(f"chunkd: failed: {relpath} ({scheduler.outcomes[relpath].value})", file=sys.stderr)
    return EXIT_FAILURE if failed or stop.is_set() else EXIT_OK


def _progress_bar(total: int) -> Any:
    if not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc="upload")


@contextmanager
def _open_store(settings: Settings) -> Iterator[CheckpointStore]:
    from chunkd.store import open_store

    store = open_store(settings.state_url)
    try:
        yield store
    finally:
        store.close()


def cmd_status(settings: Settings, args: argparse.Namespace) -> int:
    from chunkd.observe.overview import (
        collect,
        render_downloads,
        render_json,
        render_table,
    )

    states = [StreamState(s.upper()) for s in args.state] if args.state else None
    since = None if args.since is None else time.time() - args.since
    with _open_store(settings) as store:
        statuses = collect(store, states, since=since)
        downloads = [] if args.json or args.state else store.list_urls()
    print(render_json(statuses) if args.json else render_table(statuses))
    if downloads:
        print("\n" + render_downloads(downloads))
    return EXIT_OK


def cmd_verify(settings: Settings, args: argparse.Namespace) -> int:
    from chunkd.ops.verify import verify

    if args.dev:
        with _DevEndpoint(settings) as target:
            report = verify(settings, target, args.target, deep=args.deep)
    else:
        report = verify(settings, _target(settings), args.target, deep=args.deep)
    print(report.render_json() if args.json else report.render_text())
    return EXIT_OK if report.ok else EXIT_FAILURE


# -- operator commands ------------------------------------------------------------------------

CANCELLED = "cancelled by operator"


def _quick_s3(settings: Settings) -> tuple[Any, Any]:
    """An S3 client and a short retry policy: an operator command should fail in seconds."""
    from chunkd.s3.client import make_client
    from chunkd.s3.retry import RetryPolicy

    return make_client(_target(settings)), RetryPolicy(max_attempts=3, initial=0.2, maximum=1.0)


def _s3_error(settings: Settings, exc: Any) -> ChunkdError:
    from chunkd.errors import endpoint_error

    return endpoint_error(exc, bucket=settings.bucket, where=settings.s3_endpoint_url or "AWS S3")


def _get_stream(store: CheckpointStore, stream_id: str) -> StreamRecord:
    record = store.get_stream(stream_id)
    if record is None:
        raise ChunkdError(f"no stream with id {stream_id!r} (chunkd status --json lists ids)")
    return record


def cmd_doctor(settings: Settings, args: argparse.Namespace) -> int:
    from chunkd.ops.doctor import FAIL, run_checks

    failed = False
    for check in run_checks(settings, _target(settings)):
        print(check.line(), flush=True)
        failed = failed or check.level == FAIL
    return EXIT_FAILURE if failed else EXIT_OK


def cmd_gc(settings: Settings, args: argparse.Namespace) -> int:
    from chunkd.errors import TransferError
    from chunkd.ops.gc import Collector

    hours = settings.gc_hours if args.hours is None else args.hours
    client, policy = _quick_s3(settings)
    with _open_store(settings) as store:
        collector = Collector(store, client, policy, settings.bucket, echo=print, dry_run=args.dry_run)
        try:
            collector.abort_orphans(hours=hours)
        except TransferError as exc:
            raise _s3_error(settings, exc) from None
        collector.expire_records(days=settings.retention_days)
    return EXIT_OK


def cmd_retry(settings: Settings, args: argparse.Namespace) -> int:
    if bool(args.ids) == args.failed:
        print("chunkd: error: retry needs stream ID(s) or --failed, not both", file=sys.stderr)
        return EXIT_CONFIG
    with _open_store(settings) as store:
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


def _newest_for_path(store: CheckpointStore, record: StreamRecord) -> bool:
    """A stream replaced by a newer one for the same file would never be picked up again."""
    newest = store.find_by_relpath(record.relpath)
    return newest is None or newest.id == record.id


def _retryable(store: CheckpointStore, record: StreamRecord) -> StreamRecord:
    if record.state is not StreamState.FAILED:
        raise ChunkdError(f"stream {record.id} ({record.relpath}) is {record.state.value}; only FAILED can be retried")
    if not _newest_for_path(store, record):
        raise ChunkdError(f"stream {record.id} ({record.relpath}) was replaced by a newer stream for the same file")
    return record


def cmd_cancel(settings: Settings, args: argparse.Namespace) -> int:
    with _open_store(settings) as store:
        record = _get_stream(store, args.stream_id)
        if record.state.terminal:
            state = record.state.value
            raise ChunkdError(f"stream {record.id} ({record.relpath}) is already {state}; nothing to cancel")
        upload_id = record.upload_id
        # FAILED first, upload id kept: a running daemon stops at its next check, and aborts the
        # upload itself should ours fail.
        record.move_to(StreamState.FAILED, error=CANCELLED)
        store.save_stream(record)
        print(f"cancel  {record.id}  {record.relpath}  -> FAILED ({CANCELLED})")
        if upload_id is not None and _abort_cancelled(settings, record, upload_id):
            _forget_upload(store, record.id, upload_id)
    return EXIT_OK


def _abort_cancelled(settings: Settings, record: StreamRecord, upload_id: str) -> bool:
    from chunkd.errors import TransferError, UploadGoneError
    from chunkd.s3.uploader import Uploader

    try:
        Uploader(*_quick_s3(settings)).abort(record.bucket, record.key, upload_id)
    except UploadGoneError:
        print(f"cancel  multipart upload {upload_id} was already gone")
        return True
    except TransferError as exc:
        print(f"cancel  could not abort multipart upload {upload_id}: {exc} (chunkd gc will)", file=sys.stderr)
        return False
    print(f"cancel  multipart upload {upload_id} of {record.key} aborted")
    return True


def _forget_upload(store: CheckpointStore, stream_id: str, upload_id: str) -> None:
    """Clear the aborted upload's id and parts: tells a running daemon the abort is done, and a
    later `chunkd retry` starts a fresh upload."""
    record = store.get_stream(stream_id)
    if record is None or record.state is not StreamState.FAILED or record.upload_id != upload_id:
        return
    record.upload_id = None
    store.drop_parts(stream_id)
    store.save_stream(record)


def cmd_stats(settings: Settings, args: argparse.Namespace) -> int:
    from chunkd.observe import daily as stats

    finished = [StreamState.COMPLETED, StreamState.FAILED, StreamState.QUARANTINED]
    with _open_store(settings) as store:
        rows = stats.aggregate(store.list_streams(finished), since=time.time() - args.since)
    render = {"table": stats.render_table, "json": stats.render_json, "csv": stats.render_csv}[args.format]
    print(render(rows))
    return EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())
