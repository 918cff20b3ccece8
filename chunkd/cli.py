"""Command line: `chunkd run`, `chunkd upload PATH…`, `chunkd status`, `chunkd verify KEY|PATH`."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from chunkd import __version__
from chunkd.config import SETTING_NAMES, Settings, env_name, load_settings
from chunkd.errors import ChunkdError, ConfigError
from chunkd.logs import setup_logging
from chunkd.s3 import S3Target
from chunkd.states import StreamState

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
    return parser


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
        command = {"run": cmd_run, "upload": cmd_upload, "status": cmd_status, "verify": cmd_verify}[args.command]
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
        from chunkd.devserver import LocalS3Server

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
    from chunkd.paths import PathFilter, relpath_of, safe_regular_file, walk_files

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
    from chunkd.scheduler import Scheduler
    from chunkd.stream import Outcome, StreamJob

    items = _upload_items(settings, paths)
    stop = threading.Event()
    _install_signal_handlers(stop)
    engine = build_engine(settings, target, stop=stop)
    preflight(engine, target)
    bar = _progress_bar(sum(p.stat().st_size for p, _ in items))
    if bar is not None:
        engine.on_progress = lambda relpath, nbytes: bar.update(nbytes)
    scheduler = Scheduler(
        lambda path, relpath: StreamJob(engine, path, relpath, final=True).run(),
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


def cmd_status(settings: Settings, args: argparse.Namespace) -> int:
    from chunkd.status import collect, render_json, render_table
    from chunkd.store import open_store

    states = [StreamState(s.upper()) for s in args.state] if args.state else None
    store = open_store(settings.state_url)
    try:
        statuses = collect(store, states)
    finally:
        store.close()
    print(render_json(statuses) if args.json else render_table(statuses))
    return EXIT_OK


def cmd_verify(settings: Settings, args: argparse.Namespace) -> int:
    from chunkd.verify import verify

    if args.dev:
        with _DevEndpoint(settings) as target:
            report = verify(settings, target, args.target, deep=args.deep)
    else:
        report = verify(settings, _target(settings), args.target, deep=args.deep)
    print(report.render_json() if args.json else report.render_text())
    return EXIT_OK if report.ok else EXIT_FAILURE


if __name__ == "__main__":
    raise SystemExit(main())
