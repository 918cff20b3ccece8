"""Wiring: build the engine from settings, check the endpoints, run watcher + scheduler until told to stop."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any


from chunkd.observe import systemd
from chunkd.s3.bandwidth import TokenBucket
from chunkd.s3.breaker import endpoint_breaker
from chunkd.config import Settings
from chunkd.links.download import Downloader
from chunkd.pipeline.engine import Engine
from chunkd.errors import EndpointError, StoreError, TransferError, endpoint_error
from chunkd.observe.events import EventSink
from chunkd.observe.http import HttpServer
from chunkd.links.batch import LinkManager
from chunkd.observe.logs import redact
from chunkd.pipeline.media import ffprobe_available
from chunkd.observe.metrics import Metrics, store_snapshot
from chunkd.intake.paths import PathFilter, local_path, relpath_of
from chunkd.observe.probes import Probes
from chunkd.s3.retry import RetryPolicy
from chunkd.s3.client import S3Target, make_client
from chunkd.s3.traits import decide_traits
from chunkd.intake.scheduler import Scheduler, priority_rules
from chunkd.model.states import StreamState
from chunkd.observe.overview import collect
from chunkd.store import open_store
from chunkd.pipeline.job import Outcome, StreamJob
from chunkd.s3.uploader import Uploader
from chunkd.intake.watcher import Watcher

logger = logging.getLogger("chunkd.daemon")

_EVENT_OUTCOMES = frozenset({Outcome.COMPLETED, Outcome.FAILED, Outcome.QUARANTINED})


def build_engine(settings: Settings, target: S3Target, *, stop: threading.Event | None = None) -> Engine:
    stop = stop or threading.Event()
    pool = settings.file_concurrency * settings.part_concurrency + 4
    limiter = TokenBucket(settings.bandwidth_limit) if settings.bandwidth_limit else None
    store = open_store(settings.state_url, exclusive=True)
    metrics = Metrics(snapshot=lambda: store_snapshot(store))

    def on_retry(error: TransferError, attempt: int) -> None:
        logger.warning("retrying after attempt %d: %s", attempt, error, extra={"key": error.key, "part": error.part})
        metrics.retry(error.code)

    policy = RetryPolicy(max_attempts=settings.max_attempts, stop_event=stop, on_retry=on_retry)
    breaker = endpoint_breaker(settings, target.endpoint_url, metrics=metrics)
    uploader = Uploader(
        make_client(target, max_pool_connections=pool), policy, limiter=limiter, breaker=breaker,
        content_md5=settings.content_md5 == "on",
    )
    return Engine(settings, store, uploader, input_dir=settings.input_dir.resolve(), stop=stop, metrics=metrics)


def preflight(engine: Engine, target: S3Target) -> None:
    """Fail fast, in one line, on an unreachable store or endpoint and on a missing bucket."""
    try:
        engine.store.ping()
    except StoreError as exc:
        raise EndpointError(f"cannot reach the state store {redact(engine.settings.state_url)}: {exc}") from None
    bucket = engine.settings.bucket
    quick = RetryPolicy.quick()
    try:
        engine.uploader.with_policy(quick).head_bucket(bucket)
    except TransferError as exc:
        raise endpoint_error(exc, bucket=bucket, where=target.endpoint_url or "AWS S3") from None
    engine.adopt_traits(decide_traits(
        engine.uploader, bucket, content_md5=engine.settings.content_md5, key_template=engine.settings.key_template,
    ))


def _downloader(settings: Settings) -> Downloader:
    return Downloader(
        settings.staging_path,
        concurrency=settings.download_concurrency,
        per_host_requests=settings.download_host_requests,
        per_host_window=settings.download_host_window,
        proxy=settings.download_proxy,
        max_filesize=settings.max_download_size or None,
        min_free_bytes=int(settings.min_free_gb * 1e9),
    )


class Daemon:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        settings = engine.settings
        self.scheduler = Scheduler(
            self._run_job, workers=settings.file_concurrency, priority=priority_rules(settings.priority),
            large_file_bytes=4 * settings.part_size,
        )
        own_dirs = (settings.quarantine_path, settings.done_path, settings.staging_path)
        skip = tuple(rel for rel in (relpath_of(engine.input_dir, folder) for folder in own_dirs) if rel)
        self.watcher = Watcher(
            engine.input_dir,
            PathFilter(settings.include, settings.exclude, skip_dirs=skip),
            self.scheduler.submit,
            rescan_seconds=settings.rescan_seconds,
            links=(PathFilter(settings.links_pattern, skip_dirs=skip), self._links_submit),
        )
        self.links = LinkManager(engine, _downloader(settings), self._upload_download)
        self.events = EventSink(
            engine.store, webhook_urls=settings.webhook_urls, secret=settings.webhook_secret,
            maxlen=settings.events_maxlen,
        )
        engine.metrics.watch_queue_depth(lambda: self.scheduler.queue_depth)
        self.probes = Probes(engine, lambda: self.watcher.alive)
        self.http = self._http_server()

    def _run_job(self, path: Path, relpath: str) -> Outcome:
        job = StreamJob(self.engine, path, relpath)
        return self._finish(job, job.run())

    def _finish(self, job: StreamJob, outcome: Outcome) -> Outcome:
        """Count the outcome and tell the world, once per finished file."""
        if outcome is Outcome.COMPLETED:
            deduplicated = job.record is not None and job.record.dedup_of
            self.engine.metrics.file_finished("deduplicated" if deduplicated else "completed")
        elif outcome in (Outcome.FAILED, Outcome.QUARANTINED):
            self.engine.metrics.file_finished(outcome.value)
        if outcome in _EVENT_OUTCOMES and job.record is not None:
            # The store's copy: after a cancel, the job's in-memory record is behind it.
            self.events.emit(outcome.value, self.engine.store.get_stream(job.record.id) or job.record)
        return outcome

    def _links_submit(self, path: Path, relpath: str) -> bool:
        return self.links.submit(path, relpath)

    def _upload_download(self, path: Path, relpath: str, origin: dict[str, Any]) -> tuple[Outcome, str | None]:
        """A finished download enters the same pipeline as a dropped file."""
        job = StreamJob(self.engine, path, relpath, final=True, origin=origin)
        outcome = self._finish(job, job.run())
        return outcome, job.record.key if job.record is not None else None

    def _http_server(self) -> HttpServer | None:
        settings, engine = self.engine.settings, self.engine
        if not settings.http_addr:
            return None
        return HttpServer(
            settings.http_addr, token=settings.http_token, metrics=engine.metrics,
            health=self.probes.health, ready=self.probes.ready,
            status=lambda: [status.to_dict() for status in collect(engine.store)],
        )

    def resume_unfinished(self) -> int:
        """Queue every stream a previous run left unfinished, before new arrivals."""
        unfinished = self.engine.store.list_streams([StreamState.PENDING, StreamState.UPLOADING, StreamState.FINALIZING])
        for record in unfinished:
            self.scheduler.submit(local_path(self.engine.input_dir, record.relpath), record.relpath)
        return len(unfinished)

    def _resume_quietly(self) -> None:
        """The periodic pass must survive a store outage; the outage is logged once, by StoreHealth."""
        try:
            self.resume_unfinished()
            self.links.resume()
        except StoreError as exc:
            self.engine.store_health.failed(exc)
        else:
            self.engine.store_health.ok()

    def run(self) -> None:
        """Block until the stop event is set, then stop warm: in-flight parts finish and are recorded."""
        engine = self.engine
        engine.input_dir.mkdir(parents=True, exist_ok=True)
        if self.http is not None:
            try:
                self.http.start()
            except OSError as exc:
                raise EndpointError(f"cannot serve HTTP on {engine.settings.http_addr} (CHUNKD_HTTP_ADDR): {exc}") from None
            logger.info("HTTP endpoint on http://%s:%d (/healthz /readyz /metrics /status)", *self.http.address)
        if not ffprobe_available():
            logger.warning("ffprobe not found: manifests get media: null and unreadable files are not quarantined")
        resumed = self.resume_unfinished()
        self.links.resume()
        self.links.start()
        self.scheduler.start()
        self.watcher.start()
        systemd.notify("READY=1\nSTATUS=watching " + str(engine.input_dir))
        logger.info(
            "watching %s -> s3://%s (state %s); %d unfinished upload(s) resumed",
            engine.input_dir, engine.settings.bucket, redact(engine.settings.state_url), resumed,
        )
        watchdog_every = systemd.watchdog_interval()
        resume_every = engine.settings.rescan_seconds or 60.0
        next_ping = 0.0
        next_resume = time.monotonic() + resume_every
        while not engine.stop.wait(1.0):
            self.probes.beat()
            if watchdog_every is not None and time.monotonic() >= next_ping:
                systemd.notify("WATCHDOG=1")
                next_ping = time.monotonic() + watchdog_every
            if time.monotonic() >= next_resume:  # picks up `chunkd retry` and other daemons' leftovers
                next_resume = time.monotonic() + resume_every
                self._resume_quietly()
        systemd.notify("STOPPING=1")
        logger.info("stopping: letting in-flight parts finish (up to %.0fs)", engine.settings.shutdown_timeout)
        self.watcher.stop()
        self.links.stop(timeout=engine.settings.shutdown_timeout)
        self.scheduler.stop(timeout=engine.settings.shutdown_timeout + 5)
        self.events.close(timeout=min(10.0, engine.settings.shutdown_timeout))
        engine.shutdown()
        if self.http is not None:
            self.http.stop()
        engine.store.close()
        logger.info("stopped")



