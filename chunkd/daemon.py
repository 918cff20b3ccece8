"""Wiring: build the engine from settings, check the endpoints, run watcher + scheduler until told to stop."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from chunkd.bandwidth import TokenBucket
from chunkd.config import Settings
from chunkd.engine import Engine
from chunkd.errors import EndpointError, StoreError, TransferError, endpoint_error
from chunkd.logs import redact
from chunkd.media import ffprobe_available
from chunkd.paths import PathFilter, relpath_of
from chunkd.retry import RetryPolicy
from chunkd.s3 import S3Target, make_client
from chunkd.scheduler import Scheduler, priority_rules
from chunkd.states import StreamState
from chunkd.store import open_store
from chunkd.stream import Outcome, StreamJob
from chunkd.uploader import Uploader
from chunkd.watcher import Watcher

logger = logging.getLogger("chunkd.daemon")


def build_engine(settings: Settings, target: S3Target, *, stop: threading.Event | None = None) -> Engine:
    stop = stop or threading.Event()
    pool = settings.file_concurrency * settings.part_concurrency + 4
    limiter = TokenBucket(settings.bandwidth_limit) if settings.bandwidth_limit else None
    policy = RetryPolicy(max_attempts=settings.max_attempts, stop_event=stop, on_retry=_log_retry)
    uploader = Uploader(make_client(target, max_pool_connections=pool), policy, limiter=limiter)
    store = open_store(settings.state_url)
    return Engine(settings, store, uploader, input_dir=settings.input_dir.resolve(), stop=stop)


def _log_retry(error: TransferError, attempt: int) -> None:
    logger.warning("retrying after attempt %d: %s", attempt, error, extra={"key": error.key, "part": error.part})


def preflight(engine: Engine, target: S3Target) -> None:
    """Fail fast, in one line, on an unreachable store or endpoint and on a missing bucket."""
    try:
        engine.store.ping()
    except StoreError as exc:
        raise EndpointError(f"cannot reach the state store {redact(engine.settings.state_url)}: {exc}") from None
    bucket = engine.settings.bucket
    quick = RetryPolicy(max_attempts=3, initial=0.2, maximum=1.0)
    try:
        engine.uploader.with_policy(quick).head_bucket(bucket)
    except TransferError as exc:
        raise endpoint_error(exc, bucket=bucket, where=target.endpoint_url or "AWS S3") from None


class Daemon:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        settings = engine.settings
        self.scheduler = Scheduler(
            self._run_job, workers=settings.file_concurrency, priority=priority_rules(settings.priority)
        )
        own_dirs = (settings.quarantine_path, settings.done_path)
        skip = tuple(rel for rel in (relpath_of(engine.input_dir, folder) for folder in own_dirs) if rel)
        self.watcher = Watcher(
            engine.input_dir,
            PathFilter(settings.include, settings.exclude, skip_dirs=skip),
            self.scheduler.submit,
            rescan_seconds=settings.rescan_seconds,
        )

    def _run_job(self, path: Path, relpath: str) -> Outcome:
        return StreamJob(self.engine, path, relpath).run()

    def resume_unfinished(self) -> int:
        """Queue every stream a previous run left unfinished, before new arrivals."""
        unfinished = self.engine.store.list_streams([StreamState.PENDING, StreamState.UPLOADING, StreamState.FINALIZING])
        for record in unfinished:
            self.scheduler.submit(self.engine.input_dir / record.relpath, record.relpath)
        return len(unfinished)

    def run(self) -> None:
        """Block until the stop event is set, then stop warm: in-flight parts finish and are recorded."""
        engine = self.engine
        engine.input_dir.mkdir(parents=True, exist_ok=True)
        if not ffprobe_available():
            logger.warning("ffprobe not found: manifests get media: null and unreadable files are not quarantined")
        resumed = self.resume_unfinished()
        self.scheduler.start()
        self.watcher.start()
        logger.info(
            "watching %s -> s3://%s (state %s); %d unfinished upload(s) resumed",
            engine.input_dir, engine.settings.bucket, redact(engine.settings.state_url), resumed,
        )
        while not engine.stop.wait(1.0):
            pass
        logger.info("stopping: letting in-flight parts finish (up to %.0fs)", engine.settings.shutdown_timeout)
        self.watcher.stop()
        self.scheduler.stop(timeout=engine.settings.shutdown_timeout + 5)
        engine.shutdown()
        engine.store.close()
        logger.info("stopped")



