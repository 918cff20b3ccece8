"""`chunkd run` (the daemon) and `chunkd upload PATH…` (once, then exit), both also with `--dev`."""

from __future__ import annotations

import argparse
import dataclasses
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

from chunkd.cli.common import (
    DEV_FILE,
    DEV_ROOT,
    EXIT_FAILURE,
    EXIT_OK,
    DevEndpoint,
    logger,
    prepare_input_dir,
    target,
)
from chunkd.config import Settings, with_destination
from chunkd.errors import ChunkdError
from chunkd.model.node import Scope
from chunkd.observe.logs import redact
from chunkd.s3.client import S3Target
from chunkd.store import StreamReader


def add_parsers(commands: Any, parent: argparse.ArgumentParser) -> None:
    commands.add_parser("run", parents=[parent], help="watch the input folder and upload what lands there")
    upload = commands.add_parser("upload", parents=[parent], help="upload files or folders once, then exit")
    upload.add_argument(
        "paths", nargs="+", metavar="PATH", help="files or folders; a last s3://BUCKET/PREFIX/ says where they go"
    )


def cmd_run(settings: Settings, args: argparse.Namespace) -> int:
    stop = threading.Event()
    install_signal_handlers(stop)
    if args.dev:
        with DevEndpoint(settings, publish=True) as dev:
            print(
                f"chunkd --dev: drop files into {settings.input_dir.resolve()}\n"
                f"  objects land in {DEV_ROOT.resolve() / 's3' / settings.bucket}\n"
                f"  S3 endpoint {dev.endpoint_url} (access key {dev.access_key}, secret key {dev.secret_key}), "
                f"state {redact(settings.state_url)}\n"
                f"  endpoint and keys in {DEV_FILE.resolve()}: other commands use them with --dev",
                file=sys.stderr,
                flush=True,
            )
            return _run_daemon(settings, dev, stop, dev_mode=True)
    return _run_daemon(settings, target(settings), stop)


def _run_daemon(settings: Settings, s3: S3Target, stop: threading.Event, *, dev_mode: bool = False) -> int:
    from chunkd.daemon import Daemon, build_engine, preflight

    engine = build_engine(settings, s3, stop=stop)
    preflight(engine, s3)
    prepare_input_dir(settings)
    Daemon(engine, any_free_port=dev_mode).run()
    return EXIT_OK


def install_signal_handlers(stop: threading.Event) -> None:
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
    paths: list[str] = args.paths
    if paths[-1].startswith("s3://"):
        settings = with_destination(settings, paths.pop())
        if not paths:
            raise ChunkdError("nothing to upload: give files or folders before the s3:// destination")
    files = [Path(path) for path in paths]
    return _upload(settings, target(settings), files)  # --dev: the dev endpoint


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
    return list(dict.fromkeys(items))  # a file named twice is uploaded once


def _rounds(items: Sequence[tuple[Path, str]]) -> list[list[tuple[Path, str]]]:
    """Files that share a relpath (`a/x.mp4 b/x.mp4`: both `x.mp4`) go one after the other, in the
    order given: a path is one job at a time, and the later file meets the earlier one's record
    (a key collision, unless overwriting is on)."""
    rounds: list[list[tuple[Path, str]]] = []
    seen: dict[str, int] = {}
    for path, relpath in items:
        index = seen[relpath] = seen.get(relpath, -1) + 1
        if index == len(rounds):
            rounds.append([])
        rounds[index].append((path, relpath))
    return rounds


def _upload(settings: Settings, s3: S3Target, paths: Sequence[Path]) -> int:
    from chunkd.daemon import build_engine, preflight
    from chunkd.intake.scheduler import JobResult, Scheduler, part_weigher
    from chunkd.pipeline.job import Outcome, StreamJob

    if settings.invalid_media == "quarantine":
        settings = dataclasses.replace(settings, invalid_media="reject")  # fail, but leave the file be
    items = _upload_items(settings, paths)
    stop = threading.Event()
    install_signal_handlers(stop)
    engine = build_engine(settings, s3, stop=stop)
    engine.confirm_skips = True  # "uploaded" only for an object seen at its destination
    preflight(engine, s3)
    bar = _progress_bar(sum(p.stat().st_size for p, _ in items))
    if bar is not None:
        engine.on_progress = lambda relpath, nbytes: bar.update(nbytes)
    started = time.monotonic()
    failed: list[str] = []
    for batch in _rounds(items):
        if stop.is_set():
            break
        scheduler = Scheduler(
            lambda request: JobResult(StreamJob(engine, request.path, request.relpath, final=True).run()),
            workers=settings.file_concurrency * settings.part_concurrency,
            weigh=part_weigher(settings.part_size, settings.part_concurrency),
            multipart_limit=settings.file_concurrency,
            retry_delay=5.0,
        )
        for path, relpath in batch:
            scheduler.submit(path, relpath)
        scheduler.start()
        while scheduler.busy and not stop.is_set():
            time.sleep(0.1)
        scheduler.stop(timeout=settings.shutdown_timeout)
        for path, relpath in batch:
            outcome = scheduler.outcomes.get(relpath, Outcome.INTERRUPTED)
            if outcome not in (Outcome.COMPLETED, Outcome.SKIPPED):
                reason = _recorded_error(engine.store, path, relpath, engine.scope)
                failed.append(f"{relpath} ({outcome.value})" if reason is None else f"{relpath} ({path}): {reason}")
    engine.shutdown()
    engine.store.close()
    if bar is not None:
        bar.close()
    elapsed = time.monotonic() - started
    done = len(items) - len(failed)
    print(f"chunkd: {done}/{len(items)} file(s) uploaded in {elapsed:.1f}s", file=sys.stderr)
    for line in failed:
        print(f"chunkd: failed: {line}", file=sys.stderr)
    return EXIT_FAILURE if failed or stop.is_set() else EXIT_OK


def _recorded_error(store: StreamReader, path: Path, relpath: str, scope: Scope) -> str | None:
    """Why this file's stream failed, as recorded (a key another file has, say)."""
    record = store.find_by_relpath(relpath, scope=scope)
    return record.last_error if record is not None and record.source_path == str(path) else None


def _progress_bar(total: int) -> Any:
    if not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc="upload")
