"""Wiring: build the engine from settings, check the endpoints, run watcher + scheduler until told to stop."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

from chunkd.config import Settings
from chunkd.errors import (
    EndpointError,
    SourceGoneError,
    StoreError,
    TransferError,
    endpoint_error,
)
from chunkd.intake.paths import PathFilter, local_path, relpath_of
from chunkd.intake.scheduler import JobRequest, JobResult, Scheduler, part_weigher, priority_rules
from chunkd.intake.watcher import Watcher
from chunkd.links.batch import LinkManager
from chunkd.links.download import Downloader
from chunkd.model.node import Scope
from chunkd.model.states import StreamRecord, StreamState
from chunkd.observe import systemd
from chunkd.observe.events import EventSink
from chunkd.observe.heartbeat import Heartbeat
from chunkd.observe.http import HttpServer
from chunkd.observe.live import EventFeed
from chunkd.observe.logs import redact
from chunkd.observe.metrics import Metrics, store_snapshot
from chunkd.observe.overview import collect
from chunkd.observe.probes import Probes
from chunkd.observe.thumbnails import Thumbnails
from chunkd.ops.retention import RetentionPass
from chunkd.pipeline.buffers import BufferPool
from chunkd.pipeline.discovery import new_record
from chunkd.pipeline.engine import Engine
from chunkd.pipeline.job import Outcome, StreamJob
from chunkd.pipeline.media import ffprobe_available
from chunkd.pipeline.monitor import Snapshot, take_snapshot
from chunkd.pipeline.thumbnail import ffmpeg_available
from chunkd.s3.bandwidth import TokenBucket
from chunkd.s3.breaker import endpoint_breaker
from chunkd.s3.client import S3Target, make_client
from chunkd.s3.retry import RetryPolicy
from chunkd.s3.traits import check_tagging, decide_traits
from chunkd.s3.uploader import Uploader
from chunkd.store import open_store
from chunkd.store.health import ResetWatch

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
        content_md5=settings.content_md5 == "on", buffers=part_buffers(settings),
    )
    return Engine(
        settings, store, uploader, input_dir=settings.input_dir.resolve(), stop=stop, metrics=metrics,
        endpoint=target.destination,
    )


def part_buffers(settings: Settings) -> BufferPool:
    """The pool every part is read into, said aloud when the parts allowed in flight need more
    than it holds: the rest wait for a buffer (or, larger than it all, stream from the file)
    rather than add to the peak memory."""
    pool = BufferPool(settings.buffer_memory)
    in_flight, fits = settings.file_concurrency * settings.part_concurrency, pool.budget // settings.part_size
    if not fits:
        logger.info("parts stream from their files: CHUNKD_BUFFER_MEMORY holds no %d-byte part", settings.part_size)
    elif in_flight > fits:
        logger.info(
            "up to %d parts in flight, buffers for %d (CHUNKD_BUFFER_MEMORY): the others wait for one", in_flight, fits,
        )
    return pool


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
    settings = engine.settings
    engine.adopt_traits(decide_traits(
        engine.uploader, bucket, content_md5=settings.content_md5, key_template=settings.key_template,
        attributes=settings.attributes.encryption(),
    ))
    if settings.attributes.tags:
        check_tagging(engine.uploader, bucket, key_template=settings.key_template,
                      attributes=settings.attributes.encryption())


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
    def __init__(
        self, engine: Engine, *, clock: Callable[[], float] = time.monotonic, any_free_port: bool = False
    ) -> None:
        self._any_free_port = any_free_port  # --dev: a busy HTTP port is no reason to stop
        self.engine = engine
        settings = engine.settings
        self.scheduler = Scheduler(
            self._run_job, workers=settings.file_concurrency * settings.part_concurrency,
            weigh=part_weigher(settings.part_size, settings.part_concurrency),
            multipart_limit=settings.file_concurrency, priority=priority_rules(settings.priority),
            large_file_bytes=4 * settings.part_size, clock=clock, give_up=self._give_up,
            on_internal_error=engine.metrics.internal_error, stop=engine.stop,
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
        downloader = _downloader(settings)
        engine.metrics.watch_downloads_waiting_for_disk(lambda: downloader.waiting_for_disk)
        self.links = LinkManager(engine, downloader, self.scheduler.submit)
        self.feed = EventFeed()  # the status page's /events
        self.events = EventSink(
            engine.store, webhook_urls=settings.webhook_urls, secret=settings.webhook_secret,
            maxlen=settings.events_maxlen, presign=self._presigner(), listeners=[self.feed.publish],
        )
        engine.metrics.watch_queue_depth(lambda: self.scheduler.queue_depth)
        self.heartbeat = Heartbeat(
            engine.store, engine.node, queue_depth=lambda: self.scheduler.queue_depth, health=engine.store_health
        )
        self.retention = (
            RetentionPass(engine.store, days=settings.retention_days, scope=engine.scope)
            if settings.expire_records else None
        )
        self.probes = Probes(engine, lambda: self.watcher.alive)
        self.http = self._http_server()
        self.resets = ResetWatch(engine.store)

    def _presigner(self) -> Callable[[StreamRecord], str] | None:
        """CHUNKD_PRESIGN_SECONDS > 0: completed events carry a presigned GET URL of the object."""
        seconds, uploader = self.engine.settings.presign_seconds, self.engine.uploader
        if not seconds:
            return None
        return lambda record: uploader.presigned_get(record.bucket, record.key, seconds=seconds)

    def _run_job(self, request: JobRequest) -> JobResult:
        job = StreamJob(self.engine, request.path, request.relpath, final=request.final, origin=request.origin)
        outcome = self._finish(job, job.run())
        if job.record is None:
            return JobResult(outcome)
        return JobResult(outcome, job.record.key, job.record.last_error)

    def _finish(self, job: StreamJob, outcome: Outcome) -> Outcome:
        """Count the outcome and tell the world, once per finished file."""
        if outcome is Outcome.COMPLETED:
            deduplicated = job.record is not None and job.record.dedup_of
            self.engine.metrics.file_finished("deduplicated" if deduplicated else "completed")
        elif outcome in (Outcome.FAILED, Outcome.QUARANTINED):
            self.engine.metrics.file_finished(outcome.value)
        if outcome in (Outcome.FAILED, Outcome.QUARANTINED) and job.record is not None:
            self.heartbeat.error(f"{job.record.relpath}: {job.record.last_error or outcome.value}")
        if outcome in _EVENT_OUTCOMES and job.record is not None:
            # The store's copy: after a cancel, the job's in-memory record is behind it.
            self.events.emit(outcome.value, self.engine.store.get_stream(job.record.id) or job.record)
        return outcome

    def _give_up(self, request: JobRequest, reason: str) -> None:
        """The scheduler stopped retrying a file: its stream becomes FAILED with the reason, where
        `chunkd status` shows it and `chunkd retry ID` brings it back."""
        engine = self.engine
        try:
            held = engine.leases.acquire(engine.scope.lease_name(request.relpath))
        except StoreError as exc:
            logger.error("could not record the failure: %s", exc, extra={"relpath": request.relpath})
            return
        if held is None:
            return  # another daemon has taken the file over; it is that daemon's now
        try:
            record = self._failed_record(request, reason)
            if record is None:
                return
            engine.store.save_stream(record, fence=held.lease)
        except StoreError as exc:
            logger.error("could not record the failure: %s", exc, extra={"relpath": request.relpath})
            return
        finally:
            engine.leases.release(held)
        engine.metrics.file_finished(Outcome.FAILED.value)
        self.heartbeat.error(f"{record.relpath}: {reason}")
        self.events.emit(Outcome.FAILED.value, record)

    def _failed_record(self, request: JobRequest, reason: str) -> StreamRecord | None:
        """The file's stream, moved to FAILED; a new FAILED one if the job never got to create
        it; None if it ended meanwhile."""
        record = self.engine.store.find_by_relpath(request.relpath, scope=self.engine.scope)
        if record is not None:
            if record.state.terminal:
                return None
            record.move_to(StreamState.FAILED, error=reason)
            return record
        try:  # as the job records it: unchanged, the file stays FAILED until `chunkd retry`
            snap: Snapshot | None = take_snapshot(request.path)
        except (SourceGoneError, OSError):
            snap = None
        record = new_record(self.engine, request.path, request.relpath, snap, origin=request.origin)
        record.state, record.last_error = StreamState.FAILED, reason
        return record

    def _links_submit(self, path: Path, relpath: str) -> bool:
        return self.links.submit(path, relpath)

    def _http_server(self) -> HttpServer | None:
        settings, engine = self.engine.settings, self.engine
        if not settings.http_addr:
            return None
        return HttpServer(
            settings.http_addr, token=settings.http_token, metrics=engine.metrics,
            health=self.probes.health, ready=self.probes.ready,
            status=lambda limit=None: [
                status.to_dict() for status in collect(engine.store, scope=engine.scope, limit=limit)
            ],
            fleet_status=lambda node, limit=None: [
                status.to_dict()
                for status in collect(engine.store, scope=None if node is None else Scope(node), limit=limit)
            ],
            feed=self.feed, thumbnails=self._thumbnails().get, any_free_port=self._any_free_port,
        )

    def _thumbnails(self) -> Thumbnails:
        """Poster frames for the status page, read through the gateway with quick retries: a page
        waits for an image a second or two at most, and an open breaker answers at once."""
        reads = self.engine.uploader.with_policy(RetryPolicy.quick())
        return Thumbnails(self.engine.store, lambda bucket, key, limit: reads.get_small(bucket, key, limit=limit))

    def resume_unfinished(self) -> int:
        """Queue every stream a previous run left unfinished, before new arrivals.

        Not a download's: its file is in the staging folder, and `LinkManager.resume` sends it
        from there (final, with its origin) and records how its URL ended."""
        states = [StreamState.PENDING, StreamState.UPLOADING, StreamState.FINALIZING]
        scope = self.engine.scope  # another box's unfinished streams are its own to resume
        unfinished = [r for r in self.engine.store.list_streams(states) if r.origin is None and scope.holds(r)]
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

    def _restore_if_store_lost_data(self) -> None:
        """The store came back empty while we run: the records of files already uploaded are restored
        from their manifests, as at start, by handing every file over again."""
        try:
            lost = self.resets.lost_data()
        except StoreError as exc:
            self.engine.store_health.failed(exc)
            return
        self.engine.store_health.ok()
        if lost:
            logger.warning(
                "the state store lost its records (restarted empty, flushed, or failed over before "
                "replicating them); restoring those of the files already uploaded from their manifests in the bucket"
            )
            self.engine.store_lost_data()
            self.watcher.offer_everything_again()

    def run(self) -> None:
        """Block until the stop event is set, then stop warm: in-flight parts finish and are recorded."""
        engine = self.engine
        engine.input_dir.mkdir(parents=True, exist_ok=True)
        self.probes.start()
        if self.http is not None:
            try:
                self.http.start()
            except OSError as exc:
                raise EndpointError(f"cannot serve HTTP on {engine.settings.http_addr} (CHUNKD_HTTP_ADDR): {exc}") from None
        if not ffprobe_available():
            logger.warning("ffprobe not found: manifests get media: null and unreadable files are not quarantined")
        elif engine.settings.thumbnail and not ffmpeg_available():
            logger.warning("ffmpeg not found: videos get no poster frame (thumbnail_error in their manifests)")
        self.resets.lost_data()  # the mark of the data the store holds now
        self.heartbeat.tick()
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
            self.heartbeat.tick()
            if self.retention is not None:
                self.retention.tick()
            self._restore_if_store_lost_data()
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
        self.probes.stop()
        engine.store.close()
        logger.info("stopped")



